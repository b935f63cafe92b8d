//! backup_to_s3, and s3:// locations for verify_backup and restore_backup, from SQL against a
//! real S3 server (s3s-fs, which checks SigV4 signatures), directly and through a
//! fault-injecting proxy; the uploaded objects read back with boto3 and the system gunzip/zstd.

mod common;

use std::path::Path;
use std::time::Duration;

use common::calls::*;
use common::proxy::{Fault, Proxy, Recorded};
use common::s3server::{free_port, S3Server};
use common::*;
use rusqlite::Connection;
use serde_json::{json, Value};

/// s3s-fs, like AWS, refuses parts below 5 MiB (other than the last) at Complete.
const PART: u64 = 5 << 20;

fn server() -> S3Server {
    let server = S3Server::start();
    server.create_bucket("bkt");
    server
}

/// The server's endpoint and keys merged with `extra`.
fn opts(server: &S3Server, extra: Value) -> Value {
    merge(&server.options_json(), &extra)
}

/// A small sample database (about 100 KB) and a connection to it with the extension.
fn small_db(dir: &Path) -> (Connection, String) {
    let path = dir.join("src.db");
    make_sample_db(&path, Journal::Wal, 300);
    let conn = open(&path);
    let digest = digest_conn(&conn, "main");
    (conn, digest)
}

fn upstream(server: &S3Server) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], server.port()))
}

/// The object s3s-fs stored, decompressed by the system tool its suffix names.
fn stored_sha256(server: &S3Server, bucket: &str, key: &str) -> String {
    sha256_hex(&decompress_cli(&server.object_path(bucket, key)))
}

// ---- round trips ----

