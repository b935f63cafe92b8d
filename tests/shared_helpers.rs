//! Helpers that several functions share decide the same way everywhere (issue #13 item 2):
//! "database is locked" is SQLite's result code, never text that a name can imitate, and
//! `backup_list` and `backup_prune` agree on which backup is the newest.

mod common;

use std::fs::{self, File};
use std::time::SystemTime;

use common::*;
use rusqlite::Connection;

/// A collation whose name reads like SQLite's busy message. VACUUM INTO's own connection lacks
/// it ("no such collation sequence: database is locked"): the backup falls back to the page
/// copy, as for any other missing collation, and is not reported as a locked database.
#[test]
fn a_name_that_reads_like_busy_is_not_busy() {
    let dir = tempdir();
    let conn = Connection::open(dir.path().join("app.db")).unwrap();
    conn.create_collation("database is locked", |a: &str, b: &str| a.cmp(b))
        .unwrap();
    load(&conn);
    conn.execute_batch(
        r#"CREATE TABLE t (name TEXT);
           CREATE INDEX t_name ON t(name COLLATE "database is locked");
           INSERT INTO t VALUES ('a'), ('b');"#,
    )
    .unwrap();
    let backup = dir.path().join("app.db.gz");
    let r = call_json(
        &conn,
        &format!(
            "SELECT backup_to_file({}, '{{\"busy_timeout_ms\": 100}}')",
            path_lit(&backup)
        ),
    );
    assert_eq!(r["method"], "pages", "{r}");
    let why = r["fallback"].as_str().unwrap_or_else(|| panic!("{r}"));
    assert!(
        why.contains("no such collation sequence: database is locked"),
        "{why}"
    );
    assert!(backup.is_file());
    assert_no_temp_files(dir.path());
}

/// Backups with the same time (taken in the same second, or copied with `cp -p`): the first row
/// of `backup_list` is the one `keep_last: 1` keeps, and both list in the same order.
#[test]
fn backup_list_and_prune_agree_on_equal_times() {
    let dir = tempdir();
    let backups = dir.path().join("backups");
    fs::create_dir(&backups).unwrap();
    let conn = open(dir.path().join("app.db"));
    conn.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    let same = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_790_000_000);
    for name in ["db-a.gz", "db-c.gz", "db-b.gz"] {
        let path = backups.join(name);
        call_json(
            &conn,
            &format!("SELECT backup_to_file({})", path_lit(&path)),
        );
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(same)
            .unwrap();
    }
    let listed: Vec<String> = conn
        .prepare(&format!(
            "SELECT name FROM backup_list({})",
            path_lit(&backups)
        ))
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let plan = call_json(
        &conn,
        &format!(
            r#"SELECT backup_prune({}, '{{"keep_last": 1, "dry_run": true}}')"#,
            path_lit(&backups)
        ),
    );
    let names = |key: &str| -> Vec<String> {
        plan[key]
            .as_array()
            .unwrap_or_else(|| panic!("{plan}"))
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    };
    let mut pruned = names("kept");
    pruned.extend(names("deleted"));
    assert_eq!(listed, ["db-c.gz", "db-b.gz", "db-a.gz"], "{plan}");
    assert_eq!(pruned, listed, "{plan}");
    assert_eq!(fs::read_dir(&backups).unwrap().count(), 3);
}
