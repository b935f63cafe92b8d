//! restore_backup's start-up options, through the sqlite3 CLI as a container entrypoint runs
//! them: `newest` (a directory's or prefix's newest backup, optionally `match`), `if_missing`
//! (an existing database is left alone) and `missing_ok` (no backup yet is not an error).

mod common;

use std::fs::{self, File};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use common::calls::*;
use common::s3server::S3Server;
use common::*;
use serde_json::{json, Value};

/// `sqlite3 -bail :memory:` running `sql`: its JSON answer, or the error text.
fn cli(sql: &str) -> Result<Value, String> {
    let out = sqlite3_cli(
        Path::new(":memory:"),
        &["-bail"],
        &format!("{sql};\n"),
        None,
    );
    if out.ok() {
        Ok(serde_json::from_str(out.stdout.trim())
            .unwrap_or_else(|e| panic!("{e}: {}", out.stdout)))
    } else {
        Err(out.stderr)
    }
}

fn orders(db: &Path) -> i64 {
    open(db)
        .query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
        .unwrap()
}

/// A backup of a sample database with `rows` orders at `dir/name`, modified `age` ago.
fn backup_file(dir: &Path, name: &str, rows: u32, age: u64) {
    let work = tempdir();
    let db = work.path().join("app.db");
    make_sample_db(&db, Journal::Rollback, rows);
    to_file(&open(&db), &dir.join(name), &json!({}));
    let when = SystemTime::now() - Duration::from_secs(age);
    File::options()
        .write(true)
        .open(dir.join(name))
        .unwrap()
        .set_modified(when)
        .unwrap();
}

#[test]
fn newest_backup_of_a_directory_only_when_the_database_is_missing() {
    let backups = tempdir();
    let b = backups.path();
    backup_file(b, "app-1.db.gz", 4, 300);
    backup_file(b, "app-2.db.gz", 8, 200);
    backup_file(b, "other-3.db.gz", 12, 150);
    // Newer than every backup, but not one: passed over.
    fs::write(b.join("notes.txt"), b"not a backup").unwrap();
    let data = tempdir();
    let dest = data.path().join("app.db");
    let loc = b.display().to_string();

    let sql = restore_sql(
        &loc,
        Some(&dest),
        &json!({"newest": true, "if_missing": true}),
    );
    let r = cli(&sql).unwrap();
    assert_eq!(r["restored"], json!(dest.display().to_string()), "{r}");
    assert_eq!(
        r["location"],
        json!(b.join("other-3.db.gz").display().to_string())
    );
    assert_eq!(orders(&dest), 12);

    // Again: the database exists and is not touched.
    let before = fs::metadata(&dest).unwrap();
    let r = cli(&sql).unwrap();
    assert_eq!(
        r,
        json!({"restored": false, "reason": format!("{} exists", dest.display())})
    );
    let after = fs::metadata(&dest).unwrap();
    assert_eq!(
        (before.ino(), before.mtime_nsec()),
        (after.ino(), after.mtime_nsec())
    );
    assert_no_temp_files(data.path());

    // `match` chooses the series.
    let dest2 = data.path().join("app2.db");
    let r = cli(&restore_sql(
        &loc,
        Some(&dest2),
        &json!({"newest": true, "match": "app-*.db.gz"}),
    ))
    .unwrap();
    assert_eq!(
        r["location"],
        json!(b.join("app-2.db.gz").display().to_string())
    );
    assert_eq!(orders(&dest2), 8);
}

