//! Backups taken while another process commits transactions are consistent snapshots; a
//! source locked past busy_timeout_ms fails clearly and leaves nothing.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ACCOUNTS: i64 = 50;
const TOTAL: i64 = ACCOUNTS * 1000;

/// Moves money between accounts, one transaction at a time, until `seconds` have passed;
/// prints "ready" once started and the number of commits at the end.
const WRITER: &str = r#"
import random, sqlite3, sys, time
db, seconds = sys.argv[1], float(sys.argv[2])
conn = sqlite3.connect(db, timeout=10, isolation_level=None)
conn.execute("PRAGMA busy_timeout = 10000")
print("ready", flush=True)
end = time.time() + seconds
n = 0
while time.time() < end:
    a, b = random.sample(range(1, %ACCOUNTS% + 1), 2)
    x = random.randint(1, 100)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (x, a))
    # A torn snapshot would show the money gone from a and not yet at b.
    conn.execute("UPDATE accounts SET balance = balance + ?, moves = moves + 1 WHERE id = ?", (x, b))
    conn.execute("INSERT INTO ledger (src, dst, amount) VALUES (?, ?, ?)", (a, b, x))
    conn.execute("COMMIT")
    n += 1
    # Rollback-journal readers starve if a writer re-locks at once; real writers pause.
    time.sleep(0.003)
print(n, flush=True)
"#;

fn make_bank(path: &Path, journal: Journal) {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mode = if journal == Journal::Wal {
        "wal"
    } else {
        "delete"
    };
    conn.query_row(&format!("PRAGMA journal_mode = {mode}"), [], |_| Ok(()))
        .unwrap();
    conn.execute_batch(&format!(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, moves INTEGER NOT NULL);
         CREATE TABLE ledger (id INTEGER PRIMARY KEY, src INTEGER, dst INTEGER, amount INTEGER, pad BLOB DEFAULT (randomblob(300)));
         CREATE INDEX ledger_src ON ledger(src, amount);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {ACCOUNTS})
         INSERT INTO accounts SELECT i, 1000, 0 FROM n;"
    ))
    .unwrap();
}

/// (total balance, accounts, moves, ledger rows) of a database file.
fn bank_state(path: &Path) -> (i64, i64, i64, i64) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row(
        "SELECT sum(balance), count(*), sum(moves), (SELECT count(*) FROM ledger) FROM accounts",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
    )
    .unwrap()
}

