//! The extension in the real sqlite3 CLI (Debian's SQLite 3.40), the way cron uses it.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use serde_json::Value;

fn repo_sql_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))
}

/// A script from sql/, with the shipped extension path replaced by the one under test.
fn script(name: &str) -> String {
    let text = fs::read_to_string(repo_sql_dir().join(name)).unwrap();
    text.replace("dist/release/sqlite_backup", &ext_load_name())
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `make demo`: sample.sql makes backups/demo.db, then demo.sql (and any other example in
/// sql/) runs against it with the extension loaded, in a directory holding backups/.
#[test]
fn sql_examples_run_in_the_cli() {
    let dir = tempdir();
    let cwd = dir.path();
    fs::create_dir(cwd.join("backups")).unwrap();
    let db = Path::new("backups/demo.db");

    let mut examples: Vec<String> = list(repo_sql_dir())
        .into_iter()
        .filter(|n| n.ends_with(".sql"))
        .collect();
    assert!(examples.contains(&"sample.sql".to_string()));
    assert!(examples.contains(&"demo.sql".to_string()));
    // sample.sql first: the others use its database.
    examples.retain(|n| n != "sample.sql");
    examples.insert(0, "sample.sql".to_string());

    let mut demo_out = None;
    for name in &examples {
        let out = sqlite3_cli(db, &["-bail"], &script(name), Some(cwd));
        out.assert_ok();
        assert!(out.stderr.is_empty(), "{name}: {}", out.stderr);
        for v in json_lines(&out.stdout) {
            assert_ne!(v["ok"], false, "{name}: {v}");
        }
        if name == "demo.sql" {
            demo_out = Some(out.stdout);
        }
    }
    let stdout = demo_out.unwrap();
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("v0.1.0"));
    let results = json_lines(&stdout);
    assert_eq!(results.len(), 3, "{stdout}");
    let (gz, zst, verified) = (&results[0], &results[1], &results[2]);
    let gz_name = gz["destination"].as_str().unwrap();
    assert!(
        gz_name.starts_with("backups/demo-") && gz_name.ends_with(".db.gz"),
        "{gz}"
    );
    assert_eq!(gz["compression"], "gzip");
    assert_eq!(gz["method"], "stream"); // the sample database is in WAL mode
    assert_eq!(zst["compression"], "zstd");
    assert_eq!(zst["sha256"], gz["sha256"], "same snapshot, two codecs");
    assert_eq!(verified["ok"], true);
    assert_eq!(verified["integrity"], "ok");
    assert_eq!(verified["tables"], 2);
    assert_eq!(verified["location"], gz["destination"]);
    assert_eq!(verified["sha256"], gz["sha256"]);

    // The files are where the JSON says, and gunzip gives the sample database.
    let backup = cwd.join(gz_name);
    let copy = decompress_to(&backup, cwd, "check.db");
    let leftovers = list(&cwd.join("backups"));
    assert_eq!(digest(&copy), digest(&cwd.join(db)));
    // Nothing left beside the source or the backups once the CLI closed demo.db: a WAL
    // database closed by its last connection has no -wal or -shm file (checked before
    // digest() opened demo.db read-only, which may leave them itself).
    assert!(
        leftovers.iter().all(|n| !n.starts_with(".sqlite-backup-")
            && !n.ends_with("-wal")
            && !n.ends_with("-shm")),
        "left behind in backups/: {leftovers:?}"
    );
}

fn function_list(out: &Output) -> Vec<String> {
    out.stdout.lines().map(str::to_string).collect()
}

const LIST_SQL: &str = "SELECT name FROM pragma_function_list \
     WHERE name LIKE 'backup%' OR name LIKE '%backup' ORDER BY 1;\n";

/// Exactly these functions, and only once the extension is loaded.
#[test]
fn registers_exactly_the_documented_functions() {
    let dir = tempdir();
    let db = dir.path().join("f.db");
    let before = sqlite3_plain(&db, LIST_SQL);
    before.assert_ok();
    assert_eq!(function_list(&before), Vec::<String>::new());

    let after = sqlite3_cli(&db, &["-bail"], LIST_SQL, None);
    after.assert_ok();
    assert_eq!(function_list(&after), FUNCTIONS);

    let out = sqlite3_cli(
        &db,
        &["-bail"],
        "SELECT backup_version();\nSELECT backup_debug();\nSELECT sqlite_version();\n",
        None,
    );
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{}", out.stdout);
    assert_eq!(lines[0], "v0.1.0");
    assert_eq!(lines[1], "Version: v0.1.0");
    let commit = lines[2].strip_prefix("Commit: ").unwrap();
    assert!(!commit.is_empty());
    // The host's SQLite (the CLI's), not the one the crate was built against.
    assert_eq!(lines[3], format!("SQLite: {}", lines[5]));
    assert!(lines[5].starts_with("3."), "{}", lines[5]);
    let target = lines[4].strip_prefix("Target: ").unwrap();
    assert!(target.contains("linux"), "{target}");
}

/// Loading again into the same connection through SQL (an application that runs
/// `SELECT load_extension(…)` on every checkout of a pooled connection) succeeds and changes
/// nothing; SQLite would refuse to redefine the functions while that SELECT runs.
#[test]
fn loading_twice_through_sql_is_harmless() {
    let dir = tempdir();
    let db = dir.path().join("twice.db");
    let ext = ext_load_name();
    let out = sqlite3_cli(
        &db,
        &["-bail"],
        &format!(
            "SELECT load_extension('{ext}') IS NULL;\nSELECT load_extension('{ext}') IS NULL;\n\
             SELECT backup_version();\n{LIST_SQL}"
        ),
        None,
    );
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[..3], ["1", "1", "v0.1.0"], "{}", out.stdout);
    assert_eq!(lines[3..], *FUNCTIONS, "registered once each");

    // The same in rusqlite (a newer SQLite), after a load through the API.
    let conn = open(&db);
    unsafe { conn.load_extension_enable().unwrap() };
    let again: Option<String> = conn
        .query_row(&format!("SELECT load_extension('{ext}')"), [], |r| r.get(0))
        .unwrap();
    assert_eq!(again, None);
    let version: String = conn
        .query_row("SELECT backup_version()", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, "v0.1.0");
}

