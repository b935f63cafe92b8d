//! Databases whose schema uses the application's own collation and functions (issue #10 item
//! 1): an index `COLLATE APPCOLL`, an expression index and a CHECK constraint calling
//! `app_upper()`, defined on the application's connection only (rusqlite `create_collation` /
//! `create_scalar_function`, Python `create_collation` / `create_function`). Backups fall back to
//! the page copy; checks run with the caller's definitions; a check without them is partial,
//! never "corrupt"; real damage is still corrupt.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use rusqlite::functions::FunctionFlags;
use rusqlite::Connection;
use serde_json::Value;

/// The checks' tests take their backups with the page copy, which works without the fallback:
/// each test fails on its own item without the fix.
const PAGES: &str = r#"'{"method": "pages"}'"#;

/// A case-insensitive order: what an ORM's `NOCASE`-like helper looks like.
fn app_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.to_lowercase().cmp(&b.to_lowercase())
}

/// Gives `conn` the application's definitions.
fn define(conn: &Connection) {
    conn.create_collation("APPCOLL", app_order).unwrap();
    conn.create_scalar_function(
        "app_upper",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| Ok(ctx.get::<Option<String>>(0)?.map(|s| s.to_uppercase())),
    )
    .unwrap();
}

/// The application's connection to `path`: its definitions and the extension.
fn app(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    define(&conn);
    load(&conn);
    conn
}

/// Tables that need the application's definitions (one per kind) and one that does not.
fn make_app_db(path: &Path) -> Connection {
    let conn = app(path);
    conn.execute_batch(
        "
        PRAGMA journal_mode = WAL;
        CREATE TABLE by_collation (id INTEGER PRIMARY KEY, name TEXT);
        CREATE INDEX by_collation_name ON by_collation(name COLLATE APPCOLL);
        CREATE TABLE by_expression (id INTEGER PRIMARY KEY, email TEXT);
        CREATE INDEX by_expression_upper ON by_expression(app_upper(email));
        CREATE TABLE with_check (id INTEGER PRIMARY KEY, code TEXT CHECK (app_upper(code) = code));
        CREATE TABLE plain (id INTEGER PRIMARY KEY, v TEXT);
        CREATE INDEX plain_v ON plain(v);
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
        INSERT INTO by_collation (name) SELECT CASE i % 2 WHEN 0 THEN 'Name ' ELSE 'name ' END || i FROM n;
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
        INSERT INTO by_expression (email) SELECT 'user' || i || '@Example.com' FROM n;
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
        INSERT INTO with_check (code) SELECT 'CODE' || i FROM n;
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
        INSERT INTO plain (v) SELECT hex(randomblob(8)) FROM n;
        ",
    )
    .unwrap();
    conn
}

