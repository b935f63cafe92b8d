//! The sha256 trailer (#14, one pass to S3): every `.gz`/`.zst` backup ends with the database's
//! sha256 and size, in a zstd skippable frame or an empty gzip member that every decoder skips.
//! An S3 stream upload then reads the database once and starts at once; `if_changed`,
//! `backup_list`, `verify_backup` and `restore_backup` read the trailer (a few bytes from the
//! end); old backups without one keep working; `.age` backups carry none.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::calls::*;
use common::proxy::Proxy;
use common::s3server::S3Server;
use common::*;
use serde_json::json;

const ZSTD_TRAILER: usize = 8 + 61;
const GZIP_TRAILER: usize = 10 + 2 + 4 + 61 + 2 + 8;

/// (sha256 hex, database size) read by hand from the last bytes of a stored backup, or `None`.
fn trailer_of(stored: &[u8]) -> Option<(String, u64)> {
    let payload = |p: &[u8]| -> Option<(String, u64)> {
        (p.get(..20)? == b"sqlite-backup sha256" && p[20] == 1).then(|| {
            (
                hex(&p[21..53]),
                u64::from_le_bytes(p[53..61].try_into().unwrap()),
            )
        })
    };
    let zst = stored.get(stored.len().checked_sub(ZSTD_TRAILER)?..)?;
    if zst[..8] == [0x5e, 0x2a, 0x4d, 0x18, 61, 0, 0, 0] {
        return payload(&zst[8..]);
    }
    let gz = stored.get(stored.len().checked_sub(GZIP_TRAILER)?..)?;
    // ID1 ID2 deflate FEXTRA, mtime 0, xfl 0, OS 255, XLEN 65, 'SB' LEN 61 ... empty block, 0s.
    let head = [
        0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255, 65, 0, b'S', b'B', 61, 0,
    ];
    if gz[..16] == head && gz[77..] == [3, 0, 0, 0, 0, 0, 0, 0, 0, 0] {
        return payload(&gz[16..77]);
    }
    None
}

/// A WAL database (the stream is its default) with a few hundred KiB of compressible rows.
fn wal_db(dir: &Path) -> rusqlite::Connection {
    let path = dir.join("app.db");
    make_sample_db(&path, Journal::Wal, 3000);
    open(&path)
}

fn run_ok(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn file_backups_end_in_a_trailer_that_every_decoder_skips() {
    let dir = tempdir();
    let conn = wal_db(dir.path());
    for method in ["stream", "vacuum"] {
        for name in ["b.db.zst", "b.db.gz"] {
            let dest = dir.path().join(format!("{method}-{name}"));
            let report = to_file(&conn, &dest, &json!({"method": method}));
            let stored = fs::read(&dest).unwrap();
            let (sha, size) = trailer_of(&stored).unwrap_or_else(|| panic!("{report}"));
            assert_eq!(sha, report["sha256"].as_str().unwrap(), "{report}");
            assert_eq!(size, report["bytes"].as_u64().unwrap(), "{report}");
            // The system's tools read the trailer as nothing: the very database comes out.
            let outs: Vec<Vec<u8>> = if name.ends_with(".zst") {
                run_ok(Command::new("zstd").args(["-t", "-q"]).arg(&dest));
                vec![run_ok(Command::new("zstd").args(["-dc", "-q"]).arg(&dest))]
            } else {
                run_ok(Command::new("gzip").arg("-t").arg(&dest));
                let py = python(
                    "import gzip, hashlib, sys\n\
                     print(hashlib.sha256(gzip.open(sys.argv[1]).read()).hexdigest())",
                    &[dest.to_str().unwrap()],
                );
                assert_eq!(py.assert_ok().stdout.trim(), sha, "python gzip {method}");
                vec![
                    run_ok(Command::new("gunzip").arg("-c").arg(&dest)),
                    run_ok(Command::new("zcat").arg(&dest)),
                ]
            };
            for out in outs {
                assert_eq!(sha256_hex(&out), sha, "{method} {name}");
            }
        }
    }
    // Raw backups carry no trailer: the file is the database.
    let raw = dir.path().join("raw.db");
    let report = to_file(&conn, &raw, &json!({}));
    assert_eq!(
        sha256_hex(&fs::read(&raw).unwrap()),
        report["sha256"].as_str().unwrap()
    );
}

/// An S3 server with bucket `bkt`, a recording proxy in front of it, and options that go
/// through the proxy.
fn proxied_s3() -> (S3Server, Proxy, serde_json::Value) {
    let server = common::series::s3_server();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into());
    let mut opts = server.options_json();
    opts["endpoint"] = proxy.endpoint().into();
    (server, proxy, opts)
}

