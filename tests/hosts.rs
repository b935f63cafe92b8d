//! The host boundary: the extension loads under any file name, refuses a SQLite older than
//! 3.31 (a real 3.30.1 built from an old amalgamation) and a second SQLite library in the same
//! process (Python's sqlite3 beside apsw), and stops a backup, verify or restore promptly when
//! the caller's connection is interrupted (Ctrl-C in the sqlite3 shell, rusqlite's interrupt
//! handle), leaving nothing behind.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::s3server::S3Server;
use common::*;
use rusqlite::Connection;

// ---------------------------------------------------------------------------------------------
// Any file name (issue #10 item 6)

/// SQLite 3.40 (loadext.c) tries `sqlite3_extension_init` first, then `sqlite3_<name>_init`
/// from the file name (a leading `lib` dropped, letters only, up to the first dot): without
/// the generic entry point `backup.so` asked for `sqlite3_backup_init` and failed.
#[test]
fn loads_under_any_file_name() {
    let dir = tempdir();
    let db = dir.path().join("a.db");
    for name in [
        "backup.so",
        "libsqlite-backup.so",
        "anything.so",
        "sqlite_backup.so",
    ] {
        let copy = dir.path().join(name);
        fs::copy(ext(), &copy).unwrap();
        let bare = copy.with_extension("");

        // The sqlite3 shell, no entry point: `.load path` with and without the suffix.
        for path in [&bare, &copy] {
            let mut cmd = Command::new(SQLITE3);
            cmd.arg("-bail")
                .arg("-cmd")
                .arg(format!(".load {}", path.display()))
                .arg(&db)
                .arg("SELECT backup_version();");
            let out = cmd.output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && stdout.trim() == "v0.1.0",
                "sqlite3 .load {}: {stdout}{stderr}",
                path.display()
            );
        }

        // rusqlite (its bundled, newer SQLite), no entry point.
        let conn = Connection::open(&db).unwrap();
        unsafe {
            conn.load_extension_enable().unwrap();
            conn.load_extension(&bare, None::<&str>)
                .unwrap_or_else(|e| panic!("rusqlite load {name}: {e}"));
        }
        assert_alive(&conn);
    }
    // The named entry point still works for hosts that pass it.
    let conn = Connection::open(&db).unwrap();
    unsafe {
        conn.load_extension_enable().unwrap();
        conn.load_extension(
            dir.path().join("anything.so"),
            Some("sqlite3_sqlitebackup_init"),
        )
        .unwrap();
    }
    assert_alive(&conn);
}

/// SQLite loads extensions with RTLD_GLOBAL, so our `sqlite3_extension_init` is a global
/// symbol once loaded; another extension loaded after ours must still get its own entry point
/// (SQLite looks it up in that file and its dependencies only).
#[test]
fn another_extension_loaded_after_ours_keeps_its_own_entry_point() {
    const FOO_C: &str = r#"
#include "sqlite3ext.h"
SQLITE_EXTENSION_INIT1
static void foo(sqlite3_context *c, int n, sqlite3_value **v) {
  sqlite3_result_text(c, "foo", -1, SQLITE_STATIC);
}
int sqlite3_foo_init(sqlite3 *db, char **err, const sqlite3_api_routines *api) {
  SQLITE_EXTENSION_INIT2(api);
  return sqlite3_create_function(db, "foo", 0, SQLITE_UTF8, 0, foo, 0, 0);
}
"#;
    let dir = tempdir();
    let src = dir.path().join("foo.c");
    fs::write(&src, FOO_C).unwrap();
    let foo = dir.path().join("foo.so");
    let out = Command::new("gcc")
        .args(["-shared", "-fPIC", "-w", "-I"])
        .arg(amalgamation("0.17.3", "3.31.0"))
        .arg(&src)
        .arg("-o")
        .arg(&foo)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(SQLITE3)
        .arg("-bail")
        .arg("-cmd")
        .arg(format!(".load {}", ext_load_name()))
        .arg("-cmd")
        .arg(format!(".load {}", foo.with_extension("").display()))
        .arg(":memory:")
        .arg("SELECT foo(), backup_version();")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text, "foo|v0.1.0\n");
}