fn consistent_under_writes(journal: Journal) {
    let dir = tempdir();
    let (backups, tmp, out) = (
        dir.path().join("backups"),
        dir.path().join("tmp"),
        dir.path().join("out"),
    );
    for d in [&backups, &tmp, &out] {
        fs::create_dir(d).unwrap();
    }
    let src = dir.path().join("bank.db");
    make_bank(&src, journal);

    let mut writer = Command::new(PYTHON3)
        .arg("-c")
        .arg(WRITER.replace("%ACCOUNTS%", &ACCOUNTS.to_string()))
        .arg(&src)
        .arg("4")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(writer.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");

    let conn = open(&src);
    let variants = [
        (".db.gz", "vacuum"),
        (".db.zst", "pages"),
        (".db", "vacuum"),
        (".db.gz", "pages"),
    ];
    let mut reports = Vec::new();
    let started = Instant::now();
    let mut i = 0;
    // Back up for as long as the writer writes (at least 8 times, at most 20).
    while i < 8 || (i < 20 && started.elapsed() < Duration::from_millis(3500)) {
        let (suffix, method) = variants[i % variants.len()];
        let backup = backups.join(format!("bank-{i:02}{suffix}"));
        let report = call_json(
            &conn,
            &format!(
                "SELECT backup_to_file({}, json_object('method', '{method}', 'temp_dir', {}))",
                path_lit(&backup),
                path_lit(&tmp)
            ),
        );
        assert_eq!(report["method"], method);
        reports.push((backup, report));
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let commits: u64 = lines.next().unwrap().unwrap().parse().unwrap();
    assert!(writer.wait().unwrap().success());
    assert!(
        commits > 50,
        "the writer only committed {commits} transactions"
    );

    let mut shas = std::collections::BTreeSet::new();
    let mut moves_seen = Vec::new();
    for (n, (backup, report)) in reports.iter().enumerate() {
        let verified = call_json(
            &conn,
            &format!(
                "SELECT verify_backup({}, json_object('temp_dir', {}))",
                path_lit(backup),
                path_lit(&tmp)
            ),
        );
        assert_eq!(verified["ok"], true, "{verified}");
        assert_eq!(verified["sha256"], report["sha256"]);
        let copy = decompress_to(backup, &out, &format!("copy-{n}.db"));
        assert_eq!(integrity(&copy), "ok", "{}", backup.display());
        let (total, accounts, moves, ledger) = bank_state(&copy);
        assert_eq!(
            total,
            TOTAL,
            "money appeared or vanished in {}",
            backup.display()
        );
        assert_eq!(accounts, ACCOUNTS);
        assert_eq!(moves, ledger, "half a transaction in {}", backup.display());
        moves_seen.push(moves);
        shas.insert(report["sha256"].as_str().unwrap().to_string());
    }
    // The backups ran while the writer wrote: they saw different, growing states.
    assert!(shas.len() >= 3, "{moves_seen:?}");
    assert!(
        moves_seen.windows(2).all(|w| w[0] <= w[1]),
        "{moves_seen:?}"
    );
    assert!(moves_seen.last() > moves_seen.first(), "{moves_seen:?}");
    assert_eq!(bank_state(&src).0, TOTAL);
    assert_no_temp_files(&backups);
    assert_no_temp_files(&tmp);
}

#[test]
fn backups_are_consistent_while_a_wal_writer_commits() {
    consistent_under_writes(Journal::Wal);
}

#[test]
fn backups_are_consistent_while_a_rollback_writer_commits() {
    consistent_under_writes(Journal::Rollback);
}

/// Holds a write transaction on the database for `seconds` after printing "locked" (in
/// rollback mode an EXCLUSIVE lock, which blocks readers; in WAL mode readers go on).
const LOCKER: &str = r#"
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("UPDATE accounts SET moves = moves + 1")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"#;

struct Locked {
    dir: tempfile::TempDir,
    locker: std::process::Child,
}

impl Drop for Locked {
    fn drop(&mut self) {
        self.locker.kill().ok();
        self.locker.wait().ok();
    }
}

/// A bank database in `journal` mode, with a writer process holding a write transaction, and
/// a connection with the extension that read the schema before the lock (else preparing any
/// statement on it would wait for the lock too).
fn locked_bank(journal: Journal, seconds: &str) -> (Locked, rusqlite::Connection) {
    let dir = tempdir();
    fs::create_dir(dir.path().join("backups")).unwrap();
    fs::create_dir(dir.path().join("tmp")).unwrap();
    let src = dir.path().join("bank.db");
    make_bank(&src, journal);
    let conn = open(&src);
    conn.query_row("SELECT count(*) FROM accounts", [], |_| Ok(()))
        .unwrap();
    let mut locker = Command::new(PYTHON3)
        .arg("-c")
        .arg(LOCKER)
        .arg(&src)
        .arg(seconds)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(locker.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "locked");
    (Locked { dir, locker }, conn)
}

/// Rollback journal: a writer holds an EXCLUSIVE lock longer than busy_timeout_ms. The
/// backup fails after about busy_timeout_ms with a message naming the option, writes
/// nothing, leaves no temp file and keeps the previous backup of that name. For both methods,
/// whatever busy timeout the calling connection itself has (here 5000 ms, rusqlite's default
/// and Python's): the option is the caller's stated patience for this backup.
fn locked_source_times_out(method: &str) {
    let (locked, conn) = locked_bank(Journal::Rollback, "6");
    let backups = locked.dir.path().join("backups");
    let tmp = locked.dir.path().join("tmp");
    let previous = backups.join("bank.db.gz");
    fs::write(&previous, b"previous backup").unwrap();
    let previous_bytes = fs::read(&previous).unwrap();

    conn.execute_batch("PRAGMA busy_timeout = 5000").unwrap();
    let started = Instant::now();
    let err = call_err(
        &conn,
        &format!(
            "SELECT backup_to_file({}, json_object('busy_timeout_ms', 300, 'method', '{method}', 'temp_dir', {}))",
            path_lit(&previous),
            path_lit(&tmp)
        ),
    );
    let waited = started.elapsed();
    assert!(err.starts_with("backup_to_file: "), "{err}");
    assert!(err.contains("busy_timeout_ms"), "{method}: {err}");
    assert!(err.contains("300 ms"), "{method}: {err}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(2500),
        "{method}: waited {waited:?}"
    );
    assert_eq!(list(&backups), ["bank.db.gz"]);
    assert_eq!(fs::read(&previous).unwrap(), previous_bytes);
    assert_no_temp_files(&backups);
    assert_no_temp_files(&tmp);
    assert_eq!(list(&tmp), Vec::<String>::new());
    drop(locked);
    assert_alive(&conn);
}

#[test]
fn locked_source_times_out_with_vacuum() {
    locked_source_times_out("vacuum");
}

#[test]
fn locked_source_times_out_with_pages() {
    locked_source_times_out("pages");
}

/// WAL: a writer's open transaction does not block a backup, and the backup holds only
/// committed data.
#[test]
fn wal_writer_in_a_transaction_does_not_block_backups() {
    let (locked, conn) = locked_bank(Journal::Wal, "6");
    let backups = locked.dir.path().join("backups");
    for method in ["vacuum", "pages"] {
        let backup = backups.join(format!("{method}.db.zst"));
        let started = Instant::now();
        call_json(
            &conn,
            &format!(
                "SELECT backup_to_file({}, json_object('busy_timeout_ms', 300, 'method', '{method}'))",
                path_lit(&backup)
            ),
        );
        assert!(started.elapsed() < Duration::from_millis(2000));
        let copy = decompress_to(&backup, locked.dir.path(), &format!("{method}-copy.db"));
        assert_eq!(
            bank_state(&copy),
            (TOTAL, ACCOUNTS, 0, 0),
            "uncommitted data in {method}"
        );
    }
    assert_no_temp_files(&backups);
}