#[test]
fn no_backup_yet_is_ok_only_when_asked() {
    let backups = tempdir();
    let data = tempdir();
    let dest = data.path().join("app.db");
    let loc = backups.path().display().to_string();
    fs::write(backups.path().join("README"), b"backups go here").unwrap();

    let r = cli(&restore_sql(
        &loc,
        Some(&dest),
        &json!({"newest": true, "if_missing": true, "missing_ok": true}),
    ))
    .unwrap();
    assert_eq!(r, json!({"restored": false, "reason": "no backup"}));
    let err = cli(&restore_sql(&loc, Some(&dest), &json!({"newest": true}))).unwrap_err();
    assert!(
        err.contains(&format!(
            "there is no backup in {loc}: pass '{{\"missing_ok\": true}}'"
        )),
        "{err}"
    );
    // A series with no backup in it yet, and a named backup that does not exist.
    backup_file(backups.path(), "other.db.gz", 4, 10);
    let r = cli(&restore_sql(
        &loc,
        Some(&dest),
        &json!({"newest": true, "match": "app-*", "missing_ok": true}),
    ))
    .unwrap();
    assert_eq!(r["reason"], json!("no backup"));
    let named = backups.path().join("app.db.gz").display().to_string();
    let r = cli(&restore_sql(
        &named,
        Some(&dest),
        &json!({"missing_ok": true}),
    ))
    .unwrap();
    assert_eq!(r["reason"], json!("no backup"));
    assert_eq!(list(data.path()), Vec::<String>::new());
}

#[test]
fn contradictory_options_are_refused_before_any_work() {
    let data = tempdir();
    let dest = data.path().join("app.db");
    // The location does not even exist: the options are refused first.
    let loc = data.path().join("nowhere").display().to_string();
    let cases = [
        (
            json!({"match": "app-*"}),
            Some(&dest),
            "add \"newest\": true",
        ),
        (
            json!({"if_missing": true}),
            None,
            "option 'if_missing' needs a dest_path",
        ),
        (
            json!({"if_missing": true, "overwrite": true}),
            Some(&dest),
            "'if_missing' and 'overwrite' contradict each other",
        ),
        (json!({"newest": 1}), Some(&dest), "newest"),
    ];
    for (opts, dest, want) in cases {
        let err = cli(&restore_sql(&loc, dest.map(|p| p.as_path()), &opts)).unwrap_err();
        assert!(err.contains("restore_backup"), "{err}");
        assert!(err.contains(want), "{opts}: {err}");
    }
    assert_eq!(list(data.path()), Vec::<String>::new());
}

#[test]
fn newest_backup_under_an_s3_prefix() {
    let server = S3Server::start();
    server.create_bucket("bkt");
    let s3 = server.options_json();
    let work = tempdir();
    for (rows, now) in [(4, "2026-11-20T10:00:00Z"), (8, "2026-11-21T10:00:00Z")] {
        let db = work.path().join(format!("app{rows}.db"));
        make_sample_db(&db, Journal::Rollback, rows);
        to_s3(
            &open(&db),
            "s3://bkt/app",
            "db-%Y%m%d.db.gz",
            &merge(&s3, &json!({"now": now})),
        );
    }
    // Newer than the backups, without our metadata, not a database: passed over.
    fs::write(server.object_path("bkt", "app/notes.txt"), b"not a backup").unwrap();
    let data = tempdir();
    let dest = data.path().join("app.db");
    let opts = merge(&s3, &json!({"newest": true, "if_missing": true}));
    let r = cli(&restore_sql("s3://bkt/app", Some(&dest), &opts)).unwrap();
    assert_eq!(
        r["location"],
        json!("s3://bkt/app/db-20261121.db.gz"),
        "{r}"
    );
    assert_eq!(orders(&dest), 8);
    let r = cli(&restore_sql("s3://bkt/app", Some(&dest), &opts)).unwrap();
    assert_eq!(r["restored"], json!(false));

    let fresh = data.path().join("fresh.db");
    let r = cli(&restore_sql(
        "s3://bkt/empty",
        Some(&fresh),
        &merge(&opts, &json!({"missing_ok": true})),
    ))
    .unwrap();
    assert_eq!(r, json!({"restored": false, "reason": "no backup"}));
    assert!(!fresh.exists());
}