// ---------------------------------------------------------------------------------------------
// Too-old SQLite (issue #9 item 8)

/// A tiny C host: opens argv[1], loads argv[2] (no entry point), runs each further argument,
/// printing rows or the error.
const HOST_C: &str = r#"
#include <stdio.h>
#include "sqlite3.h"
static int row(void *u, int n, char **v, char **c) {
  for (int i = 0; i < n; i++) printf("%s%s", i ? "|" : "", v[i] ? v[i] : "NULL");
  printf("\n");
  return 0;
}
int main(int argc, char **argv) {
  sqlite3 *db;
  char *err = 0;
  if (sqlite3_open(argv[1], &db) != SQLITE_OK) { printf("open failed\n"); return 2; }
  printf("sqlite %s\n", sqlite3_libversion());
  sqlite3_enable_load_extension(db, 1);
  if (sqlite3_load_extension(db, argv[2], 0, &err) != SQLITE_OK) {
    printf("load error: %s\n", err ? err : "(none)");
    sqlite3_free(err);
  } else {
    printf("load ok\n");
  }
  for (int i = 3; i < argc; i++) {
    err = 0;
    if (sqlite3_exec(db, argv[i], row, 0, &err) != SQLITE_OK) {
      printf("error: %s\n", err ? err : "(none)");
      sqlite3_free(err);
    }
  }
  return sqlite3_close(db) == SQLITE_OK ? 0 : 3;
}
"#;

