//! Method `stream` (#14): the pages go from the backup API to compression through a page sink,
//! with no copy of the database on disk. A WAL database larger than its `temp_dir`, deleted
//! rows that must not live on, rollback-journal writers not held up by compression, other
//! processes writing, memory/temp/attached schemas, and `kill -9` mid-stream.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const STREAM: &str = r#""method": "stream""#;

/// The options `{<opts>}`.
fn options(opts: &str) -> serde_json::Value {
    serde_json::from_str(&format!("{{{opts}}}")).unwrap()
}

/// `backup_to_file(dest, '{<opts>}')` on `conn`.
fn backup(conn: &rusqlite::Connection, dest: &Path, opts: &str) -> serde_json::Value {
    calls::to_file(conn, dest, &options(opts))
}

/// The error of `backup_to_file(dest, '{<opts>}')` on `conn`.
fn backup_err(conn: &rusqlite::Connection, dest: &Path, opts: &str) -> String {
    calls::to_file_err(conn, dest, &options(opts))
}

/// A stream that outlasts its snapshot (gzip level 9 on one thread), temp files in `temp_dir`.
fn slow_stream(temp_dir: &Path) -> String {
    format!(
        r#"{STREAM}, "level": 9, "threads": 1, "temp_dir": {}"#,
        serde_json::json!(temp_dir)
    )
}

/// A new directory with database `name` in journal mode `journal`: table `b`, `rows` random
/// blobs of 100 kB.
fn blob_db(
    name: &str,
    journal: &str,
    rows: u32,
) -> (tempfile::TempDir, PathBuf, rusqlite::Connection) {
    let dir = tempdir();
    let db = dir.path().join(name);
    let conn = open(&db);
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = {journal};
         CREATE TABLE b(id INTEGER PRIMARY KEY, data BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
         INSERT INTO b SELECT i, randomblob(100000) FROM n;"
    ))
    .unwrap();
    (dir, db, conn)
}

/// The stored backup decompressed, its sha256 equal to the reported one, integrity ok.
#[track_caller]
fn check_restorable(report: &serde_json::Value, backup: &Path, dir: &Path) -> std::path::PathBuf {
    let restored = decompress_to(backup, dir, "restored.db");
    let bytes = fs::read(&restored).unwrap();
    assert_eq!(
        sha256_hex(&bytes),
        report["sha256"].as_str().unwrap(),
        "{report}"
    );
    assert_eq!(integrity(&restored), "ok");
    restored
}

