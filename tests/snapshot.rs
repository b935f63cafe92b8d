//! The `vacuum` snapshot writes through the batching VFS (`src/ffi/batched_vfs.rs`): the same
//! bytes as a plain `VACUUM INTO`, in a fraction of the write calls, and a copy that cannot be
//! written fails cleanly with nothing left behind.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::*;

/// A database with what makes a b-tree copy interesting: several tables and indexes, rows
/// spilling into overflow pages, and free pages left by a delete.
fn varied_db(path: &Path, page_size: u32, rows: u32) {
    sqlite3_plain(
        path,
        &format!(
            "PRAGMA page_size = {page_size};
             CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, body BLOB, n REAL);
             CREATE INDEX t_name ON t(name);
             CREATE TABLE kv(k TEXT PRIMARY KEY, v) WITHOUT ROWID;
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {rows})
             INSERT INTO t(name, body, n)
               SELECT hex(randomblob(8)), randomblob(abs(random()) % 9000), random() / 7.0 FROM c;
             INSERT INTO kv SELECT 'k' || id, name FROM t;
             DELETE FROM t WHERE id % 5 = 0;"
        ),
    )
    .assert_ok();
}

#[test]
fn the_copy_is_byte_for_byte_a_plain_vacuum_into() {
    let dir = tempfile::tempdir().unwrap();
    for page_size in [512, 4096, 65536] {
        let db = dir.path().join(format!("src-{page_size}.db"));
        varied_db(&db, page_size, 1500);
        let plain = dir.path().join(format!("plain-{page_size}.db"));
        sqlite3_plain(&db, &format!("VACUUM INTO {}", path_lit(&plain))).assert_ok();

        let ours = dir.path().join(format!("ours-{page_size}.db"));
        let out = sqlite3_cli(
            &db,
            &["-bail"],
            &format!("SELECT backup_to_file({});", path_lit(&ours)),
            None,
        );
        out.assert_ok();
        assert!(
            out.stdout.contains("\"method\":\"vacuum\""),
            "{}",
            out.stdout
        );
        let (a, b) = (fs::read(&plain).unwrap(), fs::read(&ours).unwrap());
        assert!(
            a.len() > 2_000_000,
            "page size {page_size}: {} bytes",
            a.len()
        );
        assert!(a == b, "page size {page_size}: the copies differ");
    }
}

/// A WAL database whose newest pages are still in the -wal (another connection keeps it open
/// and never checkpoints): the copy still equals a plain VACUUM INTO, byte for byte.
#[test]
fn a_wal_source_copies_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wal.db");
    varied_db(&db, 4096, 800);
    let writer = rusqlite::Connection::open(&db).unwrap();
    writer
        .execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
             INSERT INTO t(name, body, n) SELECT name || 'x', body, n FROM t;",
        )
        .unwrap();
    let wal = fs::metadata(dir.path().join("wal.db-wal")).unwrap().len();
    assert!(wal > 1_000_000, "{wal} bytes in the WAL");

    let plain = dir.path().join("plain.db");
    sqlite3_plain(&db, &format!("VACUUM INTO {}", path_lit(&plain))).assert_ok();
    let ours = dir.path().join("ours.db");
    sqlite3_cli(
        &db,
        &["-bail"],
        // A WAL database streams by default (#14): this compares VACUUM INTO's bytes.
        &format!(
            r#"SELECT backup_to_file({}, '{{"method": "vacuum"}}');"#,
            path_lit(&ours)
        ),
        None,
    )
    .assert_ok();
    assert!(fs::read(&plain).unwrap() == fs::read(&ours).unwrap());
    // ...and it holds what is only in the WAL.
    let rows: i64 = writer
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    let copied = sqlite3_plain(&ours, "SELECT count(*) FROM t;");
    assert_eq!(copied.assert_ok().stdout.trim(), rows.to_string());
}

/// Writes by the calling thread during one backup, from the kernel's per-thread counters: the
/// snapshot is written by this thread (VACUUM INTO runs here), the compressed file too.
#[test]
fn pages_are_written_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("src.db");
    varied_db(&db, 4096, 3000);
    let conn = open(&db);
    let writes = || -> u64 {
        let io = fs::read_to_string("/proc/thread-self/io").expect("per-thread I/O counters");
        io.lines()
            .find_map(|l| l.strip_prefix("syscw: "))
            .and_then(|n| n.trim().parse().ok())
            .expect("syscw")
    };
    let before = writes();
    let report = call_json(
        &conn,
        &format!(
            "SELECT backup_to_file({}, json_object('temp_dir', {}))",
            path_lit(dir.path().join("copy.db")),
            path_lit(dir.path())
        ),
    );
    let made = writes() - before;
    let pages = report["page_count"].as_u64().unwrap();
    // One write per page would be `pages` writes for the snapshot alone; 64 KiB batches are
    // 16 pages each. The copy itself (1 MiB blocks) adds a few.
    assert!(pages > 2000, "{pages} pages");
    eprintln!("{made} write calls for {pages} pages");
    assert!(made < pages / 8, "{made} write calls for {pages} pages");
}

/// A copy that cannot be written (here: the file size limit, as a full disk would) is an
/// error that says so, and leaves neither the snapshot nor its journal in temp_dir.
#[test]
fn a_snapshot_that_cannot_be_written_fails_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("src.db");
    varied_db(&db, 4096, 2000);
    let size = fs::metadata(&db).unwrap().len();
    let temp = dir.path().join("tmp");
    let dest = dir.path().join("dest");
    fs::create_dir_all(&temp).unwrap();
    fs::create_dir_all(&dest).unwrap();
    let before = digest(&db);

    // ulimit -f counts 1 KiB blocks; SIGXFSZ ignored so the write fails with EFBIG instead.
    let script = format!(
        "trap '' XFSZ; ulimit -f {}; exec {SQLITE3} -bail -cmd '.load {}' {} \
         \"SELECT backup_to_file('{}', json_object('temp_dir', '{}'))\"",
        size / 1024 / 2,
        ext_load_name(),
        db.display(),
        dest.join("b.db.gz").display(),
        temp.display()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("backup_to_file: VACUUM INTO from") && stderr.contains("failed"),
        "{stderr}"
    );
    assert_eq!(list(&temp), Vec::<String>::new());
    assert_eq!(list(&dest), Vec::<String>::new());
    assert_eq!(digest(&db), before);
}
