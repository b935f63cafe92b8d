//! The progress line on stderr: shown in the interactive `sqlite3` shell (stderr on a terminal,
//! here a pseudo-terminal from `script`) once a call has run for two seconds, cleared before the
//! result; never with stderr on a pipe (cron, other applications) unless `"progress": true`;
//! never with `"progress": false`. Long calls are made deterministic by a lock another
//! connection holds for a while: the call waits for it, as a real one would.

mod common;

use std::path::Path;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;

/// Erase-line: what every redraw starts with and what clears the line at the end.
const CLEAR: &str = "\r\x1b[K";

/// Holds an exclusive lock on `db` for `hold`, then releases it.
fn lock_for(db: &Path, hold: Duration) -> JoinHandle<()> {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
    std::thread::spawn(move || {
        std::thread::sleep(hold);
        conn.execute_batch("COMMIT").unwrap();
    })
}

/// Runs the sqlite3 shell on `db` with the extension and `sql`, all of its standard streams on
/// a pseudo-terminal: a person at a terminal. Returns everything the terminal showed.
fn in_terminal(db: &Path, sql: &str) -> String {
    let shell = format!(
        "{SQLITE3} -bail -cmd '.load {}' '{}' \"{}\"",
        ext_load_name(),
        db.display(),
        sql.replace('"', "\\\"")
    );
    let out = Command::new("script")
        .args(["-qec", &shell, "/dev/null"])
        .output()
        .expect("script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{shell}\n{text}");
    text
}

/// The same with plain pipes, as cron or another program runs it: (stdout, stderr).
fn in_pipes(db: &Path, sql: &str) -> (String, String) {
    let out = sqlite3_cli(db, &["-bail"], sql, None);
    out.assert_ok();
    (out.stdout.clone(), out.stderr.clone())
}

fn sample(dir: &Path) -> std::path::PathBuf {
    let db = dir.join("app.db");
    make_sample_db(&db, Journal::Rollback, 300);
    db
}

#[test]
fn shown_in_the_shell_on_a_terminal_for_long_calls_and_cleared() {
    let dir = tempdir();
    let db = sample(dir.path());
    let dest = dir.path().join("app.db.gz");
    let waiter = lock_for(&db, Duration::from_millis(3500));
    let shown = in_terminal(
        &db,
        &format!(
            "SELECT backup_to_file('{}', '{{\"method\": \"pages\", \"busy_timeout_ms\": 20000}}')",
            dest.display()
        ),
    );
    waiter.join().unwrap();
    assert!(
        shown.contains(&format!("{CLEAR}backup_to_file: taking a snapshot")),
        "{shown:?}"
    );
    // Cleared, then the result on a clean line.
    let result_at = shown.find("{\"destination\"").expect("the result");
    assert!(shown[..result_at].ends_with(CLEAR), "{shown:?}");
    assert!(dest.exists());

    // A quick call shows nothing.
    let quick = in_terminal(
        &db,
        &format!(
            "SELECT backup_to_file('{}')",
            dir.path().join("q.db.gz").display()
        ),
    );
    assert!(!quick.contains("backup_to_file:"), "{quick:?}");
}

#[test]
fn restore_into_a_locked_database_shows_it_waiting() {
    let dir = tempdir();
    let db = sample(dir.path());
    let backup = dir.path().join("app.db.gz");
    in_pipes(
        &db,
        &format!("SELECT backup_to_file('{}')", backup.display()),
    );
    let target = dir.path().join("target.db");
    make_sample_db(&target, Journal::Rollback, 10);
    let waiter = lock_for(&target, Duration::from_millis(3500));
    let shown = in_terminal(
        &target,
        &format!(
            "SELECT restore_backup('{}', NULL, '{{\"busy_timeout_ms\": 20000}}') ->> '$.ok'",
            backup.display()
        ),
    );
    waiter.join().unwrap();
    assert!(
        shown.contains(&format!("{CLEAR}restore_backup: restoring")),
        "{shown:?}"
    );
    assert_eq!(digest(&target), digest(&db));
}

#[test]
fn silent_on_pipes_and_when_switched_off() {
    let dir = tempdir();
    let db = sample(dir.path());
    let long = |name: &str, extra: &str| {
        format!(
            "SELECT backup_to_file('{}', '{{\"method\": \"pages\", \"busy_timeout_ms\": 20000{extra}}}')",
            dir.path().join(name).display()
        )
    };

    // Cron, or any program reading our output: no terminal, nothing drawn.
    let waiter = lock_for(&db, Duration::from_millis(2500));
    let (stdout, stderr) = in_pipes(&db, &long("a.db.gz", ""));
    waiter.join().unwrap();
    assert!(stdout.contains("\"destination\""), "{stdout}");
    assert_eq!(stderr, "");

    // On a terminal, switched off.
    let waiter = lock_for(&db, Duration::from_millis(2500));
    let shown = in_terminal(&db, &long("b.db.gz", r#", "progress": false"#));
    waiter.join().unwrap();
    assert!(!shown.contains("backup_to_file:"), "{shown:?}");
    assert!(!shown.contains(CLEAR), "{shown:?}");
}

#[test]
fn asked_for_it_is_shown_anywhere_from_the_start() {
    let dir = tempdir();
    let db = sample(dir.path());
    let backup = dir.path().join("app.db.zst");
    let (_, stderr) = in_pipes(
        &db,
        &format!(
            "SELECT backup_to_file('{}', '{{\"progress\": true}}') ->> '$.ok'",
            backup.display()
        ),
    );
    assert!(
        stderr.starts_with(&format!("{CLEAR}backup_to_file: ")),
        "{stderr:?}"
    );
    assert!(stderr.ends_with(CLEAR), "{stderr:?}");

    let (stdout, stderr) = in_pipes(
        &db,
        &format!(
            "SELECT verify_backup('{}', '{{\"progress\": true}}') ->> '$.ok'",
            backup.display()
        ),
    );
    assert_eq!(stdout.trim(), "1");
    assert!(
        stderr.contains(&format!("{CLEAR}verify_backup: ")),
        "{stderr:?}"
    );
    assert!(stderr.ends_with(CLEAR), "{stderr:?}");

    let restored = dir.path().join("restored.db");
    let (_, stderr) = in_pipes(
        &db,
        &format!(
            "SELECT restore_backup('{}', '{}', '{{\"progress\": true}}') ->> '$.ok'",
            backup.display(),
            restored.display()
        ),
    );
    assert!(
        stderr.contains(&format!("{CLEAR}restore_backup: ")),
        "{stderr:?}"
    );
    assert_eq!(digest(&restored), digest(&db));

    // A bad value is an option error like any other.
    let out = sqlite3_cli(
        &db,
        &[],
        "SELECT verify_backup('x.gz', '{\"progress\": \"yes\"}')",
        None,
    );
    assert!(out.stderr.contains("option 'progress'"), "{}", out.stderr);
}