/// Mounts a tmpfs of `size` on a new directory; unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// None (the test is skipped) when not root.
    fn mount(size: &str) -> Option<Tmpfs> {
        if !is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempdir();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs");
        Some(Tmpfs(dir))
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_wal_database_larger_than_its_temp_dir_streams_and_restores_equal() {
    let Some(tmpfs) = Tmpfs::mount("64m") else {
        return;
    };
    // 150 MiB of random blobs, in WAL mode with another connection's data in the WAL.
    let (dir, _, conn) = blob_db("big.db", "WAL", 1500);
    let temp = format!(r#""temp_dir": {}"#, serde_json::json!(tmpfs.path()));

    // What a temp copy needs: more room than the tmpfs has.
    let err = backup_err(
        &conn,
        &dir.path().join("vacuum.db.zst"),
        &format!(r#""method": "vacuum", {temp}"#),
    );
    assert!(err.contains("full") || err.contains("disk"), "{err}");
    assert_eq!(list(tmpfs.path()), Vec::<String>::new());

    let dest = dir.path().join("big.db.zst");
    let report = backup(&conn, &dest, &format!(r#"{STREAM}, "level": 1, {temp}"#));
    assert_eq!(report["method"], "stream", "{report}");
    assert_eq!(report["spilled_bytes"], 0, "{report}");
    assert!(report["bytes"].as_u64().unwrap() > 150_000_000, "{report}");
    assert_eq!(list(tmpfs.path()), Vec::<String>::new());
    let restored = check_restorable(&report, &dest, dir.path());
    assert_eq!(digest(&restored), digest_conn(&conn, "main"));
    fs::remove_file(restored).unwrap();
}

#[test]
fn deleted_rows_do_not_live_on_in_the_stream() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let conn = open(&db);
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA secure_delete = OFF;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         CREATE INDEX t_v ON t(v);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
         INSERT INTO t SELECT i, 'keep-' || i FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40)
         INSERT INTO t SELECT 100000 + i, 'GONE-MARKER-' || i FROM n;
         DELETE FROM t WHERE id > 100000;
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .unwrap();
    let free: i64 = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap();
    assert_eq!(free, 0, "the delete freed space inside pages only");
    let contains = |bytes: &[u8]| bytes.windows(11).any(|w| w == b"GONE-MARKER");
    assert!(
        contains(&fs::read(&db).unwrap()),
        "the file keeps the deleted rows"
    );

    // A plain page copy keeps them: this is what the stream must not do.
    let pages = dir.path().join("pages.db");
    backup(&conn, &pages, r#""method": "pages""#);
    assert!(contains(&fs::read(&pages).unwrap()));

    for name in ["s.db", "s.db.gz", "s.db.zst"] {
        let dest = dir.path().join(name);
        let report = backup(&conn, &dest, STREAM);
        assert_eq!(report["method"], "stream", "{report}");
        let plain = decompress_cli(&dest);
        assert!(!contains(&plain), "{name}: a deleted row is in the backup");
        let restored = check_restorable(&report, &dest, dir.path());
        assert_eq!(digest(&restored), digest_conn(&conn, "main"));
    }
}

#[test]
fn free_pages_are_zeroed_in_the_stream() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let conn = open(&db);
    // 1 KiB pages, rows of three overflow pages: the delete frees ~600 pages, on three trunks.
    conn.execute_batch(
        "PRAGMA page_size = 1024;
         PRAGMA journal_mode = WAL;
         PRAGMA secure_delete = OFF;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)
         INSERT INTO t SELECT i, CASE WHEN i % 2 = 0 THEN 'FREED-MARKER' ELSE 'kept-row-ok!' END
           || hex(randomblob(1500)) FROM n;
         DELETE FROM t WHERE id % 2 = 0;",
    )
    .unwrap();
    let free: i64 = conn
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap();
    assert!(free > 500, "{free} free pages");
    let contains = |bytes: &[u8]| bytes.windows(12).any(|w| w == b"FREED-MARKER");
    let pages = dir.path().join("pages.db");
    backup(&conn, &pages, r#""method": "pages""#);
    assert!(
        contains(&fs::read(&pages).unwrap()),
        "a page copy keeps free pages"
    );

    let dest = dir.path().join("f.db.zst");
    let report = backup(&conn, &dest, STREAM);
    assert_eq!(report["method"], "stream", "{report}");
    assert!(report.get("fallback").is_none(), "{report}");
    assert!(
        !contains(&decompress_cli(&dest)),
        "a freed row is in the backup"
    );
    let restored = check_restorable(&report, &dest, dir.path());
    assert_eq!(digest(&restored), digest_conn(&conn, "main"));
    let still_free: i64 = rusqlite::Connection::open(&restored)
        .unwrap()
        .query_row("PRAGMA freelist_count", [], |r| r.get(0))
        .unwrap();
    assert_eq!(still_free, free, "the free pages are there, zeroed");
}

#[test]
fn rollback_mode_spills_instead_of_holding_writers_back() {
    let (dir, db, conn) = blob_db("rb.db", "DELETE", 400);
    let temp = tempdir();
    // A writer in another process, waiting for our read lock: it commits long before slow
    // gzip compression (level 9, one thread) ends.
    let writer_db = db.clone();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(150));
        let out = Command::new(SQLITE3)
            .arg(&writer_db)
            .arg("PRAGMA busy_timeout = 30000; INSERT INTO b(data) VALUES (randomblob(10));")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(out.success());
        Instant::now()
    });
    let dest = dir.path().join("rb.db.gz");
    let report = backup(&conn, &dest, &slow_stream(temp.path()));
    let returned = Instant::now();
    let committed = writer.join().unwrap();
    assert!(
        committed < returned,
        "the writer waited for compression: {report}"
    );
    assert!(report["spilled_bytes"].as_u64().unwrap() > 0, "{report}");
    let t = &report["timings_ms"];
    assert!(
        t["snapshot"].as_u64().unwrap() < t["compress"].as_u64().unwrap(),
        "{report}"
    );
    assert_eq!(
        list(temp.path()),
        Vec::<String>::new(),
        "the spill file has no name"
    );
    let restored = check_restorable(&report, &dest, dir.path());
    let rows: i64 = rusqlite::Connection::open(&restored)
        .unwrap()
        .query_row("SELECT count(*) FROM b", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        rows, 400,
        "the snapshot is the database before the writer's commit"
    );
}