#[test]
fn s3_stream_reads_the_database_once_and_records_the_hash_in_the_trailer_only() {
    let (server, proxy, mut opts) = proxied_s3();
    let dir = tempdir();
    let (conn, expected) = big_db(dir.path());
    conn.execute_batch("PRAGMA journal_mode = WAL").unwrap();
    opts["part_size"] = (5u64 << 20).into();
    for key in ["big.db.zst", "big.db.gz"] {
        proxy.clear_requests();
        let report = to_s3(&conn, "bkt", key, &opts);
        assert_eq!(report["method"], "stream", "{report}");
        assert!(report["parts"].as_u64().unwrap() >= 2, "{report}");
        // One pass: no hash-only pass before the upload (today's took ~12 MB of reading).
        assert_eq!(report["timings_ms"]["hash"], 0, "{report}");
        // The upload never waited for the hash: no sha256 metadata on any request.
        for r in proxy.requests() {
            let signed = format!("{} {:?}", r.query, r.headers).to_ascii_lowercase();
            assert!(!signed.contains("x-amz-meta-sha256"), "{r:?}");
        }
        let stored = fs::read(server.object_path("bkt", key)).unwrap();
        let (sha, size) = trailer_of(&stored).expect("trailer");
        assert_eq!(sha, report["sha256"].as_str().unwrap());
        assert_eq!(size, report["bytes"].as_u64().unwrap());
        let restored = dir.path().join("r.db");
        fs::write(&restored, decompress_cli(&server.object_path("bkt", key))).unwrap();
        assert_eq!(sha256_hex(&fs::read(&restored).unwrap()), sha);
        assert_eq!(digest(&restored), expected);
        fs::remove_file(&restored).unwrap();
    }
    // backup_list shows the trailer's sha256, and calls them backups.
    let rows = list_rows(&conn, "s3://bkt", Some(&opts));
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        let stored = fs::read(server.object_path("bkt", &row.name)).unwrap();
        assert_eq!(row.sha256, trailer_of(&stored).map(|t| t.0), "{row:?}");
    }
    let backup_col: Vec<i64> = conn
        .prepare(&format!(
            "SELECT backup FROM backup_list('s3://bkt', {})",
            lit(opts.to_string())
        ))
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(backup_col, vec![1, 1]);

    // if_changed: skipped on the trailer alone, read with one ranged GET of a few bytes.
    opts["if_changed"] = true.into();
    proxy.clear_requests();
    let again = to_s3(&conn, "bkt", "big.db.zst", &opts);
    assert_eq!(again["skipped"], true, "{again}");
    assert_eq!(again["same_as"], "s3://bkt/big.db.zst", "{again}");
    let gets: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && !r.query.contains("list-type"))
        .collect();
    assert_eq!(gets.len(), 1, "{gets:?}");
    let range = gets[0].header("range").expect("a ranged GET");
    let (from, to) = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .unwrap();
    let span = to.parse::<u64>().unwrap() - from.parse::<u64>().unwrap() + 1;
    assert!(span <= 128, "{range}");
    // verify_backup checks the content against the trailer and passes.
    opts.as_object_mut().unwrap().remove("if_changed");
    let verified = verify(&conn, "s3://bkt/big.db.gz", &opts);
    assert_eq!(verified["ok"], true, "{verified}");
}

#[test]
fn file_if_changed_skips_on_the_trailer_without_decompressing() {
    let dir = tempdir();
    let conn = wal_db(dir.path());
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    for suffix in ["zst", "gz"] {
        let pattern = out.join(format!("app-%Y%m%dT%H%M%S%f.db.{suffix}"));
        let first = to_file(&conn, &pattern, &json!({"if_changed": true}));
        let path = Path::new(first["destination"].as_str().unwrap()).to_path_buf();
        // Damage the body, not the trailer: decompressing it would fail, so a skip proves
        // the trailer alone was read.
        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 64] {
            *b ^= 0x5a;
        }
        fs::write(&path, &bytes).unwrap();
        let second = to_file(&conn, &pattern, &json!({"if_changed": true}));
        assert_eq!(second["skipped"], true, "{second}");
        assert_eq!(second["same_as"], first["destination"], "{second}");
        assert_eq!(second["sha256"], first["sha256"]);
    }
    // backup_list shows the trailer's sha256 for files too.
    for row in list_rows(&conn, out.to_str().unwrap(), None) {
        let stored = fs::read(out.join(&row.name)).unwrap();
        assert!(row.sha256.is_some(), "{row:?}");
        assert_eq!(row.sha256, trailer_of(&stored).map(|t| t.0), "{row:?}");
    }
}

