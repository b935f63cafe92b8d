//! The S3 store through the `Store` trait against a real s3s-fs (which checks signatures), and
//! through a fault-injecting proxy in front of it.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use common::assert_no_secret;
use common::proxy::{Fault, Proxy};
use common::s3server::{free_port, S3Server};
use sqlite_backup::error::Kind;
use sqlite_backup::store::s3::{Environment, S3Options, S3Store, BACKOFF_ENV};
use sqlite_backup::store::{PutMeta, Store};

const MIB: usize = 1 << 20;
/// s3s-fs, like AWS, refuses parts below 5 MiB (other than the last) at CompleteMultipartUpload.
const PART: u64 = 5 << 20;

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

fn meta(create_only: bool) -> PutMeta {
    PutMeta {
        sha256: sqlite_backup::store::Sha256Cell::ready("ab".repeat(32)),
        backup_time: Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap(),
        create_only,
        temp_dir: std::env::temp_dir(),
    }
}

fn open(server: &S3Server, prefix: &str, opts: S3Options) -> S3Store {
    S3Store::open_with_env("bkt", prefix, &opts, &server.env()).expect("open store")
}

fn server() -> S3Server {
    let server = S3Server::start();
    server.create_bucket("bkt");
    server
}

/// Streams `body` into a new upload in 64 KiB writes, as the compressor would.
fn put(
    store: &S3Store,
    name: &str,
    body: &[u8],
    create_only: bool,
) -> sqlite_backup::error::Result<sqlite_backup::store::Stored> {
    let mut up = store.put(name, &meta(create_only))?;
    for chunk in body.chunks(64 << 10) {
        up.write_all(chunk)
            .map_err(|e| sqlite_backup::error::Error::io("write", e))?;
    }
    up.commit()
}

fn get(store: &S3Store, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    store.get(name).unwrap().read_to_end(&mut out).unwrap();
    out
}

#[test]
fn small_put_round_trip() {
    let server = server();
    let store = open(&server, "a/b", server.options());
    let body = data(100_000, 1);
    let stored = put(&store, "db-1.gz", &body, false).unwrap();
    assert_eq!(stored.parts, 1);
    assert_eq!(stored.url, "s3://bkt/a/b/db-1.gz");
    assert!(stored.etag.is_some());
    assert_eq!(
        std::fs::read(server.object_path("bkt", "a/b/db-1.gz")).unwrap(),
        body
    );

    let entry = store.head("db-1.gz").unwrap().expect("exists");
    assert_eq!(entry.size, body.len() as u64);
    assert_eq!(entry.sha256.as_deref(), Some("ab".repeat(32).as_str()));
    assert_eq!(entry.modified, meta(false).backup_time);
    assert_eq!(entry.url, "s3://bkt/a/b/db-1.gz");
    assert_eq!(get(&store, "db-1.gz"), body);
    assert!(store.head("nope.gz").unwrap().is_none());

    // Listing: only keys under the prefix, names relative to it.
    put(&store, "db-2.gz", b"two", false).unwrap();
    let other = open(&server, "elsewhere", server.options());
    put(&other, "x.gz", b"x", false).unwrap();
    let mut names: Vec<_> = store.list().unwrap().into_iter().map(|e| e.name).collect();
    names.sort();
    assert_eq!(names, ["db-1.gz", "db-2.gz"]);
    let listed = store.list().unwrap();
    assert!(listed
        .iter()
        .all(|e| e.sha256.is_some() && e.modified == meta(false).backup_time));

    store.delete("db-1.gz").unwrap();
    assert!(store.head("db-1.gz").unwrap().is_none());
    assert_eq!(store.delete("db-1.gz").unwrap_err().kind, Kind::NotFound);
    assert_eq!(store.get("db-1.gz").err().unwrap().kind, Kind::NotFound);

    // An empty body is a valid (single PUT) object.
    assert_eq!(put(&store, "empty.gz", b"", false).unwrap().parts, 1);
    assert_eq!(get(&store, "empty.gz"), b"");
}

#[test]
fn listing_paginates() {
    let server = server();
    let store = open(&server, "", server.options());
    // s3s-fs pages at 1000 keys; 1005 small objects cost a couple of seconds.
    for i in 0..1005 {
        put(&store, &format!("k{i:04}"), b"x", false).unwrap();
    }
    assert_eq!(store.list().unwrap().len(), 1005);
}