/// The C host linked with the amalgamation that libsqlite3-sys `crate_version` bundles
/// (fetched with cargo into its usual cache), built once and kept under `target/`.
fn old_sqlite_host(crate_version: &str, sqlite_version: &str) -> PathBuf {
    let cache = built_ext()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("old-sqlite")
        .join(sqlite_version);
    let host = cache.join("host");
    if host.is_file() {
        return host;
    }
    let amalgamation = amalgamation(crate_version, sqlite_version);
    let probe = tempdir();
    fs::create_dir_all(&cache).unwrap();
    let src = probe.path().join("host.c");
    fs::write(&src, HOST_C).unwrap();
    let tmp = cache.join(format!("host.{}.tmp", std::process::id()));
    let out = Command::new("gcc")
        .args(["-O0", "-w", "-DSQLITE_THREADSAFE=1", "-I"])
        .arg(&amalgamation)
        .arg(&src)
        .arg(amalgamation.join("sqlite3.c"))
        .arg("-o")
        .arg(&tmp)
        .args(["-ldl", "-lpthread", "-lm"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::rename(&tmp, &host).unwrap();
    host
}

/// The directory of sqlite3.c, sqlite3.h and sqlite3ext.h of the SQLite that libsqlite3-sys
/// `crate_version` bundles (downloaded by cargo, or found in its cache).
fn amalgamation(crate_version: &str, sqlite_version: &str) -> PathBuf {
    // A throwaway manifest: cargo downloads (or finds cached) the crate; nothing is built.
    let probe = tempdir();
    fs::create_dir_all(probe.path().join("src")).unwrap();
    fs::write(probe.path().join("src/lib.rs"), "").unwrap();
    fs::write(
        probe.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"old-sqlite-probe\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             [workspace]\n[dependencies]\nlibsqlite3-sys = {{ version = \"={crate_version}\", \
             default-features = false }}\n"
        ),
    )
    .unwrap();
    let out = Command::new(option_env!("CARGO").unwrap_or("cargo"))
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(probe.path().join("Cargo.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cannot fetch libsqlite3-sys {crate_version} (needs crates.io once): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "libsqlite3-sys")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("libsqlite3-sys in the metadata");
    let amalgamation = Path::new(manifest).parent().unwrap().join("sqlite3");
    let header = fs::read_to_string(amalgamation.join("sqlite3.h")).unwrap();
    assert!(
        header.contains(&format!(
            "#define SQLITE_VERSION        \"{sqlite_version}\""
        )),
        "libsqlite3-sys {crate_version} does not bundle SQLite {sqlite_version}"
    );
    amalgamation
}

fn run_host(host: &Path, db: &Path, sql: &[&str]) -> String {
    let out = Command::new(host)
        .arg(db)
        .arg(ext_load_name())
        .args(sql)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "host {}: {text}", host.display());
    text
}

#[test]
fn sqlite_older_than_3_31_is_refused_and_registers_nothing() {
    let host = old_sqlite_host("0.17.1", "3.30.1");
    let dir = tempdir();
    let out = run_host(
        &host,
        &dir.path().join("a.db"),
        &[
            "SELECT backup_version()",
            "SELECT * FROM backup_list('.')",
            "SELECT 'still works'",
        ],
    );
    assert!(out.contains("sqlite 3.30.1"), "{out}");
    assert!(
        out.contains(
            "load error: error during initialization: sqlite_backup needs SQLite 3.31.0 or \
             newer (for DIRECTONLY functions and tables), and this program's SQLite is 3.30.1"
        ),
        "{out}"
    );
    assert!(
        out.contains("error: no such function: backup_version"),
        "{out}"
    );
    assert!(out.contains("error: no such table: backup_list"), "{out}");
    assert!(out.contains("still works"), "{out}");
    assert_eq!(list(dir.path()), ["a.db"]);
}

/// 3.31.0, the minimum: loads, and a backup and its verification run through only the
/// routines that version has.
#[test]
fn sqlite_3_31_loads_and_backs_up() {
    let host = old_sqlite_host("0.17.3", "3.31.0");
    let dir = tempdir();
    let out_dir = dir.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let backup = out_dir.join("a.db.gz");
    let out = run_host(
        &host,
        &dir.path().join("a.db"),
        &[
            "CREATE TABLE t(x); INSERT INTO t VALUES (1), (2)",
            &format!(
                "SELECT backup_to_file({}) LIKE '%\"compression\":\"gzip\"%'",
                path_lit(&backup)
            ),
            &format!(
                "SELECT verify_backup({}) LIKE '%\"ok\":true%'",
                path_lit(&backup)
            ),
            &format!("SELECT count(*) FROM backup_list({})", path_lit(&out_dir)),
        ],
    );
    assert_eq!(out, "sqlite 3.31.0\nload ok\n1\n1\n1\n", "{out}");
}

/// 3.31.0 as the amalgamation builds by default has no `dbstat`: a stream of a database with
/// overflow chains still streams (their unused ends stay as they are, as the README says),
/// without a fallback, and verifies.
#[test]
fn a_sqlite_without_dbstat_still_streams() {
    let host = old_sqlite_host("0.17.3", "3.31.0");
    let dir = tempdir();
    let backup = dir.path().join("a.db.zst");
    let call = format!("backup_to_file({})", path_lit(&backup));
    let out = run_host(
        &host,
        &dir.path().join("a.db"),
        &[
            "PRAGMA journal_mode = WAL",
            "CREATE TABLE t(x); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
             WHERE i < 20) INSERT INTO t SELECT randomblob(5000) FROM n",
            "SELECT count(*) FROM dbstat",
            &format!(
                "SELECT r LIKE '%\"method\":\"stream\"%' AND r NOT LIKE '%fallback%' \
                 FROM (SELECT {call} AS r)"
            ),
            &format!(
                "SELECT verify_backup({}) LIKE '%\"ok\":true%'",
                path_lit(&backup)
            ),
        ],
    );
    assert_eq!(
        out, "sqlite 3.31.0\nload ok\nwal\nerror: no such table: dbstat\n1\n1\n",
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------------
// Two SQLite libraries in one process (issue #9 item 7)

/// Python's sqlite3 (Debian's libsqlite3, 3.40) and apsw (its own bundled SQLite) in one
/// process, in both orders: the first load works, the second is refused clearly and registers
/// nothing, and the first connection keeps working.
#[test]
fn a_second_sqlite_library_in_the_process_is_refused() {
    const SCRIPT: &str = r#"
import sys, os, sqlite3, apsw
ext, d, first = sys.argv[1], sys.argv[2], sys.argv[3]

def std_load(path):
    c = sqlite3.connect(path)
    c.enable_load_extension(True)
    c.load_extension(ext)
    return lambda sql: c.execute(sql).fetchone()[0]

def apsw_load(path):
    c = apsw.Connection(path)
    c.enable_load_extension(True)
    c.load_extension(ext)
    return lambda sql: list(c.execute(sql))[0][0]

loaders = {"stdlib": std_load, "apsw": apsw_load}
second = "apsw" if first == "stdlib" else "stdlib"
q = loaders[first](os.path.join(d, "a.db"))
print("first", first, q("SELECT backup_version()"))
try:
    loaders[second](os.path.join(d, "b.db"))
    print("second loaded")
except Exception as e:
    print("second refused:", e)
# Another connection of the first library: the same routines, fine.
q2 = loaders[first](os.path.join(d, "c.db"))
print("first again", q2("SELECT backup_version()"))
bak = os.path.join(d, "a.db.gz")
print("backup", q("SELECT backup_to_file('%s') ->> '$.compression'" % bak))
print("verify", q("SELECT verify_backup('%s') ->> '$.ok'" % bak))
"#;
    let venv = venv();
    let has_apsw = Command::new(venv.join("bin/python"))
        .args(["-c", "import apsw"])
        .status()
        .unwrap();
    assert!(
        has_apsw.success(),
        "apsw is missing from {}: run `make tools`",
        venv.display()
    );
    for (first, other) in [("stdlib", "3.40.1"), ("apsw", "")] {
        let dir = tempdir();
        Connection::open(dir.path().join("a.db"))
            .unwrap()
            .execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        let ext = ext().display().to_string();
        let out = venv_python(
            SCRIPT,
            &[&ext, dir.path().to_str().unwrap(), first],
            dir.path(),
        );
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(out.ok(), "{first} first: {text}");
        assert!(text.contains(&format!("first {first} v0.1.0")), "{text}");
        assert!(
            text.contains("second refused:")
                && text.contains(
                    "sqlite_backup is already loaded by another SQLite library in this process ("
                )
                && text.contains("): load it from one library only"),
            "{first} first: {text}"
        );
        if !other.is_empty() {
            assert!(
                text.contains(&format!("({other}; this one is 3.")),
                "{text}"
            );
        }
        assert!(text.contains("first again v0.1.0"), "{text}");
        assert!(text.contains("backup gzip\nverify 1\n"), "{text}");
    }
}

// ---------------------------------------------------------------------------------------------
// Interrupts (issue #9 item 9)

/// Where the big shared files live: under `target/`, made once and kept for later runs (a
/// temp dir held in a static would never be removed: statics are not dropped).
fn fixtures() -> PathBuf {
    let dir = built_ext()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("hosts-fixtures");
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// `fixtures()/name`, made by `make(temp path)` when missing, then renamed into place.
fn fixture(name: &str, make: impl FnOnce(&Path)) -> PathBuf {
    let path = fixtures().join(name);
    if !path.is_file() {
        let tmp = fixtures().join(format!("{}.{name}", std::process::id()));
        make(&tmp);
        fs::rename(&tmp, &path).unwrap();
    }
    path
}

/// A ~100 MB database: big enough that every step takes a while, with an indexed table so
/// integrity_check has work too.
fn big_db() -> &'static Path {
    static DB: OnceLock<PathBuf> = OnceLock::new();
    DB.get_or_init(|| {
        fixture("big.db", |path| {
            let conn = Connection::open(path).unwrap();
            conn.execute_batch(
                "CREATE TABLE blobs(b);
                 CREATE TABLE rows(k TEXT);
                 CREATE INDEX rows_k ON rows(k);
                 WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 22000)
                 INSERT INTO blobs SELECT randomblob(2000) || zeroblob(2000) FROM c;
                 WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 200000)
                 INSERT INTO rows SELECT hex(randomblob(16)) FROM c;",
            )
            .unwrap();
        })
    })
}

/// Interrupts `conn` from another thread as soon as `ready()` holds; the thread returns when it
/// did (None if the call ended first).
struct Interrupter {
    done: Arc<AtomicBool>,
    thread: JoinHandle<Option<Instant>>,
}

impl Interrupter {
    fn when(conn: &Connection, ready: impl Fn() -> bool + Send + 'static) -> Interrupter {
        let handle = conn.get_interrupt_handle();
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&done);
        let thread = std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if ready() {
                    handle.interrupt();
                    return Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            None
        });
        Interrupter { done, thread }
    }

    /// Runs `sql`, which must fail as interrupted within a second of the interrupt.
    #[track_caller]
    fn expect_interrupted(self, conn: &Connection, sql: &str) {
        let result = conn.query_row(sql, [], |r| r.get::<_, String>(0));
        let ended = Instant::now();
        self.done.store(true, Ordering::SeqCst);
        let sent = self.thread.join().unwrap();
        let sent = sent.unwrap_or_else(|| panic!("{sql} ended before the interrupt: {result:?}"));
        let message = match result {
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) => m,
            other => panic!("{sql}: expected the interrupted error, got {other:?}"),
        };
        assert!(
            message.ends_with(
                ": interrupted: stopped before finishing, nothing was stored or changed"
            ),
            "{sql}: {message}"
        );
        let late = ended.duration_since(sent);
        eprintln!("stopped {late:?} after the interrupt: {sql}");
        assert!(
            late < Duration::from_secs(1),
            "{sql}: stopped {late:?} after the interrupt"
        );
        // The connection is fine afterwards.
        assert_alive(conn);
    }
}