#[test]
fn other_processes_writing_during_a_wal_stream() {
    let dir = tempdir();
    let db = dir.path().join("w.db");
    let conn = open(&db);
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
         INSERT INTO acct SELECT i, 100 FROM n;
         CREATE TABLE pad(x BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
         INSERT INTO pad SELECT randomblob(100000) FROM n;",
    )
    .unwrap();
    // Transfers keep the total at 100000 in every committed state.
    let script: String = (0..400)
        .map(|i| {
            format!(
                "BEGIN; UPDATE acct SET bal = bal - 1 WHERE id = {a}; \
                 UPDATE acct SET bal = bal + 1 WHERE id = {b}; COMMIT;\n",
                a = i % 1000 + 1,
                b = (i * 7) % 1000 + 1
            )
        })
        .collect();
    let mut transfers = Command::new(SQLITE3)
        .arg(&db)
        .arg(format!("PRAGMA busy_timeout = 10000;\n{script}"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    for i in 0..3 {
        let dest = dir.path().join(format!("w{i}.db.zst"));
        let report = backup(&conn, &dest, STREAM);
        assert_eq!(report["method"], "stream", "{report}");
        let restored = check_restorable(&report, &dest, dir.path());
        let total: i64 = rusqlite::Connection::open(&restored)
            .unwrap()
            .query_row("SELECT sum(bal) FROM acct", [], |r| r.get(0))
            .unwrap();
        assert_eq!(total, 100_000);
    }
    assert!(transfers.wait().unwrap().success());
}

#[test]
fn memory_temp_and_attached_schemas_stream() {
    let dir = tempdir();
    let conn = open_memory();
    let other = dir.path().join("other.db");
    make_sample_db(&other, Journal::Wal, 300);
    conn.execute_batch(&format!(
        "CREATE TABLE m(a, b); INSERT INTO m VALUES (1, 'one'), (2, randomblob(5000));
         CREATE TEMP TABLE tt(x); INSERT INTO tt VALUES ('temp row');
         ATTACH {} AS aux;",
        path_lit(&other)
    ))
    .unwrap();
    for schema in ["main", "temp", "aux"] {
        let dest = dir.path().join(format!("{schema}.db.zst"));
        let report = backup(&conn, &dest, &format!(r#"{STREAM}, "schema": "{schema}""#));
        assert_eq!(report["method"], "stream", "{schema}: {report}");
        let restored = check_restorable(&report, &dest, dir.path());
        assert_eq!(digest(&restored), digest_conn(&conn, schema), "{schema}");
    }
    assert_alive(&conn);
    assert_no_temp_files_except(dir.path(), &["other.db-wal", "other.db-shm"]);
}

#[test]
fn kill_9_mid_stream_leaves_no_temp_file_and_the_next_call_cleans_up() {
    let (_dir, db, conn) = blob_db("k.db", "WAL", 400);
    let temp = tempdir();
    let out = tempdir();
    let dest = out.path().join("k.db.gz");
    let mut child = Command::new(SQLITE3)
        .arg("-cmd")
        .arg(format!(".load {}", ext_load_name()))
        .arg(&db)
        .arg(calls::to_file_sql(
            &dest,
            &options(&slow_stream(temp.path())),
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Mid-stream: the process has the (unnamed) staged backup open in the destination.
    let writing = || {
        fs::read_dir(format!("/proc/{}/fd", child.id()))
            .map(|fds| {
                fds.flatten().any(|fd| {
                    fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(out.path()))
                })
            })
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !writing() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(writing(), "the backup started writing");
    assert_eq!(
        list(temp.path()),
        Vec::<String>::new(),
        "no temp file in WAL mode"
    );
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success(), "killed before the end");
    assert_eq!(list(temp.path()), Vec::<String>::new());
    assert!(!dest.exists());
    // The next call removes the dead process's staged file.
    let report = backup(&conn, &out.path().join("next.db"), STREAM);
    assert_eq!(report["method"], "stream");
    assert_eq!(list(out.path()), vec!["next.db".to_string()]);
}

#[test]
fn s3_multipart_stream_records_the_restored_sha256_and_if_changed_skips() {
    let server = common::s3server::S3Server::start();
    server.create_bucket("bkt");
    let dir = tempdir();
    let (conn, expected) = big_db(dir.path());
    conn.execute_batch("PRAGMA journal_mode = WAL").unwrap();
    let mut opts = server.options_json();
    opts["method"] = "stream".into();
    opts["part_size"] = (5u64 << 20).into();
    opts["if_changed"] = true.into();
    let call = |key: &str| {
        call_json(
            &conn,
            &format!(
                "SELECT backup_to_s3('s3://bkt', {}, {})",
                lit(key),
                lit(opts.to_string())
            ),
        )
    };
    let first = call("big.db.zst");
    assert_eq!(first["method"], "stream", "{first}");
    assert!(first["parts"].as_u64().unwrap() >= 2, "{first}");
    assert_eq!(first["skipped"], false);
    let stored = decompress_cli(&server.object_path("bkt", "big.db.zst"));
    assert_eq!(sha256_hex(&stored), first["sha256"].as_str().unwrap());
    let restored = dir.path().join("r.db");
    fs::write(&restored, stored).unwrap();
    assert_eq!(digest(&restored), expected);
    // The recorded sha256 lets the unchanged database be skipped without compressing.
    let second = call("big.db.zst");
    assert_eq!(second["skipped"], true, "{second}");
    assert_eq!(second["sha256"], first["sha256"]);
    assert_eq!(second["same_as"], "s3://bkt/big.db.zst", "{second}");
}

#[test]
fn the_default_for_wal_and_memory_is_the_stream_which_needs_no_app_definitions() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let conn = open(&db);
    conn.create_collation("APPCOLL", |a: &str, b: &str| {
        a.to_lowercase().cmp(&b.to_lowercase())
    })
    .unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE p(id INTEGER PRIMARY KEY, name TEXT);
         CREATE INDEX p_name ON p(name COLLATE APPCOLL);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
         INSERT INTO p(name) SELECT 'Name ' || i FROM n;",
    )
    .unwrap();
    let dest = dir.path().join("app.db.zst");
    let report = backup(&conn, &dest, "");
    assert_eq!(report["method"], "stream", "{report}");
    assert!(report.get("fallback").is_none(), "{report}");
    // (Checked without APPCOLL: integrity_check would need it.)
    let plain = decompress_cli(&dest);
    assert_eq!(sha256_hex(&plain), report["sha256"].as_str().unwrap());
    assert_eq!(plain.len() as u64, report["bytes"].as_u64().unwrap());

    let memory = open_memory();
    memory
        .execute_batch("CREATE TABLE m(x); INSERT INTO m VALUES (1);")
        .unwrap();
    let report = backup(&memory, &dir.path().join("m.db"), "");
    assert_eq!(report["method"], "stream", "{report}");

    // A rollback-journal file keeps VACUUM INTO (which, lacking APPCOLL, falls back).
    conn.execute_batch("PRAGMA journal_mode = DELETE").unwrap();
    let report = backup(&conn, &dir.path().join("rb.db"), "");
    assert_eq!(report["method"], "pages", "{report}");
    assert!(
        report["fallback"]
            .as_str()
            .unwrap()
            .starts_with("VACUUM INTO failed"),
        "{report}"
    );
}

#[test]
fn an_interrupt_mid_stream_stores_nothing() {
    let (_dir, _, conn) = blob_db("i.db", "WAL", 600);
    let out = tempdir();
    let handle = conn.get_interrupt_handle();
    let interrupter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        handle.interrupt();
        Instant::now()
    });
    let err = backup_err(
        &conn,
        &out.path().join("i.db.gz"),
        r#""level": 9, "threads": 1"#,
    );
    let ended = Instant::now();
    let sent = interrupter.join().unwrap();
    assert!(
        err.ends_with("interrupted: stopped before finishing, nothing was stored or changed"),
        "{err}"
    );
    assert!(
        ended.duration_since(sent) < Duration::from_secs(1),
        "{:?}",
        ended.duration_since(sent)
    );
    assert_eq!(list(out.path()), Vec::<String>::new());
    assert_alive(&conn);
}

#[test]
fn a_full_temp_dir_while_spilling_fails_clearly_and_leaves_nothing() {
    let Some(tmpfs) = Tmpfs::mount("1m") else {
        return;
    };
    let (dir, _, conn) = blob_db("rb.db", "DELETE", 300);
    let dest = dir.path().join("rb.db.gz");
    let err = backup_err(&conn, &dest, &slow_stream(tmpfs.path()));
    assert!(err.contains("cannot write the spill file"), "{err}");
    assert!(
        err.contains("disk is full") || err.contains("No space"),
        "{err}"
    );
    assert_eq!(list(tmpfs.path()), Vec::<String>::new());
    assert!(!dest.exists());
    assert_no_temp_files(dir.path());
    assert_alive(&conn);
}

/// Rows shrunk by 1-3 bytes leave their old last bytes in fragments inside the page (no
/// freeblock holds fewer than 4 bytes): with secure_delete off a page copy keeps them.
#[test]
fn fragments_inside_pages_are_zeroed_in_the_stream() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let conn = open(&db);
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA secure_delete = OFF;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
         INSERT INTO t SELECT i, 'row-' || i || '-' || substr(hex(zeroblob(40)), 1, 40 + i % 7)
           || 'QZJ' FROM n;
         UPDATE t SET v = substr(v, 1, length(v) - 3);",
    )
    .unwrap();
    let contains = |bytes: &[u8]| bytes.windows(3).any(|w| w == b"QZJ");
    let pages = dir.path().join("pages.db");
    backup(&conn, &pages, r#""method": "pages""#);
    assert!(
        contains(&fs::read(&pages).unwrap()),
        "a page copy keeps the fragments"
    );
    // The leaf pages' headers count fragment bytes (byte 7).
    let copy = fs::read(&pages).unwrap();
    let fragmented: usize = copy
        .chunks(4096)
        .skip(1)
        .filter(|p| p[0] == 13)
        .map(|p| p[7] as usize)
        .sum();
    assert!(fragmented > 100, "{fragmented} fragment bytes");
    for name in ["s.db", "s.db.zst"] {
        let dest = dir.path().join(name);
        let report = backup(&conn, &dest, STREAM);
        assert_eq!(report["method"], "stream", "{report}");
        assert!(
            !contains(&decompress_cli(&dest)),
            "{name}: the shrunk rows' old bytes are in the backup"
        );
        let restored = check_restorable(&report, &dest, dir.path());
        assert_eq!(digest(&restored), digest_conn(&conn, "main"));
        fs::remove_file(restored).unwrap();
    }
}

