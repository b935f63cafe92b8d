//! The extension loaded into Debian's /usr/bin/python3 `sqlite3` module (SQLite 3.40).

mod common;

use std::fs;

use common::*;
use serde_json::Value;

/// Python prelude: `connect(path)` opens with the extension loaded; `attempt(conn, sql)` prints
/// one JSON line per call, the result or the error's class and message.
const PRELUDE: &str = r#"
import json, os, sqlite3, sys, threading
def connect(path):
    conn = sqlite3.connect(path, isolation_level=None)
    conn.enable_load_extension(True)
    conn.load_extension(os.environ["EXT"])
    conn.enable_load_extension(False)
    return conn
def attempt(conn, sql, *args):
    try:
        value = conn.execute(sql, args).fetchone()[0]
        if value.startswith("{"):
            value = json.loads(value)
        print(json.dumps({"result": value}))
    except sqlite3.Error as e:
        print(json.dumps({"error": type(e).__name__, "message": str(e)}))
    sys.stdout.flush()
"#;

fn run_py(body: &str, args: &[&str]) -> Vec<Value> {
    python(&format!("{PRELUDE}\n{body}"), args).json_lines()
}

#[test]
fn backup_verify_restore_and_errors_in_python() {
    let dir = tempdir();
    let src = dir.path().join("src.db");
    make_sample_db(&src, Journal::Wal, 400);
    let expected = digest(&src);
    let d = dir.path().to_str().unwrap();
    let lines = run_py(
        r#"
d = sys.argv[1]
conn = connect(d + "/src.db")
attempt(conn, "SELECT backup_to_file(?)", d + "/py-%Y.db.gz")
attempt(conn, "SELECT backup_to_file(?, ?)", d + "/py.db.zst", json.dumps({"level": 19}))
import glob
gz = glob.glob(d + "/py-*.db.gz")[0]
attempt(conn, "SELECT verify_backup(?)", gz)
attempt(conn, "SELECT restore_backup(?, ?)", d + "/py.db.zst", d + "/restored.db")
mem = connect(":memory:")
attempt(mem, "SELECT restore_backup(?)", gz)
print(json.dumps({"result": mem.execute("SELECT count(*) FROM orders").fetchone()[0]}))
attempt(conn, "SELECT backup_to_file(?)", d + "/x-%Q.db.gz")
attempt(conn, "SELECT verify_backup(?)", d + "/src.db-missing.gz")
attempt(conn, "SELECT restore_backup(?, ?)", gz, d + "/restored.db")
attempt(conn, "SELECT backup_to_file(?, '{\"levle\": 9}')", d + "/y.db.gz")
attempt(conn, "SELECT backup_version()")
"#,
        &[d],
    );
    assert_eq!(lines.len(), 11, "{lines:?}");
    assert_eq!(lines[0]["result"]["compression"], "gzip", "{}", lines[0]);
    assert_eq!(lines[1]["result"]["compression"], "zstd", "{}", lines[1]);
    assert_eq!(lines[2]["result"]["ok"], true, "{}", lines[2]);
    assert_eq!(lines[2]["result"]["sha256"], lines[0]["result"]["sha256"]);
    assert_eq!(lines[3]["result"]["ok"], true, "{}", lines[3]);
    assert_eq!(digest(&dir.path().join("restored.db")), expected);
    assert_eq!(lines[4]["result"]["restored"], "main", "{}", lines[4]);
    assert_eq!(lines[5]["result"], 400);
    let errors = [
        (6, "backup_to_file: invalid strftime specifier '%Q'"),
        (7, "verify_backup: there is no backup at "),
        (8, "restore_backup: "),
        (9, "backup_to_file: option "),
    ];
    for (i, prefix) in errors {
        assert_eq!(lines[i]["error"], "OperationalError", "{}", lines[i]);
        let msg = lines[i]["message"].as_str().unwrap();
        assert!(msg.starts_with(prefix), "{msg}");
    }
    assert!(lines[8]["message"]
        .as_str()
        .unwrap()
        .contains("already exists: pass '{\"overwrite\": true}'"));
    assert!(lines[9]["message"].as_str().unwrap().contains("levle"));
    // The connection survived every error.
    assert_eq!(lines[10]["result"], "v0.1.0");
    assert!(!dir.path().join("y.db.gz").exists());
    // src.db's own -wal/-shm: python exits without closing it (the WAL leftover bug has its
    // own test below).
    assert_no_temp_files_except(dir.path(), &["src.db-wal", "src.db-shm"]);
}

/// A thread that loads the extension on its own connection, makes a backup, closes the
/// connection (SQLite then unloads the extension) and exits must not crash the process.
#[test]
fn thread_that_closed_its_connection_exits_cleanly() {
    let dir = tempdir();
    let src = dir.path().join("src.db");
    make_sample_db(&src, Journal::Rollback, 50);
    let d = dir.path().to_str().unwrap();
    let out = python(
        &format!(
            "{PRELUDE}\n{}",
            r#"
d = sys.argv[1]
def work(name):
    conn = connect(d + "/src.db")
    conn.execute("SELECT backup_to_file(?)", (d + "/" + name,)).fetchone()
    conn.close()
for name in ["t.db", "t.db.zst", "t.db.gz"]:
    t = threading.Thread(target=work, args=(name,))
    t.start()
    t.join()
    print("survived", name)
    sys.stdout.flush()
"#
        ),
        &[d],
    );
    assert!(
        out.ok(),
        "python died ({:?}) after: {:?}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        ["survived t.db", "survived t.db.zst", "survived t.db.gz"]
    );
    assert_eq!(digest(&dir.path().join("t.db")), digest(&src));
}

/// A program that opens a WAL database, makes a backup and closes leaves the directory as
/// SQLite would without the backup: no -wal or -shm file (the last connection to close
/// removes them; a read-only connection cannot).
#[test]
fn wal_source_has_no_wal_or_shm_after_the_program_closes() {
    let dir = tempdir();
    let src_dir = dir.path().join("src");
    fs::create_dir(&src_dir).unwrap();
    make_sample_db(&src_dir.join("app.db"), Journal::Wal, 100);
    assert_eq!(list(&src_dir), ["app.db"]);
    let d = dir.path().to_str().unwrap();
    let lines = run_py(
        r#"
d = sys.argv[1]
conn = connect(d + "/src/app.db")
attempt(conn, "SELECT backup_to_file(?)", d + "/app.db.gz")
conn.close()
"#,
        &[d],
    );
    assert_eq!(lines[0]["result"]["method"], "stream", "{lines:?}");
    assert_eq!(list(&src_dir), ["app.db"], "left beside the source");
}
