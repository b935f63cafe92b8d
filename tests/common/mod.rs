//! Shared helpers for the integration tests: where the extension is, connections with it
//! loaded, the sqlite3 CLI and Debian's python3, sample databases, content digests and checks
//! that nothing was left behind.
#![allow(dead_code)] // each test file uses a different subset

// Loaded before any other crate: rustc links crates loaded later first, and rusqlite's bundled
// SQLite must come before sqlite3ext-sys's (under the extension), or the linker takes symbols
// from both and fails with duplicate symbols, depending on which crate a test file named first.
extern crate sqlite_backup;

pub mod age;
pub mod calls;
pub mod http;
pub mod proxy;
pub mod s3server;
mod secret;
pub mod series;

#[allow(unused_imports)] // not every test file checks for leaks
pub use secret::assert_no_secret;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use rusqlite::types::Value;
use rusqlite::Connection;
use sha2::{Digest, Sha256};

/// The sqlite3 CLI the tests drive (Debian's, a different SQLite than rusqlite's bundled one).
pub const SQLITE3: &str = "/usr/bin/sqlite3";
/// Debian's python3: its sqlite3 module can load extensions (pyenv's on PATH cannot).
pub const PYTHON3: &str = "/usr/bin/python3";

/// The functions the extension registers, sorted. Adding a function is a one-line change here.
pub const FUNCTIONS: &[&str] = &[
    "backup_debug",
    "backup_prune",
    "backup_to_file",
    "backup_to_s3",
    "backup_version",
    "restore_backup",
    "verify_backup",
];

/// The built extension: `$SQLITE_BACKUP_EXT`, else the cdylib `cargo test` rebuilt beside
/// this test binary in `target/debug/deps/` (it does not copy it up to `target/debug/`, where
/// an older build may sit).
pub fn built_ext() -> PathBuf {
    if let Some(p) = std::env::var_os("SQLITE_BACKUP_EXT") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .expect("target/debug/deps from target/debug/deps/<test>")
        .join("libsqlite_backup.so")
}