#[test]
fn small_backup_round_trip_with_every_bucket_form() {
    let server = server();
    let dir = tempdir();
    let (conn, expected) = small_db(dir.path());
    let page_count: u64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();

    // (bucket argument, pattern, extra options, expected key)
    let cases = [
        ("bkt", "db.gz", json!({}), "db.gz"),
        ("s3://bkt", "db.zst", json!({}), "db.zst"),
        (
            "s3://bkt/a/b",
            "db-%Y%m%d.gz",
            json!({"path_style": true}),
            "a/b/db-20240506.gz",
        ),
        (
            "s3://bkt/a/b/",
            "db.zst",
            json!({"path_style": true}),
            "a/b/db.zst",
        ),
        // localhost: path-style automatically too.
        (
            "bkt",
            "lh.gz",
            json!({"endpoint": format!("http://localhost:{}", server.port())}),
            "lh.gz",
        ),
    ];
    for (bucket, pattern, extra, key) in cases {
        let extra_now = merge(&json!({"now": "2024-05-06T07:08:09Z"}), &extra);
        let sql = to_s3_sql(bucket, pattern, &opts(&server, extra_now));
        let r = call_json(&conn, &sql);
        let url = format!("s3://bkt/{key}");
        assert_eq!(r["destination"], url, "{sql}: {r}");
        let compression = if key.ends_with(".gz") { "gzip" } else { "zstd" };
        assert_eq!(r["compression"], compression, "{r}");
        assert_eq!(r["parts"], 1, "{r}");
        assert_eq!(r["skipped"], false, "{r}");
        assert!(r["etag"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
        assert_eq!(r["page_count"], page_count, "{r}");
        assert_eq!(r["bytes"], page_count * r["page_size"].as_u64().unwrap());
        let object = server.object_path("bkt", key);
        assert_eq!(
            std::fs::metadata(&object)
                .unwrap_or_else(|e| panic!("{}: {e}", object.display()))
                .len(),
            r["stored_bytes"].as_u64().unwrap(),
            "{r}"
        );
        let sha = r["sha256"].as_str().unwrap().to_string();
        assert_eq!(stored_sha256(&server, "bkt", key), sha, "{r}");

        let v = call_json(&conn, &verify_sql(&url, &opts(&server, json!({}))));
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["location"], url, "{v}");
        assert_eq!(v["integrity"], "ok", "{v}");
        assert_eq!(v["sha256"], sha, "{v}");
        assert_eq!(v["compression"], compression, "{v}");

        let dest = dir
            .path()
            .join(format!("restored-{}.db", key.replace('/', "_")));
        let rr = call_json(
            &conn,
            &restore_sql(&url, Some(&dest), &opts(&server, json!({}))),
        );
        assert_eq!(rr["sha256"], sha, "{rr}");
        assert_eq!(digest(&dest), expected, "{url}");
        assert_eq!(integrity(&dest), "ok");
    }
    assert_no_temp_files_except(dir.path(), &["src.db-wal", "src.db-shm"]);

    // create_only refuses an existing key; if_changed skips an unchanged snapshot.
    let err = call_err(
        &conn,
        &to_s3_sql("bkt", "db.gz", &opts(&server, json!({"create_only": true}))),
    );
    assert_eq!(
        err,
        "backup_to_s3: s3://bkt/db.gz already exists and create_only is set"
    );
    let r = call_json(
        &conn,
        &to_s3_sql(
            "s3://bkt/a/b",
            "db-%Y%m%d.gz",
            &opts(
                &server,
                json!({"if_changed": true, "now": "2024-05-07T00:00:00Z"}),
            ),
        ),
    );
    assert_eq!(r["skipped"], true, "{r}");
    assert_eq!(r["same_as"], "s3://bkt/a/b/db-20240506.gz", "{r}");
    assert!(!server.object_path("bkt", "a/b/db-20240507.gz").exists());

    // Restore into a connection (dest_path NULL).
    let target = open_memory();
    target
        .execute_batch("CREATE TABLE stale (x); INSERT INTO stale VALUES (1);")
        .unwrap();
    let rr = call_json(
        &target,
        &restore_sql(
            "s3://bkt/a/b/db-20240506.gz",
            None,
            &opts(&server, json!({})),
        ),
    );
    assert_eq!(rr["ok"], true, "{rr}");
    assert_eq!(digest_conn(&target, "main"), expected);
}

#[test]
fn multipart_backup_round_trip() {
    let server = server();
    let dir = tempdir();
    let (conn, expected) = big_db(dir.path());
    for key in ["big.zst", "big.gz"] {
        let r = call_json(
            &conn,
            &to_s3_sql(
                "s3://bkt/m",
                key,
                &opts(&server, json!({"part_size": PART, "level": 1})),
            ),
        );
        let stored = r["stored_bytes"].as_u64().unwrap();
        assert!(stored > 2 * PART, "incompressible data: {r}");
        let parts = r["parts"].as_u64().unwrap();
        assert_eq!(parts, stored.div_ceil(PART), "{r}");
        assert!(parts >= 2, "{r}");
        assert!(
            r["etag"]
                .as_str()
                .is_some_and(|e| e.trim_matches('"').ends_with(&format!("-{parts}"))),
            "a multipart ETag: {r}"
        );
        let sha = r["sha256"].as_str().unwrap();
        let object = server.object_path("bkt", &format!("m/{key}"));
        assert_eq!(std::fs::metadata(&object).unwrap().len(), stored);
        assert_eq!(stored_sha256(&server, "bkt", &format!("m/{key}")), sha);
        assert!(
            server.incomplete_uploads().is_empty(),
            "{:?}",
            server.incomplete_uploads()
        );

        let url = format!("s3://bkt/m/{key}");
        let dest = dir.path().join(format!("restored-{key}.db"));
        let rr = call_json(
            &conn,
            &restore_sql(&url, Some(&dest), &opts(&server, json!({}))),
        );
        assert_eq!(rr["sha256"], sha, "{rr}");
        assert_eq!(digest(&dest), expected);
    }
}

// ---- an independent client reads what we wrote ----

const BOTO3_GET: &str = r#"
import json, sys
import boto3
from botocore.config import Config
endpoint, key_id, secret, bucket, key, out = sys.argv[1:7]
s3 = boto3.client(
    "s3", endpoint_url=endpoint, aws_access_key_id=key_id, aws_secret_access_key=secret,
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
)
body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
with open(out, "wb") as f:
    f.write(body)
head = s3.head_object(Bucket=bucket, Key=key)
print(json.dumps({"metadata": head["Metadata"], "length": head["ContentLength"],
                  "etag": head["ETag"]}))
"#;

#[test]
fn boto3_reads_the_backup_and_its_metadata() {
    let server = server();
    let dir = tempdir();
    let (conn, expected) = small_db(dir.path());
    let r = call_json(
        &conn,
        &to_s3_sql(
            "s3://bkt/daily",
            "app-%Y-%m-%d.gz",
            &opts(&server, json!({"now": "2024-05-06T07:08:09Z"})),
        ),
    );
    assert_eq!(r["destination"], "s3://bkt/daily/app-2024-05-06.gz");

    let home = tempdir();
    let out = dir.path().join("downloaded.gz");
    let py = venv_python(
        BOTO3_GET,
        &[
            &server.endpoint(),
            &server.access_key,
            &server.secret_key,
            "bkt",
            "daily/app-2024-05-06.gz",
            out.to_str().unwrap(),
        ],
        home.path(),
    );
    py.assert_ok();
    let head: Value = serde_json::from_str(py.stdout.trim()).expect(&py.stdout);
    assert_eq!(head["length"], r["stored_bytes"], "{head}");
    assert_eq!(
        head["etag"].as_str().unwrap().trim_matches('"'),
        r["etag"].as_str().unwrap().trim_matches('"')
    );
    let meta = &head["metadata"];
    // A one-pass (stream) backup records its sha256 in its trailer, not as metadata (#14).
    assert_eq!(meta.get("sha256"), None, "{head}");
    assert_eq!(meta["backup-time"], "2024-05-06T07:08:09.000Z", "{head}");
    assert_eq!(
        meta["sqlite-backup-version"],
        env!("CARGO_PKG_VERSION"),
        "{head}"
    );

    // The system gunzip (not our decoder) gives the snapshot the result describes.
    let db = decompress_to(&out, dir.path(), "from-boto3.db");
    let bytes = std::fs::read(&db).unwrap();
    assert_eq!(sha256_hex(&bytes), r["sha256"].as_str().unwrap());
    assert_eq!(bytes.len() as u64, r["bytes"].as_u64().unwrap());
    assert_eq!(integrity(&db), "ok");
    assert_eq!(digest(&db), expected);
}

// ---- what goes over the wire, and faults ----

/// Options pointing at the proxy: short timeout, two parts in flight.
fn proxy_opts(server: &S3Server, proxy: &Proxy, extra: Value) -> Value {
    let o = merge(
        &server.options_json(),
        &json!({"endpoint": proxy.endpoint(), "part_size": PART, "timeout_ms": 1000,
                "concurrency": 2, "level": 1}),
    );
    merge(&o, &extra)
}

fn puts(requests: &[Recorded]) -> Vec<&Recorded> {
    requests.iter().filter(|r| r.method == "PUT").collect()
}

#[test]
fn requests_have_explicit_length_md5_and_no_checksums() {
    let server = server();
    let proxy = Proxy::start(upstream(&server));
    let dir = tempdir();
    let (small, _) = small_db(dir.path());
    let (big, _) = big_db(dir.path());
    // No retry may blur the counts below, even on a loaded machine.
    let patient = json!({"timeout_ms": 30000});

    let r_small = call_json(
        &small,
        &to_s3_sql(
            "s3://bkt/p",
            "small.gz",
            &proxy_opts(&server, &proxy, patient.clone()),
        ),
    );
    assert_eq!(r_small["parts"], 1);
    let r_big = call_json(
        &big,
        &to_s3_sql(
            "s3://bkt/p",
            "big.zst",
            &proxy_opts(&server, &proxy, patient.clone()),
        ),
    );
    let parts = r_big["parts"].as_u64().unwrap();
    assert!(parts >= 2, "{r_big}");

    let requests = proxy.requests();
    let puts = puts(&requests);
    let put_objects: Vec<_> = puts
        .iter()
        .filter(|r| !r.query.contains("partNumber"))
        .collect();
    let upload_parts: Vec<_> = puts
        .iter()
        .filter(|r| r.query.contains("partNumber"))
        .collect();
    assert_eq!(put_objects.len(), 1, "{requests:#?}");
    assert_eq!(upload_parts.len() as u64, parts, "{requests:#?}");
    for r in &puts {
        assert!(
            r.header("content-length")
                .is_some_and(|v| v.parse::<usize>().unwrap() > 0),
            "{r:?}"
        );
        assert!(r.header("content-md5").is_some(), "{r:?}");
    }
    for r in &requests {
        assert!(r.header("transfer-encoding").is_none(), "{r:?}");
        assert!(
            r.headers
                .iter()
                .all(|(n, _)| !n.starts_with("x-amz-checksum-")),
            "{r:?}"
        );
        // Path-style, automatically, for an IP endpoint.
        assert!(r.path.starts_with("/bkt/"), "{r:?}");
    }
    assert_eq!(put_objects[0].path, "/bkt/p/small.gz");
    let create = requests
        .iter()
        .find(|r| r.method == "POST" && r.query.contains("uploads"))
        .expect("CreateMultipartUpload");
    for (r, result) in [(put_objects[0], &r_small), (&create, &r_big)] {
        // A .gz/.zst backup (one pass, #14, any method) records the sha256 in its trailer
        // only: the upload does not wait for it.
        assert_eq!(r.header("x-amz-meta-sha256"), None, "{r:?} {result}");
        assert!(r.header("x-amz-meta-backup-time").is_some(), "{r:?}");
        assert_eq!(
            r.header("x-amz-meta-sqlite-backup-version"),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn transient_faults_are_retried_from_sql() {
    let server = server();
    let proxy = Proxy::start(upstream(&server));
    let dir = tempdir();
    let (small, small_digest) = small_db(dir.path());
    let (big, big_digest) = big_db(dir.path());

    // Single PUT: a 503, a 500, a dropped connection, a stall beyond timeout_ms.
    proxy.faults(&[
        ("PUT", "", 1, Fault::Status(503)),
        ("PUT", "", 1, Fault::Status(500)),
        ("PUT", "", 1, Fault::DropRequest(1000)),
        // The stall outlasts the test: only timeout_ms (1 s) can end that attempt in time.
        ("PUT", "", 1, Fault::Stall(Duration::from_secs(30))),
    ]);
    let started = std::time::Instant::now();
    let r = call_json(
        &small,
        &to_s3_sql("bkt", "small.gz", &proxy_opts(&server, &proxy, json!({}))),
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "timeout_ms ignored: {took:?}"
    );
    let faulted = proxy
        .requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert_eq!(faulted, 4, "every scripted fault was hit");
    assert_eq!(
        stored_sha256(&server, "bkt", "small.gz"),
        r["sha256"].as_str().unwrap()
    );
    let restored = dir.path().join("small-restored.db");
    decompress_to(
        &server.object_path("bkt", "small.gz"),
        dir.path(),
        "small-restored.db",
    );
    assert_eq!(digest(&restored), small_digest);

    // Multipart: faults on Create, the parts and Complete.
    proxy.clear_requests();
    proxy.faults(&[
        ("POST", "uploads", 1, Fault::Status(503)),
        ("PUT", "partNumber", 1, Fault::Status(500)),
        ("PUT", "partNumber", 1, Fault::DropRequest(100_000)),
        (
            "PUT",
            "partNumber",
            1,
            Fault::Stall(Duration::from_millis(2500)),
        ),
        ("POST", "uploadId", 1, Fault::Status(500)),
    ]);
    let r = call_json(
        &big,
        &to_s3_sql("bkt", "big.zst", &proxy_opts(&server, &proxy, json!({}))),
    );
    assert!(r["parts"].as_u64().unwrap() >= 2, "{r}");
    let faulted = proxy
        .requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert_eq!(faulted, 5, "every scripted fault was hit");
    assert_eq!(
        stored_sha256(&server, "bkt", "big.zst"),
        r["sha256"].as_str().unwrap()
    );
    assert!(server.incomplete_uploads().is_empty());
    let v = call_json(
        &big,
        &verify_sql("s3://bkt/big.zst", &opts(&server, json!({}))),
    );
    assert_eq!(v["ok"], true);
    let restored = decompress_to(
        &server.object_path("bkt", "big.zst"),
        dir.path(),
        "big-r.db",
    );
    assert_eq!(digest(&restored), big_digest);
}

#[test]
fn persistent_server_errors_fail_clearly_and_leave_nothing() {
    let server = server();
    let proxy = Proxy::start(upstream(&server));
    let dir = tempdir();
    let (small, _) = small_db(dir.path());
    let (big, _) = big_db(dir.path());
    let secrets = [server.secret_key.as_str()];

    // (what fails, the source, the name, multipart): every PUT of a single-request upload,
    // or the parts of a multipart one, which is then aborted.
    let cases = [
        ("single PUT", "", &small, "small.gz", false),
        ("multipart", "partNumber", &big, "big.zst", true),
    ];
    for (label, query, conn, name, multipart) in cases {
        proxy.clear_faults();
        proxy.clear_requests();
        proxy.fault("PUT", query, usize::MAX, Fault::Status(500));
        let err = call_err(
            conn,
            &to_s3_sql(
                "bkt",
                name,
                &proxy_opts(&server, &proxy, json!({"retries": 1})),
            ),
        );
        assert!(err.starts_with("backup_to_s3: "), "{label}: {err}");
        assert!(err.contains(&format!("s3://bkt/{name}")), "{label}: {err}");
        assert!(err.contains("HTTP 500"), "{label}: {err}");
        assert!(err.contains("gave up after 2 attempts"), "{label}: {err}");
        assert_no_secret(&err, &secrets);
        assert!(!server.object_path("bkt", name).exists(), "{label}");
        assert!(
            server.incomplete_uploads().is_empty(),
            "{label}: {:?}",
            server.incomplete_uploads()
        );
        if multipart {
            assert!(
                proxy
                    .requests()
                    .iter()
                    .any(|r| r.method == "DELETE" && r.query.contains("uploadId")),
                "{label}: AbortMultipartUpload was sent"
            );
        } else {
            assert_eq!(
                puts(&proxy.requests()).len(),
                2,
                "{label}: one try and one retry: {:#?}",
                proxy.requests()
            );
        }
        // Nothing under the bucket but what was there before.
        assert!(list(&server.root().join("bkt")).is_empty(), "{label}");
        assert_alive(conn);
    }
}

// ---- errors ----

#[test]
fn wrong_secret_is_an_auth_error_without_the_secret() {
    let server = server();
    let dir = tempdir();
    let (conn, _) = small_db(dir.path());
    call_json(&conn, &to_s3_sql("bkt", "db.gz", &opts(&server, json!({}))));
    let wrong = "WRONGSECRETwrongsecret1234567890";
    let bad = opts(&server, json!({"secret_access_key": wrong, "retries": 0}));
    let dest = dir.path().join("r.db");
    let calls = [
        to_s3_sql("bkt", "db2.gz", &bad),
        verify_sql("s3://bkt/db.gz", &bad),
        restore_sql("s3://bkt/db.gz", Some(&dest), &bad),
    ];
    for sql in &calls {
        let err = call_err(&conn, sql);
        assert!(
            err.contains("check the access key, secret key and region"),
            "{sql}: {err}"
        );
        assert_no_secret(&err, &[wrong, &server.secret_key]);
    }
    assert!(!server.object_path("bkt", "db2.gz").exists());
    assert!(!dest.exists());
}

/// A temp `HOME` with nothing in it, a database, and the server's endpoint, for the sqlite3
/// CLI run with a clean environment.
struct Cli {
    home: tempfile::TempDir,
    dir: tempfile::TempDir,
    db: std::path::PathBuf,
}

impl Cli {
    fn new() -> Cli {
        let home = tempdir();
        let dir = tempdir();
        let db = dir.path().join("cli.db");
        make_sample_db(&db, Journal::Rollback, 50);
        Cli { home, dir, db }
    }

    fn run(&self, sql: &str, vars: &[(&str, &str)]) -> Output {
        let mut all = vec![("SQLITE_BACKUP_S3_BACKOFF_MS", "5")];
        all.extend_from_slice(vars);
        sqlite3_cli_clean_env(&self.db, &["-bail"], sql, self.home.path(), &all)
    }
}

#[test]
fn missing_credentials_name_what_to_set() {
    let server = server();
    let cli = Cli::new();
    let endpoint = json!({"endpoint": server.endpoint()});
    for sql in [
        to_s3_sql("bkt", "db.gz", &endpoint),
        verify_sql("s3://bkt/db.gz", &endpoint),
        restore_sql("s3://bkt/db.gz", None, &endpoint),
    ] {
        let sql = format!("{sql};");
        let out = cli.run(&sql, &[]);
        assert!(!out.ok(), "{sql}: {}", out.stdout);
        for needed in [
            "no AWS credentials",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "access_key_id",
            "secret_access_key",
        ] {
            assert!(out.stderr.contains(needed), "{sql}: {}", out.stderr);
        }
    }
    assert!(!server.object_path("bkt", "db.gz").exists());
}

#[test]
fn credentials_from_env_and_profile_file_and_options_win() {
    let server = server();
    let cli = Cli::new();
    let endpoint = server.endpoint();
    let wrong = "WRONGSECRETfromtheenvironment123";

    // From the environment (endpoint too).
    let env_right = [
        ("AWS_ACCESS_KEY_ID", server.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", server.secret_key.as_str()),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
    ];
    let before = digest(&cli.db);
    let out = cli.run("SELECT backup_to_s3('bkt', 'env.gz');", &env_right);
    out.assert_ok();
    let r: Value = serde_json::from_str(out.stdout.trim()).expect(&out.stdout);
    assert_eq!(r["destination"], "s3://bkt/env.gz");
    assert_eq!(
        stored_sha256(&server, "bkt", "env.gz"),
        r["sha256"].as_str().unwrap()
    );
    // restore_backup(location) with no options: into the CLI's own connection.
    let out = cli.run(
        "DELETE FROM orders WHERE id % 2 = 0;
         SELECT restore_backup('s3://bkt/env.gz');
         SELECT count(*) FROM orders;",
        &env_right,
    );
    out.assert_ok();
    assert!(out.stdout.trim_end().ends_with("\n50"), "{}", out.stdout);
    assert_eq!(digest(&cli.db), before);

    // A wrong secret in the environment fails (it is read)...
    let env_wrong = [
        ("AWS_ACCESS_KEY_ID", server.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", wrong),
        ("AWS_ENDPOINT_URL", endpoint.as_str()),
    ];
    let out = cli.run("SELECT backup_to_s3('bkt', 'wrong.gz');", &env_wrong);
    assert!(!out.ok(), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("check the access key, secret key and region"),
        "{}",
        out.stderr
    );
    assert_no_secret(&out.stderr, &[wrong, &server.secret_key]);
    assert!(!server.object_path("bkt", "wrong.gz").exists());
    // ... and the options' keys win over it.
    let keys = lit(json!({
        "access_key_id": server.access_key,
        "secret_access_key": server.secret_key,
    })
    .to_string());
    let out = cli.run(
        &format!(
            "SELECT backup_to_s3('bkt', 'opt.gz', {keys});
             SELECT verify_backup('s3://bkt/opt.gz', {keys});"
        ),
        &env_wrong,
    );
    out.assert_ok();
    assert!(server.object_path("bkt", "opt.gz").exists());

    // A named profile of a shared credentials file (and the endpoint from the config file).
    let aws = cli.home.path().join("elsewhere");
    std::fs::create_dir_all(&aws).unwrap();
    let credentials = aws.join("creds");
    std::fs::write(
        &credentials,
        format!(
            "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = {wrong}\n\n\
             [backup]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            server.access_key, server.secret_key
        ),
    )
    .unwrap();
    let config = aws.join("conf");
    std::fs::write(
        &config,
        format!("[profile backup]\nregion = us-east-1\nendpoint_url = {endpoint}\n"),
    )
    .unwrap();
    let files = [
        ("AWS_SHARED_CREDENTIALS_FILE", credentials.to_str().unwrap()),
        ("AWS_CONFIG_FILE", config.to_str().unwrap()),
    ];
    let mut with_profile = files.to_vec();
    with_profile.push(("AWS_PROFILE", "backup"));
    let restored = cli.dir.path().join("restored.db");
    let out = cli.run(
        &format!(
            "SELECT backup_to_s3('s3://bkt/prof', 'db.zst');
             SELECT verify_backup('s3://bkt/prof/db.zst');
             SELECT restore_backup('s3://bkt/prof/db.zst', {});",
            path_lit(&restored)
        ),
        &with_profile,
    );
    out.assert_ok();
    assert_eq!(digest(&restored), digest(&cli.db));
    // The same profile chosen by the `profile` option instead of AWS_PROFILE.
    let out = cli.run(
        &format!(
            "SELECT verify_backup('s3://bkt/prof/db.zst', {});",
            lit(json!({"profile": "backup", "endpoint": endpoint}).to_string())
        ),
        &files,
    );
    out.assert_ok();
    // Without it, the file's default profile (wrong secret) is used.
    let out = cli.run(
        &format!(
            "SELECT verify_backup('s3://bkt/prof/db.zst', {});",
            lit(json!({"endpoint": endpoint, "retries": 0}).to_string())
        ),
        &files,
    );
    assert!(!out.ok(), "{}", out.stdout);
    assert!(
        out.stderr.contains("check the access key"),
        "{}",
        out.stderr
    );
    assert_no_secret(&out.stderr, &[wrong, &server.secret_key]);
}

#[test]
fn missing_bucket_and_object_are_not_found() {
    let server = S3Server::start();
    server.create_bucket("bkt");
    let dir = tempdir();
    let conn = open_memory();
    let o = opts(&server, json!({}));
    let dest = dir.path().join("r.db");
    for (sql, expected) in [
        (verify_sql("s3://nobucket/x.gz", &o), "s3://nobucket/x.gz"),
        (
            restore_sql("s3://nobucket/x.gz", Some(&dest), &o),
            "s3://nobucket/x.gz",
        ),
        (verify_sql("s3://bkt/none.gz", &o), "s3://bkt/none.gz"),
    ] {
        let err = call_err(&conn, &sql);
        assert!(err.contains(expected), "{sql}: {err}");
        assert!(
            err.contains("does not exist") || err.contains("there is no backup at"),
            "{sql}: {err}"
        );
        assert_no_secret(&err, &[&server.secret_key]);
    }
    assert!(!dest.exists());
}

#[test]
fn bad_locations_are_usage_errors() {
    let conn = open_memory();
    let o = json!({"access_key_id": "AKID", "secret_access_key": "SECRETSECRET1234"});
    let cases = [
        (
            verify_sql("http://x/y", &o),
            "verify_backup: unsupported location 'http://x/y': use a local path or s3://bucket/key",
        ),
        (
            restore_sql("http://x/y", Some(Path::new("/tmp/nowhere.db")), &o),
            "restore_backup: unsupported location 'http://x/y'",
        ),
        (
            to_s3_sql("http://x/y", "db.gz", &o),
            "backup_to_s3: unsupported location 'http://x/y'",
        ),
        (to_s3_sql("s3://Bad_Bucket", "db.gz", &o), "Bad_Bucket"),
        (to_s3_sql("Bad_Bucket", "db.gz", &o), "Bad_Bucket"),
        (verify_sql("s3://Bad_Bucket/db.gz", &o), "Bad_Bucket"),
        (
            verify_sql("s3://bkt", &o),
            "verify_backup: 's3://bkt' names no object: use s3://bucket/path/to/backup.gz",
        ),
        (
            restore_sql("s3://bkt/", None, &o),
            "restore_backup: 's3://bkt/' names no object",
        ),
        (
            to_s3_sql("bkt", "/db.gz", &o),
            "backup_to_s3: pattern '/db.gz' must name an object below the bucket",
        ),
        (
            "SELECT backup_to_s3('bkt')".to_string(),
            "backup_to_s3: takes 2 to 3 arguments",
        ),
        (
            to_s3_sql(
                "bkt",
                "db.gz",
                &json!({"endpoint": "ftp://x", "access_key_id": "a", "secret_access_key": "b"}),
            ),
            "invalid endpoint",
        ),
        (
            to_s3_sql("bkt", "db.gz", &json!({"part_sise": 5242880})),
            "part_sise",
        ),
    ];
    for (sql, expected) in cases {
        let err = call_err(&conn, &sql);
        assert!(
            err.contains(expected),
            "{sql}:\n  got      {err}\n  expected {expected}"
        );
        assert_no_secret(&err, &["SECRETSECRET1234"]);
    }
    // A bad bucket name is a usage error that names the rules, not a request.
    let err = call_err(&conn, &to_s3_sql("s3://Bad_Bucket", "db.gz", &o));
    assert!(err.starts_with("backup_to_s3: "), "{err}");
    assert!(!err.contains("cannot reach"), "{err}");
}

#[test]
fn unreachable_endpoint_says_cannot_reach() {
    let port = free_port(); // nothing listens there
    let dir = tempdir();
    let (conn, _) = small_db(dir.path());
    let secret = "SECRETKEYunreachable123456";
    let o = json!({
        "endpoint": format!("http://127.0.0.1:{port}"),
        "access_key_id": "AKIDUNREACHABLE",
        "secret_access_key": secret,
        "retries": 1,
        "connect_timeout_ms": 2000,
    });
    for sql in [
        to_s3_sql("bkt", "db.gz", &o),
        verify_sql("s3://bkt/db.gz", &o),
    ] {
        let err = call_err(&conn, &sql);
        assert!(
            err.contains(&format!("cannot reach http://127.0.0.1:{port}")),
            "{sql}: {err}"
        );
        assert!(err.contains("gave up after 2 attempts"), "{sql}: {err}");
        assert_no_secret(&err, &[secret]);
    }
    assert_no_temp_files_except(dir.path(), &["src.db-wal", "src.db-shm"]);
}

#[test]
fn s3_options_are_refused_for_local_locations() {
    let dir = tempdir();
    let (conn, _) = small_db(dir.path());
    let backup = dir.path().join("b.gz");
    let err = call_err(
        &conn,
        &to_file_sql(&backup, &json!({"endpoint": "http://127.0.0.1:9"})),
    );
    assert_eq!(
        err,
        "backup_to_file: option 'endpoint' applies only to s3:// locations"
    );
    assert!(!backup.exists());
    for key in ["region", "part_size", "secret_access_key"] {
        let value = if key == "part_size" {
            json!(PART)
        } else {
            json!("x")
        };
        let err = to_file_err(&conn, &backup, &json!({ key: value }));
        assert_eq!(
            err,
            format!("backup_to_file: option '{key}' applies only to s3:// locations")
        );
    }
    // verify and restore of a local file too.
    call_json(
        &conn,
        &format!("SELECT backup_to_file({})", path_lit(&backup)),
    );
    let o = json!({"endpoint": "http://127.0.0.1:9"});
    let err = verify_err(&conn, backup.to_str().unwrap(), &o);
    assert_eq!(
        err,
        "verify_backup: option 'endpoint' applies only to s3:// locations"
    );
    let err = restore_err(
        &conn,
        backup.to_str().unwrap(),
        Some(&dir.path().join("r.db")),
        &o,
    );
    assert_eq!(
        err,
        "restore_backup: option 'endpoint' applies only to s3:// locations"
    );
}

#[test]
fn path_style_false_with_an_ip_endpoint_says_what_to_set() {
    let server = server();
    let proxy = Proxy::start(upstream(&server));
    let dir = tempdir();
    let (conn, _) = small_db(dir.path());
    // `bkt.127.0.0.1` is no host: a clear error saying what to do, and no request.
    let err = call_err(
        &conn,
        &to_s3_sql(
            "bkt",
            "db.gz",
            &proxy_opts(&server, &proxy, json!({"path_style": false, "retries": 0})),
        ),
    );
    assert_eq!(
        err,
        format!(
            "backup_to_s3: cannot address bucket 'bkt' at {}: try the option path_style = true",
            proxy.endpoint()
        )
    );
    assert!(proxy.requests().is_empty(), "{:#?}", proxy.requests());
    // The same with path_style true reaches it, bucket in the path.
    call_json(
        &conn,
        &to_s3_sql(
            "bkt",
            "db.gz",
            &proxy_opts(&server, &proxy, json!({"path_style": true})),
        ),
    );
    let requests = proxy.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    assert_eq!(requests[0].path, "/bkt/db.gz");
    assert_eq!(
        requests[0].header("host"),
        Some(proxy.endpoint().trim_start_matches("http://"))
    );
}
