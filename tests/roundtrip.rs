//! Backups made with the extension (through rusqlite) decompress with the system tools and
//! Python to the same content as the source; verify_backup and restore_backup agree.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use serde_json::Value;

const SUFFIXES: &[(&str, &str)] = &[(".db.gz", "gzip"), (".db.zst", "zstd"), (".db", "none")];

/// Checks a backup_to_file report against the stored file: decompressed with the system CLI,
/// its sha256, length and pages match the report, it passes integrity_check, and its content
/// digest is `expected`. Returns the path of the decompressed copy (in `scratch`).
#[track_caller]
fn check_report(
    report: &Value,
    backup: &Path,
    compression: &str,
    method: &str,
    expected: &str,
    scratch: &Path,
) -> std::path::PathBuf {
    assert_eq!(report["destination"], backup.to_str().unwrap(), "{report}");
    assert_eq!(report["compression"], compression, "{report}");
    assert_eq!(report["method"], method, "{report}");
    assert_eq!(report["skipped"], false, "{report}");
    assert_eq!(report["parts"], 1, "{report}");
    assert!(report["elapsed_ms"].is_u64(), "{report}");

    let stored = fs::read(backup).unwrap();
    assert_eq!(report["stored_bytes"], stored.len() as u64, "{report}");
    let raw = decompress_cli(backup);
    if compression == "none" {
        assert_eq!(raw, stored);
    } else {
        assert!(raw.len() > stored.len(), "compression made it no smaller");
    }
    assert_eq!(report["bytes"], raw.len() as u64, "{report}");
    assert_eq!(report["sha256"], sha256_hex(&raw), "{report}");
    let page_size = report["page_size"].as_u64().unwrap();
    let page_count = report["page_count"].as_u64().unwrap();
    assert!(page_size >= 512 && page_size.is_power_of_two(), "{report}");
    assert_eq!(page_size * page_count, raw.len() as u64, "{report}");
    assert!(raw.starts_with(b"SQLite format 3\0"));

    let name = format!(
        "{}.decompressed.db",
        backup.file_name().unwrap().to_str().unwrap()
    );
    let copy = decompress_to(backup, scratch, &name);
    assert_eq!(integrity(&copy), "ok");
    assert_eq!(digest(&copy), expected, "content of {}", backup.display());
    copy
}

/// verify_backup's report agrees with the backup report.
#[track_caller]
fn check_verify(verified: &Value, backup: &Path, report: &Value) {
    assert_eq!(verified["location"], backup.to_str().unwrap(), "{verified}");
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["integrity"], "ok", "{verified}");
    assert_eq!(verified["tables"], 4, "{verified}"); // customers, orders, tags, sqlite_sequence
    for key in [
        "compression",
        "page_size",
        "page_count",
        "bytes",
        "stored_bytes",
        "sha256",
    ] {
        assert_eq!(verified[key], report[key], "{key}: {verified} vs {report}");
    }
}

