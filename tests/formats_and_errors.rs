//! Issue #10, items 2 and 5. (2) A refusal is reported as what the server said: S3 answering
//! 403 and closing while a large PUT body is still going out is "access denied" at once, never
//! a broken pipe retried for seconds; no 4xx but the documented retryable ones is retried.
//! (5) Backups other tools made or touched are read as `gzip -d` and `zstd -d` read them: zero
//! padding after gzip members and zstd skippable frames (`pzstd`) are accepted, anything
//! those tools refuse or warn about is refused as corrupt, with nothing left behind.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use common::proxy::{Fault, Proxy};
use common::s3server::S3Server;
use common::*;
use serde_json::json;
use sqlite_backup::error::Kind;
use sqlite_backup::store::s3::{S3Options, S3Store};
use sqlite_backup::store::{PutMeta, Store};

// ---- item 5: formats other tools produce ----

/// A small database, and `dir/db.raw`: its bytes, the input for the tools.
fn raw_db(dir: &Path) -> (PathBuf, String) {
    let db = dir.join("src.db");
    make_sample_db(&db, Journal::Rollback, 300);
    let digest = digest(&db);
    let raw = dir.join("db.raw");
    fs::copy(&db, &raw).unwrap();
    (raw, digest)
}

/// Runs a shell command line (the tools as a user would type them); panics if it fails.
fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Does the tool itself accept `path` (exit status 0) and give back `raw`'s bytes?
fn tool_accepts(path: &Path, raw: &[u8]) -> bool {
    let name = path.to_str().unwrap();
    let (prog, args): (&str, &[&str]) = if name.ends_with(".gz") {
        ("gzip", &["-dc"])
    } else {
        ("zstd", &["-dcq"])
    };
    let out = Command::new(prog).args(args).arg(path).output().unwrap();
    out.status.success() && out.stdout == raw
}

#[test]
fn backups_made_or_padded_by_other_tools_are_read_as_gzip_and_zstd_read_them() {
    let dir = tempdir();
    let d = dir.path();
    let (raw, want) = raw_db(d);
    let raw_bytes = fs::read(&raw).unwrap();
    // Every file: (name, how it is made, accepted?). Accepted means exit status 0 from the
    // tool; the test checks that expectation against the tool too.
    let cases: &[(&str, &str, bool)] = &[
        ("plain.gz", "gzip -c db.raw > plain.gz", true),
        // Tape: dd pads the last block with zeros.
        (
            "tape.gz",
            "gzip -c db.raw | dd of=tape.gz bs=10240 iflag=fullblock conv=sync 2>/dev/null",
            true,
        ),
        (
            "padded.gz",
            "gzip -c db.raw > padded.gz && truncate -s +3000 padded.gz",
            true,
        ),
        (
            "members.gz",
            "head -c 40000 db.raw | gzip -c > members.gz && tail -c +40001 db.raw | gzip -9c >> members.gz && truncate -s +100 members.gz",
            true,
        ),
        // gzip -d warns "trailing garbage ignored" and exits 2.
        (
            "garbage.gz",
            "gzip -c db.raw > garbage.gz && printf 'junk' >> garbage.gz",
            false,
        ),
        (
            "padded-garbage.gz",
            "gzip -c db.raw > padded-garbage.gz && truncate -s +512 padded-garbage.gz && printf 'x' >> padded-garbage.gz",
            false,
        ),
        // A stray start of another member: "unexpected end of file", exit 1.
        (
            "half-member.gz",
            "gzip -c db.raw > half-member.gz && printf '\\037\\213' >> half-member.gz",
            false,
        ),
        ("plain.zst", "zstd -q -c db.raw > plain.zst", true),
        // pzstd starts the file, and each frame, with a skippable frame.
        ("pzstd.zst", "pzstd -q -p 2 -c db.raw > pzstd.zst", true),
        (
            "skippable.zst",
            "printf 'P*M\\030\\004\\000\\000\\000meta' > skippable.zst && zstd -q -c db.raw >> skippable.zst && printf '\\137*M\\030\\002\\000\\000\\000ok' >> skippable.zst",
            true,
        ),
        // zstd -d refuses zeros after the last frame ("unknown header").
        (
            "padded.zst",
            "zstd -q -c db.raw | dd of=padded.zst bs=10240 iflag=fullblock conv=sync 2>/dev/null",
            false,
        ),
        (
            "garbage.zst",
            "zstd -q -c db.raw > garbage.zst && printf 'junk' >> garbage.zst",
            false,
        ),
        // A skippable frame cut short.
        (
            "cut-skippable.zst",
            "zstd -q -c db.raw > cut-skippable.zst && printf 'P*M\\030\\020\\000\\000\\000abc' >> cut-skippable.zst",
            false,
        ),
    ];
    let conn = open_memory();
    let out = d.join("out");
    fs::create_dir(&out).unwrap();
    let mut failures = Vec::new();
    for (name, script, accepted) in cases {
        sh(d, script);
        let path = d.join(name);
        assert_eq!(
            tool_accepts(&path, &raw_bytes),
            *accepted,
            "{name}: the tool's own verdict differs from this test's expectation"
        );
        let dest = out.join(format!("{name}.db"));
        let verify = format!("SELECT verify_backup({})", path_lit(&path));
        let restore = format!(
            "SELECT restore_backup({}, {})",
            path_lit(&path),
            path_lit(&dest)
        );
        let codec = if name.ends_with(".gz") {
            "gzip"
        } else {
            "zstd"
        };
        if *accepted {
            for sql in [&verify, &restore] {
                match conn.query_row(sql, [], |r| r.get::<_, String>(0)) {
                    Ok(text) => {
                        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                        assert_eq!(v["ok"], true, "{name}: {text}");
                        assert_eq!(v["compression"], codec, "{name}: {text}");
                    }
                    Err(e) => failures.push(format!("{name}: refused: {e}")),
                }
            }
            if dest.exists() {
                assert_eq!(digest(&dest), want, "{name}");
            }
        } else {
            for sql in [&verify, &restore] {
                let err = call_err(&conn, sql);
                let expected = format!("is not a readable {codec} archive (truncated or corrupt)");
                if !err.contains(&expected) {
                    failures.push(format!("{name}: {err}"));
                }
            }
            assert!(!dest.exists(), "{name}: restored a refused backup");
        }
        assert_no_temp_files(&out);
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_alive(&conn);
}

// ---- item 2: what the server said ----

/// s3s-fs, like AWS, refuses parts below 5 MiB (other than the last).
const PART: u64 = 5 << 20;

fn server() -> S3Server {
    let server = S3Server::start();
    server.create_bucket("bkt");
    server
}

fn upstream(server: &S3Server) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], server.port()))
}