/// Replaces the sha256 in a stored backup's trailer with zeros.
fn forge_trailer(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let len = if path.to_str().unwrap().ends_with(".zst") {
        ZSTD_TRAILER
    } else {
        GZIP_TRAILER
    };
    let payload_at = bytes.len() - len + if len == ZSTD_TRAILER { 8 } else { 16 };
    for b in &mut bytes[payload_at + 21..payload_at + 53] {
        *b = 0;
    }
    fs::write(path, bytes).unwrap();
    assert!(trailer_of(&fs::read(path).unwrap()).is_some());
}

#[test]
fn a_backup_whose_content_differs_from_its_trailer_is_refused_by_verify_and_restore() {
    let dir = tempdir();
    let conn = wal_db(dir.path());
    for name in ["forged.db.zst", "forged.db.gz"] {
        let backup = dir.path().join(name);
        to_file(&conn, &backup, &json!({}));
        forge_trailer(&backup);
        let url = backup.to_str().unwrap();
        let err = verify_err(&conn, url, &json!({}));
        assert!(err.contains(url) && err.contains("trailer"), "{err}");
        let dest = dir.path().join(format!("restored-{name}.db"));
        let err = restore_err(&conn, url, Some(&dest), &json!({}));
        assert!(err.contains(url) && err.contains("trailer"), "{err}");
        assert!(!dest.exists());
        assert_no_temp_files_except(dir.path(), &["app.db-shm", "app.db-wal"]);
    }
}

#[test]
fn old_backups_without_a_trailer_still_verify_list_and_compare() {
    let dir = tempdir();
    let conn = wal_db(dir.path());
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    // A backup as an older version wrote it: a plain database file compressed by the CLI.
    let raw = dir.path().join("plain.db");
    let report = to_file(&conn, &raw, &json!({}));
    for (name, cmd) in [("old.db.zst", "zstd"), ("old.db.gz", "gzip")] {
        let mut c = Command::new(cmd);
        c.arg("-c").arg(&raw);
        fs::write(out.join(name), run_ok(&mut c)).unwrap();
        assert!(trailer_of(&fs::read(out.join(name)).unwrap()).is_none());
        let verified = verify(&conn, out.join(name).to_str().unwrap(), &json!({}));
        assert_eq!(verified["ok"], true, "{verified}");
        assert_eq!(verified["sha256"], report["sha256"]);
    }
    let rows = list_rows(&conn, out.to_str().unwrap(), None);
    assert!(rows.iter().all(|r| r.sha256.is_none()), "{rows:?}");
    // if_changed still finds the same content by decompressing the newest.
    fs::remove_file(out.join("old.db.gz")).unwrap();
    let again = to_file(&conn, &out.join("old.db.zst"), &json!({"if_changed": true}));
    assert_eq!(again["skipped"], true, "{again}");
    fs::remove_file(&raw).unwrap();
}

#[test]
fn encrypted_backups_carry_no_trailer() {
    let dir = tempdir();
    let conn = wal_db(dir.path());
    let (_, public, _) = common::age::age_key(dir.path(), "key.txt");
    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    for name in ["secret.db.zst.age", "secret.db.gz.age"] {
        let dest = out.join(name);
        let report = to_file(&conn, &dest, &json!({"recipients": [public]}));
        let stored = fs::read(&dest).unwrap();
        assert!(trailer_of(&stored).is_none());
        let sha = report["sha256"].as_str().unwrap();
        // The plaintext hash is nowhere in the file, in hex or in bytes.
        assert!(!String::from_utf8_lossy(&stored).contains(sha));
        assert!(!stored.windows(8).any(|w| hex(w) == sha[..16]));
    }
    let rows = list_rows(&conn, out.to_str().unwrap(), None);
    assert!(rows.iter().all(|r| r.sha256.is_none()), "{rows:?}");
}