/// The extension under its shipped name, `sqlite_backup.so` (so SQLite derives the entry point
/// `sqlite3_sqlitebackup_init` exactly as for users), linked once per test process into
/// `target/debug/deps/test-ext/<pid>/`. A hard link costs no space and keeps this process's
/// build even when cargo writes a new one meanwhile; the directories of test processes that
/// have ended are removed here, so test runs never pile up copies.
pub fn ext() -> &'static Path {
    static EXT: OnceLock<PathBuf> = OnceLock::new();
    EXT.get_or_init(|| {
        let built = built_ext();
        assert!(
            built.is_file(),
            "extension not found at {} (build it, or set SQLITE_BACKUP_EXT)",
            built.display()
        );
        let root = built.parent().unwrap().join("test-ext");
        for entry in fs::read_dir(&root).into_iter().flatten().flatten() {
            let gone = entry
                .file_name()
                .to_str()
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
            if gone {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let base = root.join(std::process::id().to_string());
        fs::create_dir_all(&base).unwrap();
        let dest = base.join("sqlite_backup.so");
        let tmp = base.join(".sqlite_backup.so.tmp");
        let _ = fs::remove_file(&tmp);
        if fs::hard_link(&built, &tmp).is_err() {
            fs::copy(&built, &tmp).unwrap();
        }
        fs::rename(&tmp, &dest).unwrap();
        dest
    })
}

/// The path to give `.load`/`load_extension`: without `.so`, as the docs show it.
pub fn ext_load_name() -> String {
    ext().with_extension("").display().to_string()
}

/// A rusqlite connection to `path` with the extension loaded.
pub fn open(path: impl AsRef<Path>) -> Connection {
    let conn = Connection::open(path.as_ref()).expect("open");
    load(&conn);
    conn
}

pub fn open_memory() -> Connection {
    let conn = Connection::open_in_memory().expect("open :memory:");
    load(&conn);
    conn
}

pub fn load(conn: &Connection) {
    // SAFETY: loading our own extension, which is what the tests are about.
    unsafe {
        conn.load_extension_enable().unwrap();
        conn.load_extension(ext(), None::<&str>).unwrap();
        conn.load_extension_disable().unwrap();
    }
}

/// Runs a SQL function call that returns JSON text; panics with the SQL error otherwise.
pub fn call_json(conn: &Connection, sql: &str) -> serde_json::Value {
    let text: String = conn
        .query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{sql}: not JSON ({e}): {text}"))
}

/// Runs SQL that must fail; returns SQLite's error message.
pub fn call_err(conn: &Connection, sql: &str) -> String {
    match conn.query_row(sql, [], |r| r.get::<_, rusqlite::types::Value>(0)) {
        Ok(v) => panic!("{sql}: expected an error, got {v:?}"),
        Err(rusqlite::Error::SqliteFailure(_, Some(msg))) => msg,
        Err(e) => e.to_string(),
    }
}

/// The connection still answers queries, and the extension still works on it.
pub fn assert_alive(conn: &Connection) {
    let v: String = conn
        .query_row("SELECT backup_version()", [], |r| r.get(0))
        .expect("connection still works");
    assert_eq!(v, "v0.1.0");
}

/// A SQL string literal.
pub fn lit(text: impl AsRef<str>) -> String {
    format!("'{}'", text.as_ref().replace('\'', "''"))
}

pub fn path_lit(path: impl AsRef<Path>) -> String {
    lit(path.as_ref().to_str().expect("UTF-8 path"))
}

pub struct Output {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// A successful run's stdout, one JSON value per line.
    #[track_caller]
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.assert_ok();
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert!(
            self.status.success(),
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

fn run(mut cmd: Command, stdin: &str) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    {
        let mut input = child.stdin.take().unwrap();
        // The child may exit early (-bail) and close its stdin: ignore a broken pipe.
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("wait");
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `sqlite3 [flags] -cmd ".load EXT" DB` with `script` on stdin, in `cwd` (or ours).
pub fn sqlite3_cli(db: &Path, flags: &[&str], script: &str, cwd: Option<&Path>) -> Output {
    let mut cmd = Command::new(SQLITE3);
    cmd.args(flags)
        .arg("-cmd")
        .arg(format!(".load {}", ext_load_name()))
        .arg(db);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    run(cmd, script)
}

/// `sqlite3` without the extension, for comparisons.
pub fn sqlite3_plain(db: &Path, script: &str) -> Output {
    let mut cmd = Command::new(SQLITE3);
    cmd.arg(db);
    run(cmd, script)
}

/// `/usr/bin/python3 - args…` with `script` on stdin; `EXT` in its environment is the
/// extension's path.
pub fn python(script: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(PYTHON3);
    cmd.arg("-").args(args).env("EXT", ext());
    run(cmd, script)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Journal {
    Wal,
    Rollback,
}

/// A sample database at `path`: three tables (one WITHOUT ROWID), indexes, a view, a
/// trigger, NULLs, reals, text and blobs. `rows` orders; about 300 bytes per order.
pub fn make_sample_db(path: &Path, journal: Journal, rows: u32) {
    let conn = Connection::open(path).unwrap();
    let mode: String = conn
        .query_row(
            match journal {
                Journal::Wal => "PRAGMA journal_mode = WAL",
                Journal::Rollback => "PRAGMA journal_mode = DELETE",
            },
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        mode,
        match journal {
            Journal::Wal => "wal",
            Journal::Rollback => "delete",
        }
    );
    fill_sample(&conn, rows);
}

/// Creates the sample schema and rows on `conn`'s main database.
pub fn fill_sample(conn: &Connection, rows: u32) {
    conn.execute_batch(&format!(
        "
        CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE,
                                score REAL, avatar BLOB);
        CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT,
                             customer_id INTEGER REFERENCES customers(id),
                             total REAL, status TEXT, note TEXT, payload BLOB);
        CREATE TABLE tags (tag TEXT, order_id INTEGER, PRIMARY KEY (tag, order_id)) WITHOUT ROWID;
        CREATE INDEX orders_by_customer ON orders(customer_id);
        CREATE INDEX orders_by_status ON orders(status, total);
        CREATE VIEW open_orders AS SELECT * FROM orders WHERE status = 'open';
        CREATE TRIGGER orders_tag AFTER INSERT ON orders WHEN new.status = 'open'
          BEGIN INSERT INTO tags VALUES ('new', new.id); END;
        BEGIN;
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {customers})
        INSERT INTO customers SELECT i, 'customer ' || i, 'c' || i || '@example.com',
          CASE WHEN i % 7 = 0 THEN NULL ELSE i / 3.0 END,
          CASE WHEN i % 5 = 0 THEN randomblob(40) END FROM n;
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {rows})
        INSERT INTO orders (customer_id, total, status, note, payload)
          SELECT 1 + (i * 7919) % {customers}, round((i * 37) % 10000 / 100.0, 2),
          CASE i % 3 WHEN 0 THEN 'open' WHEN 1 THEN 'paid' ELSE 'shipped' END,
          'note ' || hex(randomblob(8)), randomblob(200) FROM n;
        INSERT OR IGNORE INTO tags SELECT status, id FROM orders WHERE id % 11 = 0;
        COMMIT;
        ",
        customers = (rows / 4).max(1)
    ))
    .unwrap();
}

/// A canonical summary of a database's content: the schema (without root pages, which VACUUM
/// changes) and every table's rows in a fixed order, hashed; with row counts for messages.
pub fn digest_conn(conn: &Connection, schema: &str) -> String {
    let mut hasher = Sha256::new();
    let mut counts = BTreeMap::new();
    let master = format!("\"{schema}\".sqlite_schema");
    let mut stmt = conn
        .prepare(&format!(
            "SELECT type, name, tbl_name, coalesce(sql, '') FROM {master} ORDER BY type, name"
        ))
        .unwrap();
    let objects: Vec<(String, String, String, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (kind, name, table, sql) in &objects {
        hasher.update(format!("{kind}\0{name}\0{table}\0{sql}\n").as_bytes());
    }
    for (kind, name, _, _) in &objects {
        if kind != "table" {
            continue;
        }
        let q = format!("SELECT * FROM \"{schema}\".\"{name}\"");
        let ncols = conn.prepare(&q).unwrap().column_count();
        let order: Vec<String> = (1..=ncols).map(|i| i.to_string()).collect();
        let mut stmt = conn
            .prepare(&format!("{q} ORDER BY {}", order.join(", ")))
            .unwrap();
        let mut rows = stmt.query([]).unwrap();
        let mut n = 0u64;
        hasher.update(format!("table {name}\n").as_bytes());
        while let Some(row) = rows.next().unwrap() {
            for i in 0..ncols {
                let v: Value = row.get(i).unwrap();
                hasher.update(format!("{v:?}\0").as_bytes());
            }
            hasher.update(b"\n");
            n += 1;
        }
        counts.insert(name.clone(), n);
    }
    let counts: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{} sha256:{}", counts.join(" "), hex(&hasher.finalize()))
}

/// `digest_conn` of the database file at `path`, opened read-only.
pub fn digest(path: &Path) -> String {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    digest_conn(&conn, "main")
}

/// PRAGMA integrity_check of a database file: "ok" or the problems found.
pub fn integrity(path: &Path) -> String {
    let conn =
        Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let lines: rusqlite::Result<Vec<String>> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect());
    match lines {
        Ok(lines) => lines.join("; "),
        Err(e) => format!("error: {e}"),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Decompresses with the system CLI (`gunzip -c` or `zstd -dc`) by suffix; raw files as is.
pub fn decompress_cli(path: &Path) -> Vec<u8> {
    let name = path.to_str().unwrap();
    let (prog, args): (&str, &[&str]) = if name.ends_with(".gz") {
        ("gunzip", &["-c"])
    } else if name.ends_with(".zst") {
        ("zstd", &["-dc", "-q"])
    } else {
        return fs::read(path).unwrap();
    };
    let out = Command::new(prog).args(args).arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "{prog} {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Decompresses `backup` with the system CLI into `dir/name` and returns that path.
pub fn decompress_to(backup: &Path, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    fs::write(&out, decompress_cli(backup)).unwrap();
    out
}

/// Names in `dir` (not recursive), sorted.
pub fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Nothing in `dir` is one of our temp files (`.sqlite-backup-*`) or a journal, WAL or shm
/// file (`*-wal`, `*-journal`, `*-shm`) other than those named in `allowed`.
#[track_caller]
pub fn assert_no_temp_files_except(dir: &Path, allowed: &[&str]) {
    let left: Vec<String> = list(dir)
        .into_iter()
        .filter(|n| {
            n.starts_with(".sqlite-backup-")
                || n.ends_with("-wal")
                || n.ends_with("-journal")
                || n.ends_with("-shm")
        })
        .filter(|n| !allowed.contains(&n.as_str()))
        .collect();
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        dir.display()
    );
}

#[track_caller]
pub fn assert_no_temp_files(dir: &Path) {
    assert_no_temp_files_except(dir, &[]);
}

/// A temp dir for one test, under the system temp dir.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sqlite-backup-test-")
        .tempdir()
        .unwrap()
}

/// True when the tests run as root (where file modes do not stop writes).
/// (libc is not a dependency: read the effective uid from /proc.)
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `sqlite3 [flags] -cmd ".load EXT" DB` with `script` on stdin, in a clean environment: only
/// `PATH`, `HOME` = `home` (an empty directory, so no `~/.aws` is found) and `vars`. For the
/// tests of where S3 credentials come from (nothing of the host's environment leaks in).
pub fn sqlite3_cli_clean_env(
    db: &Path,
    flags: &[&str],
    script: &str,
    home: &Path,
    vars: &[(&str, &str)],
) -> Output {
    let mut cmd = Command::new(SQLITE3);
    cmd.args(flags)
        .arg("-cmd")
        .arg(format!(".load {}", ext_load_name()))
        .arg(db)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        // Never the real EC2 metadata service; a test may turn it back on in `vars`.
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (name, value) in vars {
        cmd.env(name, value);
    }
    run(cmd, script)
}

/// The Python venv with boto3 and the aws CLI: `$SQLITE_BACKUP_VENV`, else
/// `<crate>/.tools/venv`; panics saying how to install it.
pub fn venv() -> PathBuf {
    let path = match std::env::var_os("SQLITE_BACKUP_VENV") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/venv"),
    };
    assert!(
        path.join("bin/python").is_file(),
        "the Python venv (boto3, aws CLI) is missing at {}: run `make tools` (or set \
         SQLITE_BACKUP_VENV)",
        path.display()
    );
    path
}

/// The venv's python running `script` (on stdin) with `args`, in a clean environment (`PATH`
/// and an empty `HOME` only), so no AWS setting of the host reaches boto3.
pub fn venv_python(script: &str, args: &[&str], home: &Path) -> Output {
    let mut cmd = Command::new(venv().join("bin/python"));
    cmd.arg("-")
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_EC2_METADATA_DISABLED", "true");
    run(cmd, script)
}

/// About 12 MB of random blobs: incompressible, so more than two 5 MiB parts.
pub fn big_db(dir: &Path) -> (Connection, String) {
    let path = dir.join("big.db");
    let conn = open(&path);
    conn.execute_batch(
        "CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 120)
         INSERT INTO blobs SELECT i, randomblob(100000) FROM n;",
    )
    .unwrap();
    let digest = digest_conn(&conn, "main");
    (conn, digest)
}