/// A file database in each journal mode, with rows still in the WAL (not checkpointed) for
/// WAL mode; every codec; the system CLIs read the result; verify and restore agree.
fn file_db_round_trip(journal: Journal) {
    let dir = tempdir();
    let (src_dir, backups, tmp, out) = (
        dir.path().join("src"),
        dir.path().join("backups"),
        dir.path().join("tmp"),
        dir.path().join("out"),
    );
    for d in [&src_dir, &backups, &tmp, &out] {
        fs::create_dir(d).unwrap();
    }
    let src = src_dir.join("app.db");
    make_sample_db(&src, journal, 3000);
    let conn = open(&src);
    // Committed after the sample was made: in WAL mode these live only in app.db-wal.
    conn.execute_batch(
        "INSERT INTO orders (customer_id, total, status) VALUES (1, 1.5, 'open');
         DELETE FROM orders WHERE id % 97 = 0;
         UPDATE customers SET name = 'renamed' WHERE id = 3;",
    )
    .unwrap();
    if journal == Journal::Wal {
        let wal = fs::metadata(src_dir.join("app.db-wal")).unwrap().len();
        assert!(wal > 0, "the test wants rows in the WAL");
    }
    let expected = digest_conn(&conn, "main");
    let src_bytes_before = fs::read(&src).unwrap();

    for (suffix, compression) in SUFFIXES {
        let pattern = backups.join(format!("app-%Y%m%d-%H%M{suffix}"));
        let report = call_json(
            &conn,
            &format!(
                "SELECT backup_to_file({}, json_object('temp_dir', {}, 'now', '2026-03-07T14:05:09Z'))",
                path_lit(&pattern),
                path_lit(&tmp)
            ),
        );
        let backup = backups.join(format!("app-20260307-1405{suffix}"));
        // WAL databases stream by default (#14); rollback-journal files keep VACUUM INTO.
        let method = if journal == Journal::Wal {
            "stream"
        } else {
            "vacuum"
        };
        check_report(&report, &backup, compression, method, &expected, &out);

        let verified = call_json(
            &conn,
            &format!(
                "SELECT verify_backup({}, json_object('temp_dir', {}))",
                path_lit(&backup),
                path_lit(&tmp)
            ),
        );
        check_verify(&verified, &backup, &report);

        let restored = out.join(format!("restored{suffix}.db"));
        let r = call_json(
            &conn,
            &format!(
                "SELECT restore_backup({}, {})",
                path_lit(&backup),
                path_lit(&restored)
            ),
        );
        assert_eq!(r["restored"], restored.to_str().unwrap(), "{r}");
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["sha256"], report["sha256"], "{r}");
        assert_eq!(digest(&restored), expected);
        assert_eq!(integrity(&restored), "ok");
    }
    // Backing up read the source; it did not write it (WAL mode: not even a checkpoint).
    assert_eq!(
        fs::read(&src).unwrap(),
        src_bytes_before,
        "source file changed"
    );
    assert_eq!(digest_conn(&conn, "main"), expected);
    assert_eq!(
        list(&backups),
        [
            "app-20260307-1405.db",
            "app-20260307-1405.db.gz",
            "app-20260307-1405.db.zst"
        ]
    );
    assert_no_temp_files(&backups);
    assert_no_temp_files(&tmp);
    assert_eq!(list(&tmp), Vec::<String>::new());
    assert_no_temp_files_except(&out, &[]);
}

#[test]
fn wal_file_db_round_trips_in_every_codec() {
    file_db_round_trip(Journal::Wal);
}

#[test]
fn rollback_file_db_round_trips_in_every_codec() {
    file_db_round_trip(Journal::Rollback);
}

/// gzip is written as many members; gunzip and Python's gzip module read all of them.
#[test]
fn multi_member_gzip_reads_whole_in_gunzip_and_python() {
    let dir = tempdir();
    let src = dir.path().join("big.db");
    make_sample_db(&src, Journal::Rollback, 9000); // about 3 MB: several 1 MiB members
    let conn = open(&src);
    let backup = dir.path().join("big.db.gz");
    let report = call_json(
        &conn,
        &format!("SELECT backup_to_file({})", path_lit(&backup)),
    );
    let bytes = report["bytes"].as_u64().unwrap();
    assert!(bytes > 2 << 20, "want a database over 2 MiB, got {bytes}");
    let gunzipped = decompress_cli(&backup);
    assert_eq!(gunzipped.len() as u64, bytes);

    let out = python(
        r#"
import gzip, hashlib, sys, zlib
path = sys.argv[1]
data = gzip.open(path).read()
raw = open(path, "rb").read()
members = 0
while raw:
    d = zlib.decompressobj(wbits=31)
    d.decompress(raw)
    assert d.eof, "a member is truncated"
    raw = d.unused_data
    members += 1
print(len(data), hashlib.sha256(data).hexdigest(), members)
"#,
        &[backup.to_str().unwrap()],
    );
    out.assert_ok();
    let fields: Vec<&str> = out.stdout.split_whitespace().collect();
    assert_eq!(fields[0], bytes.to_string(), "python read {}", out.stdout);
    assert_eq!(fields[1], sha256_hex(&gunzipped));
    assert_eq!(fields[1], report["sha256"]);
    let members: u64 = fields[2].parse().unwrap();
    // And one last, empty member: the trailer with the sha256 (#14).
    let expected_members = bytes.div_ceil(1 << 20) + 1;
    assert_eq!(
        members, expected_members,
        "one member per MiB, and the trailer"
    );
}