#[test]
fn multipart_round_trip() {
    let server = server();
    let mut opts = server.options();
    opts.part_size = Some(PART);
    let store = open(&server, "", opts);
    let body = data(2 * PART as usize + 123_457, 2);
    let stored = put(&store, "big.gz", &body, false).unwrap();
    assert_eq!(stored.parts, 3);
    assert!(
        stored.etag.as_deref().is_some_and(|e| e.ends_with("-3")),
        "{stored:?}"
    );
    assert_eq!(get(&store, "big.gz"), body);
    assert_eq!(
        store.head("big.gz").unwrap().unwrap().sha256,
        Some("ab".repeat(32))
    );
    assert!(server.incomplete_uploads().is_empty());

    // Exactly the threshold still goes as one PUT.
    let body = data(PART as usize, 3);
    assert_eq!(put(&store, "edge.gz", &body, false).unwrap().parts, 1);
    assert_eq!(get(&store, "edge.gz"), body);
}

/// The sha256 is computed beside compression: a multipart upload cannot start before it is
/// known (it is the object's metadata), so whole parts are held back in an unnamed temp file.
/// The writer never waits for the hash; commit does. Nothing is lost or reordered, and with a
/// temp dir that cannot be written the writer waits instead.
#[test]
fn multipart_holds_parts_back_until_a_late_hash() {
    let server = server();
    let mut opts = server.options();
    opts.part_size = Some(PART);
    opts.concurrency = Some(2);
    let store = open(&server, "", opts);
    let body = data(6 * PART as usize + 77_777, 9);
    let temp = tempfile::tempdir().unwrap();

    // The hash arrives only when the test says so, after every byte was written.
    let cell = sqlite_backup::store::Sha256Cell::default();
    let late = PutMeta {
        sha256: cell.clone(),
        temp_dir: temp.path().to_path_buf(),
        ..meta(false)
    };
    // A writer that waits would be released after 10 s, and the assert below would fail.
    let watchdog = cell.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(10));
        watchdog.set(Ok("00".repeat(32)));
    });
    let mut up = store.put("late.bin", &late).unwrap();
    for chunk in body.chunks(64 << 10) {
        up.write_all(chunk).unwrap();
    }
    assert!(!cell.is_ready(), "the writer waited for the hash");
    assert_eq!(
        server.incomplete_uploads().len(),
        0,
        "started before the hash"
    );
    cell.set(Ok("cd".repeat(32)));
    let stored = up.commit().unwrap();
    assert_eq!(stored.parts, 7);
    assert_eq!(get(&store, "late.bin"), body);
    assert_eq!(
        store.head("late.bin").unwrap().unwrap().sha256,
        Some("cd".repeat(32))
    );
    assert!(server.incomplete_uploads().is_empty());
    assert_eq!(std::fs::read_dir(temp.path()).unwrap().count(), 0);

    // No spool possible: the writer waits for the hash at the first whole part.
    let cell = sqlite_backup::store::Sha256Cell::default();
    let waiting = PutMeta {
        sha256: cell.clone(),
        temp_dir: temp.path().join("missing"),
        ..meta(false)
    };
    let setter = {
        let cell = cell.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(400));
            cell.set(Ok("ef".repeat(32)));
        })
    };
    let started = std::time::Instant::now();
    let mut up = store.put("waited.bin", &waiting).unwrap();
    for chunk in body.chunks(64 << 10) {
        up.write_all(chunk).unwrap();
    }
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(up.commit().unwrap().parts, 7);
    setter.join().unwrap();
    assert_eq!(get(&store, "waited.bin"), body);
    assert!(server.incomplete_uploads().is_empty());

    // A hash that fails to arrive fails the upload and leaves nothing.
    let cell = sqlite_backup::store::Sha256Cell::default();
    cell.set(Err(sqlite_backup::error::Error::new(Kind::Io, "disk gone")));
    let failing = PutMeta {
        sha256: cell,
        ..meta(false)
    };
    let mut up = store.put("failed.bin", &failing).unwrap();
    let written = body.chunks(64 << 10).try_for_each(|c| up.write_all(c));
    let err = match written {
        Err(e) => sqlite_backup::error::Error::io("write", e),
        Ok(()) => up.commit().unwrap_err(),
    };
    assert!(err.message.contains("disk gone"), "{}", err.message);
    assert!(store.head("failed.bin").unwrap().is_none());
    assert!(server.incomplete_uploads().is_empty());
}