fn tables_skipped(result: &Value) -> Vec<(String, String)> {
    result["skipped"]
        .as_array()
        .unwrap_or_else(|| panic!("no skipped list: {result}"))
        .iter()
        .map(|s| {
            (
                s["table"].as_str().unwrap_or("").to_string(),
                s["not_checked"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The schemas attached to `conn` (nothing of ours may stay attached).
fn attached(conn: &Connection) -> Vec<String> {
    let mut stmt = conn.prepare("PRAGMA database_list").unwrap();
    let names = stmt
        .query_map([], |r| r.get::<_, String>(1))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    names
}

#[test]
fn backup_falls_back_to_the_page_copy_and_says_why() {
    let dir = tempdir();
    let tmp = dir.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    let src = dir.path().join("app.db");
    let conn = make_app_db(&src);
    // Rollback mode, whose default is `vacuum` (a WAL database streams its pages, which needs
    // no definitions: tests/streaming.rs).
    conn.execute_batch("PRAGMA journal_mode = DELETE").unwrap();
    let expected = digest_conn(&conn, "main");
    let opts = format!(r#"{{"temp_dir": {}}}"#, serde_json::json!(tmp));

    let r = call_json(
        &conn,
        &format!(
            "SELECT backup_to_file({}, {})",
            path_lit(dir.path().join("app.db.gz")),
            lit(&opts)
        ),
    );
    assert_eq!(r["method"], "pages", "{r}");
    let why = r["fallback"].as_str().unwrap_or_else(|| panic!("{r}"));
    assert!(
        why.contains("VACUUM INTO failed (no such collation sequence: APPCOLL")
            || why.contains("VACUUM INTO failed (no such function: app_upper"),
        "{why}"
    );
    assert!(why.contains("copied the pages"), "{why}");
    // The failed VACUUM INTO attempt left nothing, and neither did the backup.
    assert_eq!(list(&tmp), Vec::<String>::new());
    assert_no_temp_files_except(dir.path(), &["app.db-wal", "app.db-shm"]);

    // The backup holds the same content (read with the application's definitions).
    let restored = dir.path().join("restored.db");
    fs::write(&restored, decompress_cli(&dir.path().join("app.db.gz"))).unwrap();
    assert_eq!(digest_conn(&app(&restored), "main"), expected);

    // Forcing VACUUM INTO says what to do instead, and leaves nothing.
    let err = call_err(
        &conn,
        &format!(
            r#"SELECT backup_to_file({}, '{{"method": "vacuum"}}')"#,
            path_lit(dir.path().join("forced.db.gz"))
        ),
    );
    assert!(
        err.starts_with("backup_to_file: VACUUM INTO from "),
        "{err}"
    );
    assert!(err.contains("use method 'pages'"), "{err}");
    assert!(!dir.path().join("forced.db.gz").exists());
    assert_no_temp_files_except(dir.path(), &["app.db-wal", "app.db-shm"]);

    // Uncommitted writes of the caller: the page copy cannot take them either; say so.
    conn.execute_batch("BEGIN; INSERT INTO plain (v) VALUES ('uncommitted');")
        .unwrap();
    let err = call_err(
        &conn,
        &format!(
            "SELECT backup_to_file({})",
            path_lit(dir.path().join("busy.db.gz"))
        ),
    );
    assert!(err.contains("uncommitted writes"), "{err}");
    conn.execute_batch("ROLLBACK").unwrap();
    assert!(!dir.path().join("busy.db.gz").exists());
    assert_eq!(list(&tmp), Vec::<String>::new());

    // The sqlite3 CLI lacks the definitions: its VACUUM INTO fails the same way.
    drop(conn);
    let out = sqlite3_cli(
        &src,
        &["-bail"],
        &format!(
            "SELECT backup_to_file({}) ->> '$.method';",
            path_lit(dir.path().join("cli.db.zst"))
        ),
        None,
    );
    out.assert_ok();
    assert_eq!(out.stdout.trim(), "pages", "{}", out.stderr);
    assert_no_temp_files(dir.path());
}

#[test]
fn backup_to_s3_falls_back_too() {
    let server = s3server::S3Server::start();
    server.create_bucket("apps");
    let dir = tempdir();
    let conn = make_app_db(&dir.path().join("app.db"));
    conn.execute_batch("PRAGMA journal_mode = DELETE").unwrap(); // default `vacuum`
    let r = call_json(
        &conn,
        &format!(
            "SELECT backup_to_s3('s3://apps', 'app.db.zst', {})",
            lit(server.options_json().to_string())
        ),
    );
    assert_eq!(r["method"], "pages", "{r}");
    assert!(r["fallback"].is_string(), "{r}");
    assert!(server.object_path("apps", "app.db.zst").is_file());
    let v = call_json(
        &conn,
        &format!(
            "SELECT verify_backup('s3://apps/app.db.zst', {})",
            lit(server.options_json().to_string())
        ),
    );
    assert_eq!(v["integrity"], "ok", "{v}");
    assert_eq!(v["sha256"], r["sha256"], "{v}");
}

#[test]
fn checks_on_the_application_connection_are_full() {
    let dir = tempdir();
    let src = dir.path().join("app.db");
    let conn = make_app_db(&src);
    let expected = digest_conn(&conn, "main");
    let backup = dir.path().join("app.db.gz");
    call_json(
        &conn,
        &format!("SELECT backup_to_file({}, {PAGES})", path_lit(&backup)),
    );
    let before = attached(&conn);

    let v = call_json(
        &conn,
        &format!("SELECT verify_backup({})", path_lit(&backup)),
    );
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["integrity"], "ok", "{v}");
    assert_eq!(v["checked_on"], "caller", "{v}");
    assert!(v.get("skipped").is_none(), "{v}");
    assert_eq!(v["tables"], 4, "{v}");
    let q = call_json(
        &conn,
        &format!(
            r#"SELECT verify_backup({}, '{{"quick": true}}')"#,
            path_lit(&backup)
        ),
    );
    assert_eq!(q["integrity"], "ok", "{q}");

    // Restore to a file, and into another application connection.
    let restored = dir.path().join("restored.db");
    let r = call_json(
        &conn,
        &format!(
            "SELECT restore_backup({}, {})",
            path_lit(&backup),
            path_lit(&restored)
        ),
    );
    assert_eq!(r["integrity"], "ok", "{r}");
    assert_eq!(digest_conn(&app(&restored), "main"), expected);
    let target = app(&dir.path().join("target.db"));
    let r = call_json(
        &target,
        &format!("SELECT restore_backup({})", path_lit(&backup)),
    );
    assert_eq!(r["integrity"], "ok", "{r}");
    assert_eq!(r["checked_on"], "caller", "{r}");
    assert_eq!(digest_conn(&target, "main"), expected);
    assert_eq!(attached(&target), ["main"]);

    // Nothing of ours stays attached; no temp file is left.
    assert_eq!(attached(&conn), before);
    assert_no_temp_files_except(dir.path(), &["app.db-wal", "app.db-shm"]);
}

#[test]
fn while_the_caller_reads_or_cannot_attach_the_check_runs_apart() {
    let dir = tempdir();
    let conn = make_app_db(&dir.path().join("app.db"));
    let backup = dir.path().join("app.db.zst");
    call_json(
        &conn,
        &format!("SELECT backup_to_file({}, {PAGES})", path_lit(&backup)),
    );
    let before = attached(&conn);
    // The caller's statement scans a table: a copy attached now could not be detached.
    let mut stmt = conn
        .prepare(&format!(
            "SELECT verify_backup({}) FROM plain LIMIT 2",
            path_lit(&backup)
        ))
        .unwrap();
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    drop(stmt);
    for row in &rows {
        let v: Value = serde_json::from_str(row).unwrap();
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["checked_on"], "separate", "{v}");
        assert_eq!(v["integrity"], "partial", "{v}");
    }
    assert_eq!(attached(&conn), before);

    // Inside a transaction (ATTACH is refused there).
    conn.execute_batch("BEGIN").unwrap();
    let v = call_json(
        &conn,
        &format!("SELECT verify_backup({})", path_lit(&backup)),
    );
    assert_eq!(v["checked_on"], "separate", "{v}");
    conn.execute_batch("COMMIT").unwrap();

    // No room to attach one more database.
    conn.set_limit(rusqlite::limits::Limit::SQLITE_LIMIT_ATTACHED, 0)
        .unwrap();
    let v = call_json(
        &conn,
        &format!("SELECT verify_backup({})", path_lit(&backup)),
    );
    assert_eq!(v["checked_on"], "separate", "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(attached(&conn), before);
    assert_no_temp_files_except(dir.path(), &["app.db-wal", "app.db-shm"]);
}

#[test]
fn without_the_definitions_the_check_is_partial_and_says_what_it_skipped() {
    let dir = tempdir();
    let conn = make_app_db(&dir.path().join("app.db"));
    let backup = dir.path().join("app.db.gz");
    call_json(
        &conn,
        &format!("SELECT backup_to_file({}, {PAGES})", path_lit(&backup)),
    );
    drop(conn);

    let restored = dir.path().join("restored.db");
    let out = sqlite3_cli(
        Path::new(":memory:"),
        &["-bail"],
        &format!(
            "SELECT verify_backup({b});\nSELECT restore_backup({b}, {r});\n\
             SELECT verify_backup({b}, '{{\"quick\": true}}');",
            b = path_lit(&backup),
            r = path_lit(&restored)
        ),
        None,
    );
    out.assert_ok();
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    let v = &lines[0];
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["integrity"], "partial", "{v}");
    let skipped = tables_skipped(v);
    let expect = |table: &str, what: &str| {
        assert!(
            skipped.contains(&(table.to_string(), what.to_string())),
            "{table}: {what} not in {v}"
        );
    };
    // Their pages, the free list and the pages in no table were checked, with stand-ins.
    expect(
        "by_collation",
        "index entries, CHECK constraints and column values",
    );
    expect("by_expression", "index entries against the rows");
    expect(
        "with_check",
        "index entries, CHECK constraints and column values",
    );
    assert_eq!(skipped.len(), 3, "{v}");
    let reasons = v["skipped"].to_string();
    assert!(
        reasons.contains("no such collation sequence: APPCOLL"),
        "{v}"
    );
    assert!(reasons.contains("unknown function: app_upper()"), "{v}");
    assert!(!reasons.contains("corrupt"), "{v}");

    let r = &lines[1];
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["integrity"], "partial", "{r}");
    assert_eq!(r["restored"], restored.to_str().unwrap(), "{r}");
    // (A plain connection cannot check it either: the restore had to be partial.)
    assert!(integrity(&restored).starts_with("error: "));
    assert_eq!(
        digest_conn(&app(&restored), "main"),
        digest_conn(&app(&dir.path().join("app.db")), "main")
    );

    let q = &lines[2];
    assert_eq!(q["integrity"], "partial", "{q}");
    // quick_check compares no index entries: the expression index needs nothing.
    assert!(
        !tables_skipped(q).iter().any(|(t, _)| t == "by_expression"),
        "{q}"
    );
    assert_no_temp_files_except(dir.path(), &["app.db-wal", "app.db-shm"]);
}

/// Makes the backup's index `name` disagree with its table: its entries were built for
/// `old` and the schema now says `new`, so integrity_check finds rows missing from it.
fn damage_index(db: &Path, old: &str, new: &str) {
    let conn = app(db);
    conn.execute_batch("PRAGMA writable_schema = ON").unwrap();
    let n = conn
        .execute(
            "UPDATE sqlite_master SET sql = replace(sql, ?1, ?2) WHERE type = 'index' AND sql LIKE '%' || ?1 || '%'",
            [old, new],
        )
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn a_damaged_backup_is_still_corrupt() {
    let dir = tempdir();
    let conn = make_app_db(&dir.path().join("app.db"));
    let good = dir.path().join("good.db");
    call_json(
        &conn,
        &format!("SELECT backup_to_file({}, {PAGES})", path_lit(&good)),
    );

    // Damage in a table that needs nothing of the application: corrupt everywhere.
    let plain = dir.path().join("plain.db");
    fs::copy(&good, &plain).unwrap();
    damage_index(&plain, "ON plain(v)", "ON plain(id)");
    let err = call_err(
        &conn,
        &format!("SELECT verify_backup({})", path_lit(&plain)),
    );
    assert!(err.contains("failed integrity_check"), "{err}");
    assert!(err.contains("plain_v"), "{err}");
    let out = sqlite3_cli(
        Path::new(":memory:"),
        &[],
        &format!("SELECT verify_backup({});", path_lit(&plain)),
        None,
    );
    assert!(!out.ok(), "{}", out.stdout);
    assert!(
        out.stderr.contains("failed integrity_check"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("plain_v"), "{}", out.stderr);
    assert!(!out.stderr.contains("no such collation"), "{}", out.stderr);

    // Damage in the expression index: the application's connection sees it. (A connection
    // without app_upper cannot compare those entries: it says so, as a partial check.)
    let expr = dir.path().join("expr.db");
    fs::copy(&good, &expr).unwrap();
    damage_index(&expr, "app_upper(email)", "app_upper(email || 'x')");
    let err = call_err(&conn, &format!("SELECT verify_backup({})", path_lit(&expr)));
    assert!(err.contains("failed integrity_check"), "{err}");
    assert!(err.contains("by_expression_upper"), "{err}");
    let dest = dir.path().join("never.db");
    let err = call_err(
        &conn,
        &format!(
            "SELECT restore_backup({}, {})",
            path_lit(&expr),
            path_lit(&dest)
        ),
    );
    assert!(err.contains("by_expression_upper"), "{err}");
    assert!(!dest.exists());

    // Damaged pages of a table or index, even one whose full check needs the application's
    // definitions: corrupt, whoever checks.
    for object in ["plain", "by_collation", "by_collation_name", "with_check"] {
        let damaged = dir.path().join(format!("{object}-pages.db"));
        let mut bytes = fs::read(&good).unwrap();
        let page_size = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
        let root: i64 = Connection::open(&good)
            .unwrap()
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = ?1",
                [object],
                |r| r.get(0),
            )
            .unwrap();
        let at = (root as usize - 1) * page_size;
        bytes[at..at + 100].fill(0x55);
        fs::write(&damaged, &bytes).unwrap();
        let out = sqlite3_cli(
            Path::new(":memory:"),
            &[],
            &format!("SELECT verify_backup({});", path_lit(&damaged)),
            None,
        );
        assert!(!out.ok(), "{object}: {}", out.stdout);
        assert!(
            out.stderr.contains("verify_backup: ") && out.stderr.contains("_check"),
            "{object}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("no such"), "{object}: {}", out.stderr);
        let err = call_err(
            &conn,
            &format!("SELECT verify_backup({})", path_lit(&damaged)),
        );
        assert!(err.contains("_check"), "{object}: {err}");
        assert!(!err.contains("no such"), "{object}: {err}");
    }
    assert_eq!(attached(&conn), ["main"]);
    assert_no_temp_files_except(dir.path(), &["app.db-wal", "app.db-shm"]);
}

#[test]
fn python_create_collation_and_create_function() {
    let dir = tempdir();
    let d = dir.path().to_str().unwrap();
    let out = python(
        r#"
import json, os, sqlite3, sys
d = sys.argv[1]
def connect(path, app):
    conn = sqlite3.connect(path, isolation_level=None)
    if app:
        conn.create_collation("APPCOLL", lambda a, b: (a.lower() > b.lower()) - (a.lower() < b.lower()))
        conn.create_function("app_upper", 1, lambda s: s.upper(), deterministic=True)
    conn.enable_load_extension(True)
    conn.load_extension(os.environ["EXT"])
    return conn
app = connect(d + "/py.db", True)
app.executescript("""
CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT COLLATE APPCOLL, code TEXT CHECK (app_upper(code) = code));
CREATE INDEX t_name ON t(name);
CREATE INDEX t_upper ON t(app_upper(name));
INSERT INTO t (name, code) VALUES ('b', 'X'), ('A', 'Y');
""")
def call(conn, sql, *args):
    try:
        print(json.dumps(json.loads(conn.execute(sql, args).fetchone()[0])))
    except sqlite3.Error as e:
        print(json.dumps({"error": str(e)}))
call(app, "SELECT backup_to_file(?)", d + "/py.db.gz")
call(app, "SELECT verify_backup(?)", d + "/py.db.gz")
call(connect(":memory:", False), "SELECT verify_backup(?)", d + "/py.db.gz")
"#,
        &[d],
    );
    out.assert_ok();
    let lines: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert_eq!(lines[0]["method"], "pages", "{}", lines[0]);
    assert_eq!(lines[1]["integrity"], "ok", "{}", lines[1]);
    assert_eq!(lines[1]["checked_on"], "caller", "{}", lines[1]);
    assert_eq!(lines[2]["integrity"], "partial", "{}", lines[2]);
    assert_eq!(lines[2]["skipped"][0]["table"], "t", "{}", lines[2]);
}