/// A failed backup or verify makes the CLI exit non-zero (cron must notice), whether the SQL
/// comes as an argument or on stdin, with or without -bail.
#[test]
fn failures_make_the_cli_exit_non_zero() {
    let dir = tempdir();
    let db = dir.path().join("src.db");
    make_sample_db(&db, Journal::Wal, 100);
    let missing = dir.path().join("missing");
    let good = dir.path().join("good.db.gz");

    // As a cron line: sqlite3 -cmd '.load …' db "SELECT backup_to_file(…)"
    let out = {
        let mut cmd = std::process::Command::new(SQLITE3);
        cmd.arg("-cmd")
            .arg(format!(".load {}", ext_load_name()))
            .arg(&db)
            .arg(format!(
                "SELECT backup_to_file({})",
                path_lit(missing.join("x-%H.db.gz"))
            ));
        cmd.output().unwrap()
    };
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "backup_to_file: directory {} does not exist: create it first",
            missing.display()
        )),
        "{stderr}"
    );

    // On stdin without -bail: the good backup after it still runs, the exit is still 1.
    let sql = format!(
        "SELECT backup_to_file({});\nSELECT backup_to_file({});\n",
        path_lit(missing.join("x.db.gz")),
        path_lit(&good)
    );
    let out = sqlite3_cli(&db, &[], &sql, None);
    assert!(!out.ok(), "{}", out.stdout);
    assert!(
        out.stderr.contains("backup_to_file: directory"),
        "{}",
        out.stderr
    );
    assert!(good.exists());
    fs::remove_file(&good).unwrap();

    // With -bail the rest does not run.
    let out = sqlite3_cli(&db, &["-bail"], &sql, None);
    assert!(!out.ok());
    assert!(!good.exists());

    // verify_backup of something that is not a backup.
    let junk = dir.path().join("junk.db.gz");
    fs::write(&junk, b"not a backup").unwrap();
    let out = sqlite3_cli(
        &db,
        &[],
        &format!("SELECT verify_backup({});\n", path_lit(&junk)),
        None,
    );
    assert!(!out.ok());
    assert!(out.stderr.contains("verify_backup: "), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

/// Relative names resolve against the CLI's working directory, with or without a directory
/// part: `backup_to_file('app.db.gz')` and `restore_backup('b/x.gz', 'restored.db')`.
#[test]
fn relative_paths_in_the_working_directory() {
    let dir = tempdir();
    let cwd = dir.path();
    fs::create_dir(cwd.join("b")).unwrap();
    make_sample_db(&cwd.join("src.db"), Journal::Rollback, 200);
    let expected = digest(&cwd.join("src.db"));
    let sql = "SELECT backup_to_file('app.db.gz');\n\
               SELECT backup_to_file('b/app.db.zst');\n\
               SELECT verify_backup('app.db.gz');\n\
               SELECT restore_backup('b/app.db.zst', 'b/restored.db');\n\
               SELECT restore_backup('app.db.gz', 'restored.db');\n";
    let out = sqlite3_cli(Path::new("src.db"), &["-bail"], sql, Some(cwd));
    out.assert_ok();
    let results = json_lines(&out.stdout);
    assert_eq!(results.len(), 5, "{}", out.stdout);
    assert_eq!(results[4]["restored"], "restored.db");
    assert_eq!(digest(&cwd.join("b/restored.db")), expected);
    assert_eq!(digest(&cwd.join("restored.db")), expected);
    assert_no_temp_files(cwd);
    assert_no_temp_files(&cwd.join("b"));
}