fn meta() -> PutMeta {
    PutMeta {
        sha256: sqlite_backup::store::Sha256Cell::ready("ab".repeat(32)),
        backup_time: Utc.with_ymd_and_hms(2026, 11, 26, 3, 0, 0).unwrap(),
        create_only: false,
        temp_dir: std::env::temp_dir(),
    }
}

/// Streams `body` into a new upload in 64 KiB writes, as the compressor would.
fn put(store: &S3Store, name: &str, body: &[u8]) -> sqlite_backup::error::Result<()> {
    let mut up = store.put(name, &meta())?;
    for chunk in body.chunks(64 << 10) {
        up.write_all(chunk)
            .map_err(|e| sqlite_backup::error::Error::io("write", e))?;
    }
    up.commit().map(|_| ())
}

fn data(len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(len as u64);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// A store through `proxy`, with the default retries (5) and a 5 ms backoff base.
fn proxied(server: &S3Server, proxy: &Proxy) -> S3Store {
    let opts = S3Options {
        endpoint: Some(proxy.endpoint()),
        part_size: Some(PART),
        timeout_ms: Some(5000),
        ..server.options()
    };
    S3Store::open_with_env("bkt", "", &opts, &server.env()).unwrap()
}

#[test]
fn refused_while_the_body_is_still_going_out_is_access_denied_at_once() {
    let server = server();
    let proxy = Proxy::start(upstream(&server));
    let store = proxied(&server, &proxy);
    // A single PUT of 4 MiB and a multipart upload whose first part is refused: before the fix
    // about 2 runs in 5 ended "broken pipe (gave up after 6 attempts)".
    let single = data(4 << 20);
    let multi = data(2 * PART as usize + 1);
    let mut wrong = Vec::new();
    for run in 0..20 {
        let (name, body, query) = if run % 2 == 0 {
            ("single.gz", &single, "")
        } else {
            ("multi.gz", &multi, "partNumber")
        };
        proxy.clear_faults();
        proxy.clear_requests();
        proxy.fault("PUT", query, usize::MAX, Fault::RejectEarly(403));
        let started = Instant::now();
        let err = match put(&store, name, body) {
            Ok(()) => panic!("run {run}: stored although every PUT was refused"),
            Err(e) => e,
        };
        let elapsed = started.elapsed();
        // Each refused request was sent once: the part number (or the key) never repeats.
        let mut refused: Vec<String> = proxy
            .requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.query.contains(query))
            .map(|r| {
                r.query
                    .split('&')
                    .find(|p| p.starts_with("partNumber="))
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        let sent = refused.len();
        refused.sort();
        refused.dedup();
        if err.kind != Kind::Auth
            || !err
                .message
                .starts_with(&format!("access denied to s3://bkt/{name}: "))
            || !err.message.contains("(AccessDenied)")
            || refused.len() != sent
            || elapsed > Duration::from_secs(3)
        {
            wrong.push(format!(
                "run {run}: {:?} {err} after {elapsed:?}, {sent} PUTs",
                err.kind
            ));
        }
        assert!(!server.object_path("bkt", name).exists(), "run {run}");
        assert!(server.incomplete_uploads().is_empty(), "run {run}");
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // Through SQL, from the sqlite3 CLI: the error names the cause, and a cron job fails.
    let dir = tempdir();
    let db = dir.path().join("big.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60)
             INSERT INTO blobs SELECT i, randomblob(100000) FROM n;",
        )
        .unwrap();
    }
    let mut opts = server.options_json();
    opts["endpoint"] = json!(proxy.endpoint());
    proxy.clear_faults();
    proxy.fault("PUT", "", usize::MAX, Fault::RejectEarly(403));
    let out = sqlite3_cli(
        &db,
        &["-bail"],
        &format!(
            "SELECT backup_to_s3('bkt', 'cli.gz', {});",
            lit(opts.to_string())
        ),
        None,
    );
    assert!(!out.ok(), "{}", out.stdout);
    assert!(
        out.stderr
            .contains("backup_to_s3: access denied to s3://bkt/cli.gz: check the access key"),
        "{}",
        out.stderr
    );
    assert!(!server.object_path("bkt", "cli.gz").exists());
}

#[test]
fn a_server_that_ignores_expect_and_refuses_mid_body_is_still_heard() {
    // It never says "100 Continue" (so the body goes out after ureq's 1 s wait), reads 256 KiB,
    // answers 403 and closes: the write fails, and the answer already received is read.
    let server = server();
    let proxy = Proxy::start(upstream(&server));
    let store = proxied(&server, &proxy);
    let body = data(4 << 20);
    let mut wrong = Vec::new();
    for run in 0..4 {
        proxy.clear_faults();
        proxy.clear_requests();
        proxy.fault("PUT", "", usize::MAX, Fault::RejectAfter(256 << 10, 403));
        let started = Instant::now();
        let result = put(&store, "single.gz", &body);
        let elapsed = started.elapsed();
        let sent = proxy
            .requests()
            .iter()
            .filter(|r| r.method == "PUT")
            .count();
        match result {
            Err(e) if e.kind == Kind::Auth && e.message.contains("(AccessDenied)") && sent == 1 => {
            }
            other => wrong.push(format!(
                "run {run}: {other:?} after {elapsed:?}, {sent} PUTs"
            )),
        }
        assert!(elapsed < Duration::from_secs(4), "run {run}: {elapsed:?}");
        assert!(!server.object_path("bkt", "single.gz").exists());
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn a_success_answered_before_the_whole_body_went_out_is_not_believed() {
    // A broken server or proxy says 200 after 256 KiB of a 4 MiB body and closes: the object
    // cannot be complete, so this is a failed (retried) request, never a stored backup: a broken
    // pipe when the body does not fit in the socket buffers, no ETag when it does.
    let server = server();
    let proxy = Proxy::start(upstream(&server));
    let opts = S3Options {
        endpoint: Some(proxy.endpoint()),
        retries: Some(1),
        ..server.options()
    };
    let store = S3Store::open_with_env("bkt", "", &opts, &server.env()).unwrap();
    proxy.fault("PUT", "", usize::MAX, Fault::RejectAfter(256 << 10, 200));
    let err = put(&store, "single.gz", &data(4 << 20)).unwrap_err();
    assert_eq!(err.kind, Kind::Transient, "{err}");
    assert!(
        err.message.contains("the connection to http://127.0.0.1:"),
        "{err}"
    );
    assert!(err.message.contains("gave up after 2 attempts"), "{err}");
}

#[test]
fn a_success_without_an_etag_is_not_believed() {
    // The same broken server with a body small enough to fit in the socket buffers: the client's
    // write completes, then it reads "200" (with no ETag). Before the ETag check that was a
    // stored backup that the server never had; the 4 MiB case above only failed when the
    // buffers were too small for the body, so it passed or failed by timing.
    let server = server();
    let proxy = Proxy::start(upstream(&server));
    let opts = S3Options {
        endpoint: Some(proxy.endpoint()),
        retries: Some(1),
        ..server.options()
    };
    let store = S3Store::open_with_env("bkt", "", &opts, &server.env()).unwrap();
    proxy.fault("PUT", "", usize::MAX, Fault::RejectAfter(256 << 10, 200));
    let err = put(&store, "small.gz", &data(300 << 10)).unwrap_err();
    assert_eq!(err.kind, Kind::Transient, "{err}");
    assert!(err.message.contains("carries no ETag"), "{err}");
    assert!(err.message.contains("gave up after 2 attempts"), "{err}");
    assert!(!server.object_path("bkt", "small.gz").exists());
}

#[test]
fn a_server_that_refuses_expect_gets_the_request_without_it() {
    // 417 Expectation Failed: send again at once without the header, as curl does.
    let server = server();
    let proxy = Proxy::start(upstream(&server));
    let store = proxied(&server, &proxy);
    proxy.fault("PUT", "", 1, Fault::RejectEarly(417));
    let body = data(3 << 20);
    put(&store, "single.gz", &body).unwrap();
    assert_eq!(
        fs::read(server.object_path("bkt", "single.gz")).unwrap(),
        body
    );
    let expects: Vec<Option<String>> = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "PUT")
        .map(|r| r.header("expect").map(str::to_string))
        .collect();
    assert_eq!(expects, [Some("100-continue".to_string()), None]);
}

#[test]
fn only_the_retryable_4xx_are_retried() {
    let server = server();
    let proxy = Proxy::start(upstream(&server));
    let store = proxied(&server, &proxy);
    let body = data(200 << 10);
    // (status, retried?): 408 is the server giving up on a slow request; 429 is throttling.
    let cases = [
        (400, false),
        (403, false),
        (404, false),
        (405, false),
        (409, false),
        (411, false),
        (413, false),
        (408, true),
        (429, true),
    ];
    for (status, retried) in cases {
        proxy.clear_faults();
        proxy.clear_requests();
        proxy.fault("PUT", "", usize::MAX, Fault::Status(status));
        let err = put(&store, "small.gz", &body).unwrap_err();
        let sent = proxy
            .requests()
            .iter()
            .filter(|r| r.method == "PUT")
            .count();
        assert_eq!(sent, if retried { 6 } else { 1 }, "HTTP {status}: {err}");
        assert_eq!(err.kind == Kind::Transient, retried, "HTTP {status}: {err}");
        assert!(err.message.contains("s3://bkt/small.gz"), "{err}");
        assert!(!server.object_path("bkt", "small.gz").exists());
    }
}

#[test]
fn wrong_credentials_on_a_large_put_are_access_denied_at_once() {
    let server = server();
    let wrong = "WRONGSECRETwrongsecret1234567890";
    let opts = S3Options {
        secret_access_key: Some(wrong.into()),
        part_size: Some(PART),
        ..server.options()
    };
    let store = S3Store::open_with_env("bkt", "", &opts, &server.env()).unwrap();
    for (name, len) in [("single.gz", 4 << 20), ("multi.gz", 2 * PART as usize + 1)] {
        let started = Instant::now();
        let err = put(&store, name, &data(len)).unwrap_err();
        assert_eq!(err.kind, Kind::Auth, "{err}");
        assert!(
            err.message.starts_with(&format!(
                "access denied to s3://bkt/{name}: check the access key, secret key and region"
            )),
            "{err}"
        );
        assert_no_secret(&format!("{err:?}"), &[wrong]);
        assert!(started.elapsed() < Duration::from_secs(3), "{name}");
        assert!(!server.object_path("bkt", name).exists());
    }
}