/// `:memory:` has no file: method "stream" is chosen (#14; before it, "pages"), and "vacuum"
/// is refused clearly.
#[test]
fn memory_db_uses_pages_automatically() {
    let dir = tempdir();
    let conn = open_memory();
    fill_sample(&conn, 500);
    let expected = digest_conn(&conn, "main");
    for (suffix, compression) in SUFFIXES {
        let backup = dir.path().join(format!("mem{suffix}"));
        let report = call_json(
            &conn,
            &format!(
                "SELECT backup_to_file({}, json_object('temp_dir', {}))",
                path_lit(&backup),
                path_lit(dir.path())
            ),
        );
        check_report(
            &report,
            &backup,
            compression,
            "stream",
            &expected,
            dir.path(),
        );
        let verified = call_json(
            &conn,
            &format!("SELECT verify_backup({})", path_lit(&backup)),
        );
        check_verify(&verified, &backup, &report);
    }
    let err = call_err(
        &conn,
        &format!(
            "SELECT backup_to_file({}, '{{\"method\": \"vacuum\"}}')",
            path_lit(dir.path().join("v.db.gz"))
        ),
    );
    assert!(
        err.starts_with("backup_to_file: method 'vacuum' needs a database file"),
        "{err}"
    );
    assert!(!dir.path().join("v.db.gz").exists());
    assert_no_temp_files(dir.path());
    assert_alive(&conn);
}