/// A row updated to a shorter one that still overflows gets back, in the same transaction, the
/// overflow pages it freed: their content is read, and the end of the chain's last page keeps
/// the old row's bytes (secure_delete off). The stream zeroes the unused end.
#[test]
fn the_unused_end_of_a_rows_last_overflow_page_is_zeroed_in_the_stream() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let conn = open(&db);
    // 1 KiB pages: a 2023-byte value keeps 103 bytes in its cell and overflows into two pages,
    // the second using 900 of its 1020 bytes.
    conn.execute_batch(
        "PRAGMA page_size = 1024;
         PRAGMA journal_mode = WAL;
         PRAGMA secure_delete = OFF;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
         INSERT INTO t SELECT i, CAST(replace(hex(zeroblob(400)), '00', 'TAIL-MARKER') AS BLOB)
           FROM n;
         UPDATE t SET v = zeroblob(2021) || CAST('ok' AS BLOB);
         -- A table of that name hides the dbstat module the stream asks.
         CREATE TABLE dbstat(x);",
    )
    .unwrap();
    let contains = |bytes: &[u8]| bytes.windows(11).any(|w| w == b"TAIL-MARKER");
    let pages = dir.path().join("pages.db");
    backup(&conn, &pages, r#""method": "pages""#);
    assert!(
        contains(&fs::read(&pages).unwrap()),
        "a page copy keeps the old bytes"
    );
    for name in ["s.db", "s.db.gz"] {
        let dest = dir.path().join(name);
        let report = backup(&conn, &dest, STREAM);
        assert_eq!(report["method"], "stream", "{report}");
        assert!(report.get("fallback").is_none(), "{report}");
        assert!(
            !contains(&decompress_cli(&dest)),
            "{name}: the old row's bytes are in the backup"
        );
        let restored = check_restorable(&report, &dest, dir.path());
        assert_eq!(digest(&restored), digest_conn(&conn, "main"));
        fs::remove_file(restored).unwrap();
    }
}