#[test]
fn s3_vacuum_and_pages_upload_in_one_pass_with_the_hash_in_the_trailer() {
    let (server, proxy, mut opts) = proxied_s3();
    let dir = tempdir();
    let (conn, expected) = big_db(dir.path());
    opts["part_size"] = (5u64 << 20).into();
    for method in ["vacuum", "pages"] {
        opts["method"] = method.into();
        for key in [format!("{method}.db.zst"), format!("{method}.db.gz")] {
            proxy.clear_requests();
            let report = to_s3(&conn, "bkt", &key, &opts);
            assert_eq!(report["method"], method, "{report}");
            assert!(report["parts"].as_u64().unwrap() >= 2, "{report}");
            // The multipart upload is created at the first part, before the hash is known:
            // no sha256 metadata on any request (it would have to wait for the hash).
            let requests = proxy.requests();
            assert!(requests.iter().any(|r| r.query.contains("uploads")));
            for r in requests {
                let signed = format!("{} {:?}", r.query, r.headers).to_ascii_lowercase();
                assert!(!signed.contains("x-amz-meta-sha256"), "{method}: {r:?}");
            }
            let object = server.object_path("bkt", &key);
            let (sha, size) = trailer_of(&fs::read(&object).unwrap()).expect("trailer");
            assert_eq!(sha, report["sha256"].as_str().unwrap());
            assert_eq!(size, report["bytes"].as_u64().unwrap());
            let restored = dir.path().join("r.db");
            fs::write(&restored, decompress_cli(&object)).unwrap();
            assert_eq!(sha256_hex(&fs::read(&restored).unwrap()), sha);
            assert_eq!(digest(&restored), expected);
            fs::remove_file(&restored).unwrap();
        }
    }
    // backup_list and if_changed find the hash in the trailer.
    opts.as_object_mut().unwrap().remove("method");
    let rows = list_rows(&conn, "s3://bkt", Some(&opts));
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r.sha256.is_some()), "{rows:?}");
    opts["if_changed"] = true.into();
    opts["method"] = "vacuum".into();
    let again = to_s3(&conn, "bkt", "vacuum.db.zst", &opts);
    assert_eq!(again["skipped"], true, "{again}");
}

#[test]
fn prune_knows_one_pass_s3_backups_by_their_trailer_as_backup_list_does() {
    let (_server, proxy, opts) = proxied_s3();
    let dir = tempdir();
    let conn = wal_db(dir.path());
    for i in 1..=3 {
        let report = to_s3(&conn, "bkt", &format!("app-{i}.db.zst"), &opts);
        assert!(report["stored_bytes"].as_u64().unwrap() > 1024, "{report}");
    }
    // No sha256 metadata: backup_list calls them backups from their trailers.
    let rows = list_rows(&conn, "s3://bkt", Some(&opts));
    assert!(rows.iter().all(|r| r.sha256.is_some()), "{rows:?}");
    let policy = merge(&opts, &json!({"keep_last": 1, "match": "app-*.db.zst"}));
    for dry_run in [true, false] {
        proxy.clear_requests();
        let report = prune(
            &conn,
            "s3://bkt",
            &merge(&policy, &json!({"dry_run": dry_run})),
        );
        assert_eq!(
            names_of(&report["deleted"]),
            ["app-2.db.zst", "app-1.db.zst"]
        );
        // Each one to delete is read once, a few bytes from its end (not its first 132 KiB).
        let gets: Vec<_> = proxy
            .requests()
            .into_iter()
            .filter(|r| r.method == "GET" && !r.query.contains("list-type"))
            .collect();
        assert_eq!(gets.len(), 2, "{gets:?}");
        for get in gets {
            let range = get.header("range").expect("a ranged GET");
            let (from, to) = range
                .strip_prefix("bytes=")
                .and_then(|r| r.split_once('-'))
                .unwrap();
            let (from, to) = (from.parse::<u64>().unwrap(), to.parse::<u64>().unwrap());
            assert!(from > 0 && to - from < 128, "{range}");
        }
    }
    let left = list_rows(&conn, "s3://bkt", Some(&opts));
    assert_eq!(left.len(), 1, "{left:?}");
}