/// Some file in `dir` (not `except`) has at least `min` bytes.
fn file_of(dir: &Path, min: u64, except: &str) -> bool {
    fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
        e.file_name() != except
            && e.metadata()
                .map(|m| m.is_file() && m.len() >= min)
                .unwrap_or(false)
    }) || open_file_in("self", dir, min)
}

/// True when process `pid` ("self" for this one) has a file of at least `min` bytes open in
/// `dir`, named or not: a backup being written has no name until it is complete (O_TMPFILE),
/// and shows in /proc as `<dir>/#<inode> (deleted)`.
fn open_file_in(pid: &str, dir: &Path, min: u64) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| target.parent() == Some(dir.as_path()))
            && fs::metadata(fd.path()).is_ok_and(|m| m.is_file() && m.len() >= min)
    })
}

fn opts(temp: &Path) -> String {
    lit(serde_json::json!({ "temp_dir": temp }).to_string())
}

/// The sqlite3 shell calls sqlite3_interrupt on SIGINT (Ctrl-C): mid-compression of a
/// ~100 MB database the backup stops, stores nothing, leaves no temp file, and an earlier
/// backup of the same name is untouched.
#[test]
fn ctrl_c_in_the_sqlite3_shell_stops_a_backup() {
    let dir = tempdir();
    let (out, temp) = (dir.path().join("out"), dir.path().join("tmp"));
    fs::create_dir_all(&out).unwrap();
    fs::create_dir_all(&temp).unwrap();
    let dest = out.join("big.db.gz");
    fs::write(&dest, b"the previous backup").unwrap();
    let mut child = Command::new(SQLITE3)
        .arg("-cmd")
        .arg(format!(".load {}", ext_load_name()))
        .arg(big_db())
        .arg(format!(
            "SELECT backup_to_file({}, {});",
            path_lit(&dest),
            opts(&temp)
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Compression has begun once the store's temp file beside the destination has data.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(file_of(&out, 1, "big.db.gz") || open_file_in(&child.id().to_string(), &out, 1)) {
        assert!(Instant::now() < deadline, "compression never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the backup ended before the interrupt"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let sent = Instant::now();
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    let late = sent.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "backup_to_file: interrupted: stopped before finishing, nothing was stored or changed"
        ),
        "stdout: {}\nstderr: {stderr}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        late < Duration::from_secs(1),
        "stopped {late:?} after SIGINT"
    );
    assert_eq!(fs::read(&dest).unwrap(), b"the previous backup");
    assert_eq!(list(&out), ["big.db.gz"]);
    assert_eq!(list(&temp), Vec::<String>::new());
}

/// rusqlite's interrupt handle during the snapshot (VACUUM INTO on our own connection).
#[test]
fn interrupt_during_the_snapshot() {
    let dir = tempdir();
    let temp = dir.path().join("tmp");
    fs::create_dir_all(&temp).unwrap();
    let conn = open(big_db());
    let watch = temp.clone();
    let interrupter = Interrupter::when(&conn, move || file_of(&watch, 4 << 20, ""));
    let dest = dir.path().join("b.db.zst");
    interrupter.expect_interrupted(
        &conn,
        &format!(
            "SELECT backup_to_file({}, {})",
            path_lit(&dest),
            opts(&temp)
        ),
    );
    assert_eq!(list(dir.path()), ["tmp"]);
    assert_eq!(list(&temp), Vec::<String>::new());
}

/// An in-memory source goes through the online backup API in steps; an interrupt between
/// them stops it.
#[test]
fn interrupt_during_a_pages_snapshot() {
    let dir = tempdir();
    let temp = dir.path().join("tmp");
    fs::create_dir_all(&temp).unwrap();
    let conn = open_memory();
    conn.execute_batch(&format!(
        "ATTACH {} AS big; CREATE TABLE t AS SELECT * FROM big.blobs; DETACH big;",
        path_lit(big_db())
    ))
    .unwrap();
    let watch = temp.clone();
    let interrupter = Interrupter::when(&conn, move || file_of(&watch, 4 << 20, ""));
    interrupter.expect_interrupted(
        &conn,
        &format!(
            "SELECT backup_to_file({}, {})",
            path_lit(dir.path().join("m.db")),
            // The default for memory is the stream (no temp file to watch): pages here.
            lit(serde_json::json!({ "temp_dir": temp, "method": "pages" }).to_string())
        ),
    );
    assert_eq!(list(dir.path()), ["tmp"]);
    assert_eq!(list(&temp), Vec::<String>::new());
}

/// During a multipart upload to S3: the upload is aborted, no object and no parts remain.
#[test]
fn interrupt_during_an_s3_upload() {
    let server = S3Server::start();
    server.create_bucket("bkt");
    let dir = tempdir();
    let conn = open(big_db());
    let root = server.root().to_path_buf();
    // A part has arrived at the server.
    let interrupter = Interrupter::when(&conn, move || {
        fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().contains(".part-"))
    });
    let mut o = server.options_json();
    o["temp_dir"] = dir.path().to_str().unwrap().into();
    o["part_size"] = (5u64 << 20).into();
    interrupter.expect_interrupted(
        &conn,
        &format!(
            "SELECT backup_to_s3('bkt', 'big.db', {})",
            lit(o.to_string())
        ),
    );
    assert!(!server.object_path("bkt", "big.db").exists());
    assert_eq!(server.incomplete_uploads(), Vec::<String>::new());
    assert_eq!(list(dir.path()), Vec::<String>::new());
}