/// An auto-vacuum database that shrank keeps, on its pointer-map page, the entries of the
/// pages it truncated: the stream zeroes what no page of the database uses.
#[test]
fn pointer_map_entries_past_the_end_are_zeroed_in_the_stream() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let conn = open(&db);
    conn.execute_batch(
        "PRAGMA page_size = 1024;
         PRAGMA auto_vacuum = FULL;
         PRAGMA journal_mode = WAL;
         PRAGMA secure_delete = OFF;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100)
         INSERT INTO t SELECT i, randomblob(2000) FROM n;
         DELETE FROM t WHERE id > 10;",
    )
    .unwrap();
    // Page 2 is the pointer map: 5 bytes for each page after it.
    let past_the_end = |file: &[u8]| {
        let pages = file.len() / 1024;
        file[1024 + 5 * (pages - 2)..2048]
            .iter()
            .filter(|&&b| b != 0)
            .count()
    };
    let pages = dir.path().join("pages.db");
    backup(&conn, &pages, r#""method": "pages""#);
    assert!(
        past_the_end(&fs::read(&pages).unwrap()) > 0,
        "a page copy keeps them"
    );
    let dest = dir.path().join("s.db");
    let report = backup(&conn, &dest, STREAM);
    assert_eq!(report["method"], "stream", "{report}");
    let stored = fs::read(&dest).unwrap();
    assert_eq!(past_the_end(&stored), 0);
    assert_eq!(
        stored[1024..1024 + 5 * 8],
        fs::read(&pages).unwrap()[1024..1024 + 5 * 8]
    );
    let restored = check_restorable(&report, &dest, dir.path());
    assert_eq!(digest(&restored), digest_conn(&conn, "main"));
}