#[test]
fn create_only_refuses_an_existing_key() {
    let server = server();
    let mut opts = server.options();
    opts.part_size = Some(PART);
    let store = open(&server, "p", opts);
    put(&store, "db.gz", b"old", false).unwrap();
    // Checked before the backup's work starts (put itself relies on If-None-Match).
    let err = store.check_put("db.gz", true).err().unwrap();
    assert_eq!(err.kind, Kind::Exists);
    assert_eq!(
        err.message,
        "s3://bkt/p/db.gz already exists and create_only is set"
    );

    // Someone else creates the key while we upload: If-None-Match catches it at the end,
    // for a single PUT and for CompleteMultipartUpload.
    for (name, len) in [("race1.gz", 1000), ("race2.gz", PART as usize + 10)] {
        let mut up = store.put(name, &meta(true)).unwrap();
        up.write_all(&data(len, 4)).unwrap();
        put(&store, name, b"winner", false).unwrap();
        let err = up.commit().unwrap_err();
        assert_eq!(err.kind, Kind::Exists, "{name}: {err}");
        assert_eq!(get(&store, name), b"winner");
    }
    assert!(server.incomplete_uploads().is_empty());
    // Without create_only the key is replaced.
    put(&store, "db.gz", b"new", false).unwrap();
    assert_eq!(get(&store, "db.gz"), b"new");
}

#[test]
fn abort_and_drop_leave_nothing_behind() {
    let server = server();
    let mut opts = server.options();
    opts.part_size = Some(PART);
    let store = open(&server, "", opts);
    // Small: nothing was sent.
    let mut up = store.put("small.gz", &meta(false)).unwrap();
    up.write_all(b"abc").unwrap();
    up.abort();
    // Multipart in progress, parts already sent: aborted.
    let mut up = store.put("big.gz", &meta(false)).unwrap();
    up.write_all(&data(2 * PART as usize + 5, 5)).unwrap();
    assert!(
        !server.incomplete_uploads().is_empty(),
        "the upload really started"
    );
    up.abort();
    assert!(
        server.incomplete_uploads().is_empty(),
        "{:?}",
        server.incomplete_uploads()
    );
    // Dropped without commit: the same.
    {
        let mut up = store.put("dropped.gz", &meta(false)).unwrap();
        up.write_all(&data(PART as usize + 5, 6)).unwrap();
    }
    assert!(
        server.incomplete_uploads().is_empty(),
        "{:?}",
        server.incomplete_uploads()
    );
    assert!(store.list().unwrap().is_empty());
    assert!(store.head("big.gz").unwrap().is_none());
}

#[test]
fn wrong_secret_is_an_auth_error_without_the_secret() {
    let server = server();
    let mut opts = server.options();
    let wrong = "WRONGSECRETwrongsecret1234567890".to_string();
    opts.secret_access_key = Some(wrong.clone());
    opts.retries = Some(0);
    let store = open(&server, "p", opts);
    let errors = [
        put(&store, "db.gz", b"x", false).unwrap_err(),
        store.list().unwrap_err(),
        store.get("db.gz").err().unwrap(),
    ];
    for err in errors {
        assert_eq!(err.kind, Kind::Auth, "{err}");
        assert!(
            err.message
                .contains("check the access key, secret key and region"),
            "{err}"
        );
        let debug = format!("{err:?}");
        // Also no presigned signature or credential.
        assert_no_secret(&debug, &[&wrong, &server.secret_key]);
    }
}

#[test]
fn missing_bucket_is_not_found() {
    let server = S3Server::start();
    let store =
        S3Store::open_with_env("no-such-bucket", "", &server.options(), &server.env()).unwrap();
    // (s3s-fs creates a missing bucket's directory on PutObject, unlike AWS: test reads.)
    let err = store.list().unwrap_err();
    assert_eq!(err.kind, Kind::NotFound);
    assert_eq!(err.message, "bucket 'no-such-bucket' does not exist");
    assert_eq!(store.get("db.gz").err().unwrap().kind, Kind::NotFound);
}

#[test]
fn unreachable_endpoint_says_so() {
    let port = free_port(); // nothing listens there
    let opts = S3Options {
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        access_key_id: Some("AKID".into()),
        secret_access_key: Some("SECRETKEY123".into()),
        retries: Some(2),
        ..S3Options::default()
    };
    let env = Environment::empty().with_var(BACKOFF_ENV, "5");
    let store = S3Store::open_with_env("bkt", "", &opts, &env).unwrap();
    let err = store.list().unwrap_err();
    assert_eq!(err.kind, Kind::Transient);
    assert!(
        err.message
            .starts_with(&format!("cannot reach http://127.0.0.1:{port}: ")),
        "{err}"
    );
    assert!(err.message.contains("gave up after 3 attempts"), "{err}");
    assert_no_secret(&err.message, &["SECRETKEY123"]);
}