/// option schema backs up an ATTACHed database, not main; an unknown schema is an error.
#[test]
fn attached_schema_is_backed_up_with_option_schema() {
    let dir = tempdir();
    let archive = dir.path().join("archive.db");
    make_sample_db(&archive, Journal::Wal, 800);
    let main = dir.path().join("main.db");
    let conn = open(&main);
    conn.execute_batch("CREATE TABLE other (x); INSERT INTO other VALUES (42);")
        .unwrap();
    conn.execute(&format!("ATTACH {} AS arch", path_lit(&archive)), [])
        .unwrap();
    let expected = digest_conn(&conn, "arch");
    assert_ne!(expected, digest_conn(&conn, "main"));

    let backups = dir.path().join("backups");
    fs::create_dir(&backups).unwrap();
    for (method, option) in [
        ("stream", ""),
        ("vacuum", ", 'method', 'vacuum'"),
        ("pages", ", 'method', 'pages'"),
    ] {
        let backup = backups.join(format!("arch-{method}.db.zst"));
        let report = call_json(
            &conn,
            &format!(
                "SELECT backup_to_file({}, json_object('schema', 'arch'{option}))",
                path_lit(&backup)
            ),
        );
        check_report(&report, &backup, "zstd", method, &expected, dir.path());
    }
    // The temp schema has no file either: streamed from this connection.
    conn.execute_batch("CREATE TEMP TABLE t (v); INSERT INTO temp.t VALUES ('temp row');")
        .unwrap();
    let temp_backup = backups.join("temp.db");
    let report = call_json(
        &conn,
        &format!(
            "SELECT backup_to_file({}, '{{\"schema\": \"temp\"}}')",
            path_lit(&temp_backup)
        ),
    );
    assert_eq!(report["method"], "stream");
    let t = rusqlite::Connection::open(&temp_backup).unwrap();
    let v: String = t.query_row("SELECT v FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(v, "temp row");

    let err = call_err(
        &conn,
        &format!(
            "SELECT backup_to_file({}, '{{\"schema\": \"nope\"}}')",
            path_lit(backups.join("nope.db"))
        ),
    );
    assert!(err.starts_with("backup_to_file: "), "{err}");
    assert!(err.contains("'nope'"), "{err}");
    assert!(!backups.join("nope.db").exists());
    assert_no_temp_files(&backups);
}

/// restore_backup(location) replaces the calling connection's main database; inside an
/// open transaction it is refused and changes nothing.
#[test]
fn restore_into_connection_replaces_content() {
    let dir = tempdir();
    let src = dir.path().join("src.db");
    make_sample_db(&src, Journal::Wal, 600);
    let expected = digest(&src);
    let backup = dir.path().join("src.db.gz");
    call_json(
        &open(&src),
        &format!("SELECT backup_to_file({})", path_lit(&backup)),
    );

    for journal in [Journal::Wal, Journal::Rollback] {
        let target = dir.path().join(format!("target-{journal:?}.db"));
        let conn = open(&target);
        let mode = if journal == Journal::Wal {
            "wal"
        } else {
            "delete"
        };
        conn.query_row(&format!("PRAGMA journal_mode = {mode}"), [], |_| Ok(()))
            .unwrap();
        conn.execute_batch("CREATE TABLE old (x); INSERT INTO old VALUES (1), (2);")
            .unwrap();
        let before = digest_conn(&conn, "main");

        conn.execute_batch("BEGIN; INSERT INTO old VALUES (3);")
            .unwrap();
        let err = call_err(
            &conn,
            &format!("SELECT restore_backup({})", path_lit(&backup)),
        );
        assert!(err.starts_with("restore_backup: "), "{err}");
        assert!(err.contains("transaction"), "{err}");
        conn.execute_batch("ROLLBACK").unwrap();
        assert_eq!(digest_conn(&conn, "main"), before);

        let r = call_json(
            &conn,
            &format!("SELECT restore_backup({})", path_lit(&backup)),
        );
        assert_eq!(r["restored"], "main", "{r}");
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(digest_conn(&conn, "main"), expected);
        drop(conn);
        // Another connection sees the restored content in the file too.
        assert_eq!(digest(&target), expected);
        assert_eq!(integrity(&target), "ok");
    }

    // NULL dest is the same as no dest.
    let conn = open_memory();
    let r = call_json(
        &conn,
        &format!("SELECT restore_backup({}, NULL)", path_lit(&backup)),
    );
    assert_eq!(r["restored"], "main");
    assert_eq!(digest_conn(&conn, "main"), expected);
}

/// method "pages" on a file database, WAL and rollback: same content, and verifying or
/// restoring that backup leaves nothing behind (no -wal/-shm from opening it).
fn pages_on_file(journal: Journal) {
    let dir = tempdir();
    let src = dir.path().join("app.db");
    make_sample_db(&src, journal, 700);
    let conn = open(&src);
    conn.execute_batch("INSERT INTO orders (customer_id, total) VALUES (2, 9.5)")
        .unwrap();
    let expected = digest_conn(&conn, "main");
    let backups = dir.path().join("backups");
    let tmp = dir.path().join("tmp");
    let out = dir.path().join("out");
    for d in [&backups, &tmp, &out] {
        fs::create_dir(d).unwrap();
    }
    for (suffix, compression) in SUFFIXES {
        let backup = backups.join(format!("pages{suffix}"));
        let report = call_json(
            &conn,
            &format!(
                "SELECT backup_to_file({}, json_object('method', 'pages', 'temp_dir', {}))",
                path_lit(&backup),
                path_lit(&tmp)
            ),
        );
        check_report(&report, &backup, compression, "pages", &expected, &out);
        let verified = call_json(
            &conn,
            &format!(
                "SELECT verify_backup({}, json_object('temp_dir', {}))",
                path_lit(&backup),
                path_lit(&tmp)
            ),
        );
        check_verify(&verified, &backup, &report);
        assert_no_temp_files(&tmp);
        let restored = out.join(format!("restored{suffix}"));
        call_json(
            &conn,
            &format!(
                "SELECT restore_backup({}, {})",
                path_lit(&backup),
                path_lit(&restored)
            ),
        );
        assert_no_temp_files(&out);
        assert_eq!(digest(&restored), expected);
    }
    assert_no_temp_files(&backups);
}

#[test]
fn pages_method_on_wal_file_db() {
    pages_on_file(Journal::Wal);
}

#[test]
fn pages_method_on_rollback_file_db() {
    pages_on_file(Journal::Rollback);
}
