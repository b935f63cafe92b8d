//! Node (better-sqlite3): a backup blocks the thread that runs it, so the README's pattern runs
//! it in a worker thread. Runs `tests/node/worker-backup.mjs` both ways and measures the event
//! loop's longest pause. Needs `npm install` in tests/node (`make test-hosts` does it), so it is
//! `#[ignore]`d in `make test`.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

fn run_example(db: &Path, dest: &Path, inline: bool) -> Value {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/worker-backup.mjs");
    let mut cmd = Command::new("node");
    cmd.arg(&example).arg(ext_load_name()).arg(db).arg(dest);
    if inline {
        cmd.arg("--inline");
    }
    let out = cmd.output().expect("node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

#[test]
#[ignore = "needs tests/node/node_modules: run make test-hosts"]
fn a_worker_thread_keeps_the_event_loop_serving() {
    let dir = tempdir();
    let db = dir.path().join("app.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE t (a TEXT);
         WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < 200000)
         INSERT INTO t SELECT printf('row %d compresses well %d %s', i, i * 7, hex(randomblob(6)))
         FROM s;",
    )
    .unwrap();
    drop(conn);

    // Inline, the event loop stands still for the whole backup.
    let inline = run_example(&db, &dir.path().join("inline.db.gz"), true);
    let elapsed = inline["elapsed_ms"].as_f64().unwrap();
    let gap = inline["longest_gap_ms"].as_f64().unwrap();
    assert!(
        elapsed >= 200.0,
        "the backup was too quick to tell: {inline}"
    );
    assert!(gap >= 0.9 * elapsed, "inline did not block: {inline}");

    // In a worker the timer keeps ticking.
    let worker = run_example(&db, &dir.path().join("worker.db.gz"), false);
    let elapsed = worker["elapsed_ms"].as_f64().unwrap();
    let gap = worker["longest_gap_ms"].as_f64().unwrap();
    assert!(
        elapsed >= 200.0,
        "the backup was too quick to tell: {worker}"
    );
    assert!(gap < elapsed / 3.0, "the event loop stalled: {worker}");

    for name in ["inline.db.gz", "worker.db.gz"] {
        let r = call_json(
            &open_memory(),
            &format!("SELECT verify_backup({})", path_lit(dir.path().join(name))),
        );
        assert_eq!(r["ok"], true);
    }
}