// ---- through the fault-injecting proxy ----

fn proxied(server: &S3Server, proxy: &Proxy, part_size: Option<u64>) -> S3Store {
    let mut opts = server.options();
    opts.endpoint = Some(proxy.endpoint());
    opts.part_size = part_size;
    opts.timeout_ms = Some(1000);
    opts.concurrency = Some(2);
    open(server, "", opts)
}

fn upstream(server: &S3Server) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], server.port()))
}

#[test]
fn requests_have_explicit_length_md5_and_no_checksums() {
    let server = server();
    let proxy = Proxy::start(upstream(&server));
    let store = proxied(&server, &proxy, Some(PART));
    put(&store, "small.gz", &data(1000, 7), true).unwrap();
    put(&store, "big.gz", &data(PART as usize + 1000, 8), true).unwrap();
    let requests = proxy.requests();
    let puts: Vec<_> = requests.iter().filter(|r| r.method == "PUT").collect();
    assert_eq!(puts.len(), 3, "one PutObject, two UploadParts");
    for r in &puts {
        assert!(
            r.header("content-length")
                .is_some_and(|v| v.parse::<usize>().unwrap() > 0),
            "{r:?}"
        );
        assert!(r.header("transfer-encoding").is_none(), "{r:?}");
        assert!(r.header("content-md5").is_some(), "{r:?}");
    }
    for r in &requests {
        assert!(
            r.headers
                .iter()
                .all(|(n, _)| !n.starts_with("x-amz-checksum-")),
            "{r:?}"
        );
        assert!(r.header("transfer-encoding").is_none(), "{r:?}");
    }
    let put_object = puts
        .iter()
        .find(|r| !r.query.contains("partNumber"))
        .unwrap();
    let create = requests
        .iter()
        .find(|r| r.method == "POST" && r.query.contains("uploads"))
        .unwrap();
    let complete = requests
        .iter()
        .find(|r| r.method == "POST" && r.query.contains("uploadId"))
        .unwrap();
    for r in [*put_object, create] {
        assert_eq!(
            r.header("x-amz-meta-sha256"),
            Some("ab".repeat(32).as_str())
        );
        assert_eq!(
            r.header("x-amz-meta-backup-time"),
            Some("2024-05-06T07:08:09.000Z")
        );
        assert_eq!(
            r.header("x-amz-meta-sqlite-backup-version"),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }
    assert_eq!(put_object.header("if-none-match"), Some("*"));
    assert_eq!(complete.header("if-none-match"), Some("*"));
    assert!(complete.header("content-length").is_some());
}

#[test]
fn transient_faults_are_retried() {
    let server = server();
    let proxy = Proxy::start(upstream(&server));
    let store = proxied(&server, &proxy, Some(PART));
    proxy.faults(&[
        ("POST", "uploads", 1, Fault::Status(503)),
        ("PUT", "partNumber", 2, Fault::Status(500)),
        ("PUT", "partNumber", 1, Fault::Status(429)),
        ("PUT", "partNumber", 1, Fault::DropRequest(100_000)),
        (
            "PUT",
            "partNumber",
            1,
            Fault::Stall(Duration::from_millis(2500)),
        ),
        ("POST", "uploadId", 1, Fault::Status(500)),
    ]);
    let body = data(3 * PART as usize + 77, 9);
    let stored = put(&store, "big.gz", &body, false).unwrap();
    assert_eq!(stored.parts, 4);
    assert_eq!(get(&store, "big.gz"), body);
    assert!(server.incomplete_uploads().is_empty());
    let faults = proxy
        .requests()
        .iter()
        .filter(|r| r.fault.is_some())
        .count();
    assert_eq!(faults, 7, "every scripted fault was hit");

    // A single PUT too.
    proxy.fault("PUT", "", 2, Fault::Status(503));
    put(&store, "small.gz", b"small", false).unwrap();
    assert_eq!(get(&store, "small.gz"), b"small");
}

/// A fault the proxy keeps injecting, the upload it hits, and how that upload must fail.
struct PersistentFault {
    label: &'static str,
    /// Proxy match: method and a query substring ("" for any).
    method: &'static str,
    query: &'static str,
    status: u16,
    name: &'static str,
    len: usize,
    kind: Kind,
    /// Texts the error message must contain.
    message: &'static [&'static str],
    /// PUT requests sent, where counted (4xx other than 429 are not retried).
    puts: Option<usize>,
    /// A multipart upload, which must be aborted (AbortMultipartUpload sent).
    multipart: bool,
}