/// A backup of the big database, made once (uncompressed: verify and restore then spend
/// their time in integrity_check and copying, not only in decompression).
fn big_backup() -> &'static Path {
    static BACKUP: OnceLock<PathBuf> = OnceLock::new();
    BACKUP.get_or_init(|| {
        fixture("big-backup.db", |path| {
            let conn = open(big_db());
            call_json(&conn, &format!("SELECT backup_to_file({})", path_lit(path)));
        })
    })
}

/// verify_backup: while the backup is copied into the temp file, and during integrity_check
/// (the temp file complete).
#[test]
fn interrupt_during_verify() {
    let full = fs::metadata(big_backup()).unwrap().len();
    for (phase, min) in [("copy", 4u64 << 20), ("integrity_check", full)] {
        let dir = tempdir();
        let conn = open_memory();
        let watch = dir.path().to_path_buf();
        let interrupter = Interrupter::when(&conn, move || file_of(&watch, min, ""));
        interrupter.expect_interrupted(
            &conn,
            &format!(
                "SELECT verify_backup({}, {}) /* {phase} */",
                path_lit(big_backup()),
                opts(dir.path())
            ),
        );
        assert_eq!(list(dir.path()), Vec::<String>::new(), "{phase}");
    }
}

/// restore_backup to a file (nothing created) and into the open connection (rolled back:
/// the database keeps its content).
#[test]
fn interrupt_during_restore() {
    let dir = tempdir();
    let dest = dir.path().join("restored.db");
    let conn = open_memory();
    let watch = dir.path().to_path_buf();
    let interrupter = Interrupter::when(&conn, move || file_of(&watch, 4 << 20, ""));
    interrupter.expect_interrupted(
        &conn,
        &format!(
            "SELECT restore_backup({}, {})",
            path_lit(big_backup()),
            path_lit(&dest)
        ),
    );
    assert_eq!(list(dir.path()), Vec::<String>::new());

    // Into the connection: the copy into the database is under way once its journal exists.
    let target = dir.path().join("target.db");
    let conn = open(&target);
    conn.execute_batch("CREATE TABLE mine(x); INSERT INTO mine VALUES ('kept');")
        .unwrap();
    let before = digest_conn(&conn, "main");
    let journal = dir.path().join("target.db-journal");
    let interrupter = Interrupter::when(&conn, move || journal.exists());
    let temp = dir.path().join("tmp");
    fs::create_dir_all(&temp).unwrap();
    interrupter.expect_interrupted(
        &conn,
        &format!(
            "SELECT restore_backup({}, NULL, {})",
            path_lit(big_backup()),
            opts(&temp)
        ),
    );
    assert_eq!(digest_conn(&conn, "main"), before);
    assert_eq!(list(&temp), Vec::<String>::new());
    assert_eq!(list(dir.path()), ["target.db", "tmp"]);
}