#[test]
fn persistent_faults_fail_clearly_and_leave_nothing() {
    let server = server();
    let proxy = Proxy::start(upstream(&server));
    let mut opts = server.options();
    opts.endpoint = Some(proxy.endpoint());
    opts.part_size = Some(PART);
    opts.retries = Some(2);
    let store = open(&server, "", opts);
    let cases = [
        PersistentFault {
            label: "parts answer 500",
            method: "PUT",
            query: "partNumber",
            status: 500,
            name: "big.gz",
            len: 2 * PART as usize + 1,
            kind: Kind::Transient,
            message: &["s3://bkt/big.gz", "HTTP 500", "gave up after 3 attempts"],
            puts: None,
            multipart: true,
        },
        PersistentFault {
            label: "a single PUT answers 503",
            method: "PUT",
            query: "",
            status: 503,
            name: "small.gz",
            len: 1,
            kind: Kind::Transient,
            message: &[],
            puts: None,
            multipart: false,
        },
        PersistentFault {
            label: "a single PUT answers 400, not retried",
            method: "PUT",
            query: "",
            status: 400,
            name: "small.gz",
            len: 1,
            kind: Kind::Remote,
            message: &[],
            puts: Some(1),
            multipart: false,
        },
    ];
    for (seed, case) in cases.iter().enumerate() {
        let label = case.label;
        proxy.clear_faults();
        proxy.clear_requests();
        proxy.fault(
            case.method,
            case.query,
            usize::MAX,
            Fault::Status(case.status),
        );
        let err = put(&store, case.name, &data(case.len, 10 + seed as u64), false).unwrap_err();
        assert_eq!(err.kind, case.kind, "{label}: {err}");
        for text in case.message {
            assert!(err.message.contains(text), "{label}: {err}");
        }
        assert!(
            server.incomplete_uploads().is_empty(),
            "{label}: {:?}",
            server.incomplete_uploads()
        );
        assert!(!server.object_path("bkt", case.name).exists(), "{label}");
        let requests = proxy.requests();
        if case.multipart {
            assert!(
                requests
                    .iter()
                    .any(|r| r.method == "DELETE" && r.query.contains("uploadId")),
                "{label}"
            );
        }
        if let Some(puts) = case.puts {
            assert_eq!(
                requests.iter().filter(|r| r.method == "PUT").count(),
                puts,
                "{label}"
            );
        }
    }
}

#[test]
fn dropped_download_resumes_with_range() {
    let server = server();
    let direct = open(&server, "", server.options());
    let body = data(3 * MIB + 5, 11);
    put(&direct, "db.gz", &body, false).unwrap();

    let proxy = Proxy::start(upstream(&server));
    let store = proxied(&server, &proxy, None);
    proxy.fault("GET", "", 1, Fault::DropResponse(MIB));
    proxy.fault("GET", "", 1, Fault::DropResponse(MIB));
    assert_eq!(get(&store, "db.gz"), body);
    let gets: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(gets.len(), 3, "{gets:?}");
    assert_eq!(gets[0].header("range"), None);
    assert_eq!(
        gets[1].header("range"),
        Some(format!("bytes={MIB}-").as_str())
    );
    assert_eq!(
        gets[2].header("range"),
        Some(format!("bytes={}-", 2 * MIB).as_str())
    );
    assert!(gets[1].header("if-match").is_some());
}

#[test]
fn stalled_server_times_out_with_the_limit_in_the_message() {
    let server = server();
    let proxy = Proxy::start(upstream(&server));
    let mut opts = server.options();
    opts.endpoint = Some(proxy.endpoint());
    opts.timeout_ms = Some(500);
    opts.retries = Some(1);
    let store = open(&server, "", opts);
    proxy.fault(
        "",
        "",
        usize::MAX,
        Fault::Stall(Duration::from_millis(1500)),
    );
    let err = store.list().unwrap_err();
    assert_eq!(err.kind, Kind::Transient);
    assert_eq!(
        err.message,
        format!(
            "timed out after 500 ms talking to {} (gave up after 2 attempts)",
            proxy.endpoint()
        )
    );
}