/// An application's time limit as a progress handler on its connection (Debian's python3:
/// `set_progress_handler`, non-zero to stop): it is called while our function runs, and its
/// answer stops the backup, for a small and a large instruction count.
#[test]
fn an_applications_progress_handler_stops_a_backup() {
    const SCRIPT: &str = r#"
import json, os, sqlite3, sys, threading, time
db, dest, temp, ops = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
c = sqlite3.connect(db)
c.enable_load_extension(True)
c.load_extension(os.environ["EXT"])
state = {"expired": None, "done": False}
def limit():
    # The time limit passes mid-snapshot.
    while not state["done"]:
        for n in os.listdir(temp):
            try:
                if os.path.getsize(os.path.join(temp, n)) >= 4 << 20:
                    state["expired"] = time.time()
                    return
            except OSError:
                pass
        time.sleep(0.001)
threading.Thread(target=limit, daemon=True).start()
c.set_progress_handler(lambda: 1 if state["expired"] else 0, ops)
try:
    c.execute("SELECT backup_to_file(?, ?)", (dest, json.dumps({"temp_dir": temp}))).fetchone()
    print("stored")
except sqlite3.OperationalError as e:
    print("error:", e)
ended = time.time()
state["done"] = True
print("late", ended - state["expired"] if state["expired"] else "never")
c.set_progress_handler(None, 0)
print("alive", c.execute("SELECT backup_version()").fetchone()[0])
"#;
    for ops in ["1000", "100000"] {
        let dir = tempdir();
        let temp = dir.path().join("tmp");
        fs::create_dir_all(&temp).unwrap();
        let dest = dir.path().join("b.db.gz");
        let out = python(
            SCRIPT,
            &[
                big_db().to_str().unwrap(),
                dest.to_str().unwrap(),
                temp.to_str().unwrap(),
                ops,
            ],
        );
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(out.ok(), "ops {ops}: {text}");
        assert!(
            text.contains(
                "error: backup_to_file: interrupted: stopped before finishing, nothing was \
                 stored or changed\n"
            ),
            "ops {ops}: {text}"
        );
        let late: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("late "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("ops {ops}: {text}"));
        assert!(late < 1.0, "ops {ops}: stopped {late} s after the limit");
        assert!(text.contains("alive v0.1.0"), "{text}");
        assert_eq!(list(dir.path()), ["tmp"]);
        assert_eq!(list(&temp), Vec::<String>::new());
    }
}
