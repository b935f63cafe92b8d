//! Incremental backups (#15): chains across codecs restore byte for byte, a missing or
//! damaged link is named, retention never breaks a chain, a kill leaves the chain intact,
//! the full_every policies, S3, if_changed, encrypted (.age) chains.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::age::{age_key, AGE_MAGIC};
use common::*;
use rusqlite::Connection;
use serde_json::Value;

/// Some writes: rows appended, a few updated, a few deleted.
fn activity(conn: &Connection, step: u32) {
    conn.execute_batch(&format!(
        "INSERT INTO orders (customer_id, total, status, note, payload)
           SELECT 1, {step}, 'open', 'step {step}', randomblob(200) FROM generate_series(1, 20);
         UPDATE customers SET score = score + {step} WHERE id % 97 = {step} % 97;
         DELETE FROM orders WHERE id % 211 = {step};"
    ))
    .unwrap_or_else(|_| {
        // The Debian CLI's generate_series is an extension: rusqlite's bundled SQLite lacks it.
        conn.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20)
               INSERT INTO orders (customer_id, total, status, note, payload)
               SELECT 1, {step}, 'open', 'step {step}', randomblob(200) FROM n;
             UPDATE customers SET score = score + {step} WHERE id % 97 = {step} % 97;
             DELETE FROM orders WHERE id % 211 = {step};"
        ))
        .unwrap()
    });
}

fn backup(conn: &Connection, pattern: &Path, options: &str) -> Value {
    call_json(
        conn,
        &format!(
            "SELECT backup_to_file({}, {})",
            path_lit(pattern),
            lit(options)
        ),
    )
}

fn at(minute: u32) -> String {
    format!("2026-01-01T{:02}:{:02}:00Z", minute / 60, minute % 60)
}

fn sha_of(path: &Path) -> String {
    sha256_hex(&fs::read(path).unwrap())
}

/// Restores `backup` into a new file in `dir` and returns it.
fn restore(conn: &Connection, backup: &str, dir: &Path) -> PathBuf {
    let dest = dir.join(format!("restored-{}.db", fastrand_name()));
    let out = call_json(
        conn,
        &format!(
            "SELECT restore_backup({}, {})",
            lit(backup),
            path_lit(&dest)
        ),
    );
    assert_eq!(out["ok"], true, "{out}");
    dest
}

fn fastrand_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

struct Taken {
    url: String,
    sha256: String,
    digest: String,
    out: Value,
}

impl Taken {
    /// A backup's result, with the digest of the database it was taken from (now).
    fn of(conn: &Connection, out: Value) -> Taken {
        Taken {
            url: out["destination"].as_str().unwrap().to_string(),
            sha256: out["sha256"].as_str().unwrap().to_string(),
            digest: digest_conn(conn, "main"),
            out,
        }
    }
}

/// A chain of `n` backups of `conn` in `dir/b`, one codec after another, with activity between.
fn chain(conn: &Connection, dir: &Path, n: u32, extra: &str) -> Vec<Taken> {
    let exts = ["zst", "gz", "db"];
    let mut taken = Vec::new();
    for i in 0..n {
        if i > 0 {
            activity(conn, i);
        }
        let ext = exts[i as usize % exts.len()];
        let pattern = dir.join(format!("b/app-%H%M.{ext}"));
        let out = backup(
            conn,
            &pattern,
            &format!(
                r#"{{"incremental": true, "match": "app-*", "now": "{}"{extra}}}"#,
                at(i)
            ),
        );
        taken.push(Taken::of(conn, out));
    }
    taken
}

fn setup() -> (tempfile::TempDir, Connection) {
    let dir = tempdir();
    fs::create_dir(dir.path().join("b")).unwrap();
    let db = dir.path().join("app.db");
    make_sample_db(&db, Journal::Wal, 3000);
    let conn = open(&db);
    (dir, conn)
}

#[test]
fn a_chain_across_codecs_restores_every_backup_byte_for_byte() {
    let (dir, conn) = setup();
    let taken = chain(&conn, dir.path(), 5, "");
    assert_eq!(taken[0].out["kind"], "full", "{}", taken[0].out);
    assert_eq!(
        taken[0].out["full_reason"],
        "the first backup of the series"
    );
    for (i, t) in taken.iter().enumerate().skip(1) {
        let out = &t.out;
        assert_eq!(out["kind"], "incremental", "{out}");
        assert_eq!(out["depth"], i as u64, "{out}");
        assert_eq!(
            out["base"].as_str().unwrap(),
            Path::new(&taken[i - 1].url)
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
        );
        let changed = out["changed_pages"].as_u64().unwrap();
        let pages = out["page_count"].as_u64().unwrap();
        assert!(changed > 0 && changed * 4 < pages, "{out}");
        // Even uncompressed, only the changed pages are stored.
        assert!(
            out["stored_bytes"].as_u64().unwrap() * 3 < out["bytes"].as_u64().unwrap(),
            "{out}"
        );
    }
    // The full backup is a plain compressed database.
    let full = decompress_to(Path::new(&taken[0].url), dir.path(), "full.db");
    assert_eq!(sha_of(&full), taken[0].sha256);
    for t in &taken {
        let restored = restore(&conn, &t.url, dir.path());
        assert_eq!(sha_of(&restored), t.sha256, "{}", t.url);
        assert_eq!(digest(&restored), t.digest, "{}", t.url);
        let verified = call_json(&conn, &format!("SELECT verify_backup({})", lit(&t.url)));
        assert_eq!(verified["ok"], true);
        assert_eq!(verified["sha256"], t.sha256.as_str());
    }
    assert_no_temp_files(&dir.path().join("b"));
}

fn name_of(url: &str) -> &str {
    Path::new(url).file_name().unwrap().to_str().unwrap()
}

/// Writes `bytes` over `path`, keeping its modification time (the backup's time).
fn rewrite(path: &Path, bytes: &[u8]) {
    let modified = fs::metadata(path).unwrap().modified().unwrap();
    fs::write(path, bytes).unwrap();
    let file = fs::File::options().write(true).open(path).unwrap();
    file.set_modified(modified).unwrap();
}

#[test]
fn a_missing_or_damaged_link_is_named_and_the_next_backup_starts_a_new_chain() {
    let (dir, conn) = setup();
    let taken = chain(&conn, dir.path(), 5, "");
    let b = dir.path().join("b");
    let newest = &taken[4].url;
    let dest = dir.path().join("out.db");
    let restore_err = |url: &str| {
        call_err(
            &conn,
            &format!("SELECT restore_backup({}, {})", lit(url), path_lit(&dest)),
        )
    };

    // A damaged page in an uncompressed incremental (app-0002.db): named, with who needs it.
    let damaged = b.join(name_of(&taken[2].url));
    let good = fs::read(&damaged).unwrap();
    let mut bad = good.clone();
    let pos = bad.len() - 100;
    bad[pos] ^= 0xff;
    rewrite(&damaged, &bad);
    let err = restore_err(newest);
    assert!(
        err.contains(&format!(
            "backup {} (needed by {newest}) is damaged: page",
            damaged.display()
        )),
        "{err}"
    );
    let err = call_err(
        &conn,
        &format!("SELECT verify_backup({})", lit(&taken[2].url)),
    );
    assert!(err.contains("is damaged"), "{err}");
    assert!(!dest.exists());
    rewrite(&damaged, &good);

    // A damaged full backup.
    let full = b.join(name_of(&taken[0].url));
    let good_full = fs::read(&full).unwrap();
    let mut bad = good_full.clone();
    let pos = bad.len() / 2;
    bad[pos] ^= 0xff;
    rewrite(&full, &bad);
    let err = restore_err(newest);
    assert!(err.contains(&format!("backup {}", full.display())), "{err}");
    assert!(err.contains("is damaged"), "{err}");
    rewrite(&full, &good_full);

    // A damaged page list.
    let pages = b.join(format!("{}.pages", name_of(&taken[3].url)));
    let good_pages = fs::read(&pages).unwrap();
    let mut bad = good_pages.clone();
    let pos = bad.len() - 40;
    bad[pos] ^= 0xff;
    rewrite(&pages, &bad);
    let err = restore_err(newest);
    assert!(
        err.contains(&format!("{} is damaged", pages.display())),
        "{err}"
    );
    rewrite(&pages, &good_pages);

    // A missing link (the gz incremental).
    let missing = b.join(name_of(&taken[1].url));
    fs::remove_file(&missing).unwrap();
    let err = restore_err(newest);
    assert!(
        err.contains(&format!(
            "backup {} is missing, and {newest} builds on it",
            missing.display()
        )),
        "{err}"
    );
    assert!(!dest.exists());
    assert_no_temp_files(&b);
    // Backups that do not need it still restore.
    let restored = restore(&conn, &taken[0].url, dir.path());
    assert_eq!(sha_of(&restored), taken[0].sha256);
    // A missing page list.
    fs::remove_file(b.join(format!("{}.pages", name_of(&taken[2].url)))).unwrap();
    let err = restore_err(&taken[2].url);
    assert!(err.contains("is missing"), "{err}");

    // The next backup cannot build on a broken chain: a full one, which says why.
    activity(&conn, 9);
    let out = backup(
        &conn,
        &b.join("app-%H%M.zst"),
        &format!(
            r#"{{"incremental": true, "match": "app-*", "now": "{}"}}"#,
            at(10)
        ),
    );
    assert_eq!(out["kind"], "full", "{out}");
    assert!(
        out["full_reason"]
            .as_str()
            .unwrap()
            .contains("its chain cannot be read"),
        "{out}"
    );
    let restored = restore(&conn, out["destination"].as_str().unwrap(), dir.path());
    assert_eq!(digest(&restored), digest_conn(&conn, "main"));
}

#[test]
fn retention_keeps_what_a_kept_backup_needs_and_deletes_whole_chains() {
    let (dir, conn) = setup();
    let b = dir.path().join("b");
    let taken = chain(&conn, dir.path(), 5, "");
    // keep_last 2 on a chain of 5: the newest two need every older one.
    let out = call_json(
        &conn,
        &format!(
            r#"SELECT backup_prune({}, '{{"keep_last": 2, "dry_run": true, "match": "app-*"}}')"#,
            path_lit(&b)
        ),
    );
    assert_eq!(out["deleted"], serde_json::json!([]), "{out}");
    let kept = out["kept"].as_array().unwrap();
    assert_eq!(kept.len(), 5, "{out}");
    let full = &kept[4];
    assert_eq!(full["name"], name_of(&taken[0].url));
    assert_eq!(
        full["reasons"],
        serde_json::json!([format!("needed by {}", name_of(&taken[1].url))])
    );
    // Page lists are not rows of their own.
    assert!(!out.to_string().contains(".pages"), "{out}");

    // A second chain (full_every 2 from here): the first chain can go, page lists with it.
    let mut names = Vec::new();
    for i in 5..8 {
        activity(&conn, i);
        let out = backup(
            &conn,
            &b.join("app-%H%M.zst"),
            &format!(
                r#"{{"incremental": true, "full_every": 2, "match": "app-*", "now": "{}",
                     "keep": {{"keep_last": 1}}}}"#,
                at(i)
            ),
        );
        names.push((
            out["kind"].clone(),
            out["destination"].as_str().unwrap().to_string(),
        ));
    }
    // 5 is a full (the chain had 5 backups: full_every 2 reached), 6 builds on it, 7 a full.
    let kinds: Vec<&str> = names.iter().map(|(k, _)| k.as_str().unwrap()).collect();
    assert_eq!(kinds, ["full", "incremental", "full"]);
    let left = list(&b);
    let newest = name_of(&names[2].1);
    assert_eq!(left, [newest.to_string(), format!("{newest}.pages")]);
    let restored = restore(&conn, &names[2].1, dir.path());
    assert_eq!(digest(&restored), digest_conn(&conn, "main"));
}

#[test]
fn backup_list_shows_kind_and_base_and_no_page_lists() {
    let (dir, conn) = setup();
    let b = dir.path().join("b");
    let taken = chain(&conn, dir.path(), 3, "");
    let mut stmt = conn
        .prepare("SELECT name, kind, base, backup FROM backup_list(?1) ORDER BY name")
        .unwrap();
    let rows: Vec<(String, Option<String>, Option<String>, i64)> = stmt
        .query_map([b.to_str().unwrap()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let n = |i: usize| name_of(&taken[i].url).to_string();
    assert_eq!(
        rows,
        [
            (n(0), Some("full".into()), None, 1),
            (n(1), Some("incremental".into()), Some(n(0)), 1),
            (n(2), Some("incremental".into()), Some(n(1)), 1),
        ]
    );
    // restore_backup newest picks the newest incremental and rebuilds it.
    let dest = dir.path().join("newest.db");
    let out = call_json(
        &conn,
        &format!(
            r#"SELECT restore_backup({}, {}, '{{"newest": true}}')"#,
            path_lit(&b),
            path_lit(&dest)
        ),
    );
    assert_eq!(out["location"], taken[2].url.as_str(), "{out}");
    assert_eq!(sha_of(&dest), taken[2].sha256);
}

#[test]
fn if_changed_skips_an_unchanged_database_and_full_every_policies() {
    let (dir, conn) = setup();
    let b = dir.path().join("b");
    let run = |minute: u32, extra: &str| {
        backup(
            &conn,
            &b.join("app-%H%M.zst"),
            &format!(r#"{{"incremental": true, "now": "{}"{extra}}}"#, at(minute)),
        )
    };
    let first = run(0, r#", "full_every": "1h""#);
    assert_eq!(first["kind"], "full");
    let skipped = run(1, r#", "if_changed": true"#);
    assert_eq!(skipped["skipped"], true, "{skipped}");
    assert_eq!(skipped["same_as"], first["destination"]);
    assert_eq!(list(&b).len(), 2);
    activity(&conn, 1);
    let second = run(30, r#", "full_every": "1h", "if_changed": true"#);
    assert_eq!(second["kind"], "incremental", "{second}");
    let skipped = run(31, r#", "if_changed": true"#);
    assert_eq!(skipped["same_as"], second["destination"]);
    // An hour after the full: a new full.
    activity(&conn, 2);
    let third = run(61, r#", "full_every": "1h""#);
    assert_eq!(third["kind"], "full", "{third}");
    assert!(third["full_reason"]
        .as_str()
        .unwrap()
        .contains("full_every"));
    // Most pages rewritten twice: the second time, the chain would store more than a full.
    let rewrite = "UPDATE orders SET payload = randomblob(200)";
    conn.execute_batch(rewrite).unwrap();
    let fourth = run(62, "");
    assert_eq!(fourth["kind"], "incremental", "{fourth}");
    conn.execute_batch(rewrite).unwrap();
    let fifth = run(63, "");
    assert_eq!(fifth["kind"], "full", "{fifth}");
    assert_eq!(
        fifth["full_reason"],
        "the chain would store more than a new full backup"
    );
    // full_every 1: every backup is full; with if_changed, the hash pass comes first, then
    // the full one's pass in the same read transaction.
    activity(&conn, 3);
    assert_eq!(run(64, r#", "full_every": 1"#)["kind"], "full");
    activity(&conn, 4);
    let hashed_first = run(65, r#", "full_every": 1, "if_changed": true"#);
    assert_eq!(hashed_first["kind"], "full", "{hashed_first}");
    // A full one decided before the pass, after it, and after a hash pass: each restores.
    for out in [&third, &fifth, &hashed_first] {
        assert_eq!(out["method"], "stream", "{out}");
        let restored = restore(&conn, out["destination"].as_str().unwrap(), dir.path());
        assert_eq!(sha_of(&restored), out["sha256"].as_str().unwrap(), "{out}");
    }
}

#[test]
fn bad_options_are_refused_before_any_work() {
    let (dir, conn) = setup();
    let b = dir.path().join("b");
    let err_for = |pattern: &str, options: &str| {
        call_err(
            &conn,
            &format!(
                "SELECT backup_to_file({}, {})",
                path_lit(b.join(pattern)),
                lit(options)
            ),
        )
    };
    let cases = [
        (
            "a.zst",
            r#"{"full_every": 3}"#,
            "option 'full_every' goes with",
        ),
        (
            "a.zst",
            r#"{"incremental": true, "full_every": 0}"#,
            "must be a count from 1",
        ),
        (
            "a.zst",
            r#"{"incremental": true, "full_every": "soon"}"#,
            "cannot read 'soon'",
        ),
        (
            "a.zst",
            r#"{"incremental": true, "method": "vacuum"}"#,
            "drop method 'vacuum'",
        ),
        (
            "a.zst.age",
            r#"{"incremental": true, "recipients": ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]}"#,
            "needs option 'identity_file'",
        ),
    ];
    for (pattern, options, expected) in cases {
        let err = err_for(pattern, options);
        assert!(err.starts_with("backup_to_file: "), "{err}");
        assert!(err.contains(expected), "{options}: {err}");
    }
    assert_eq!(list(&b), Vec::<String>::new());
    // A name that exists is never replaced (later backups may build on it).
    backup(&conn, &b.join("same.zst"), r#"{"incremental": true}"#);
    let err = err_for("same.zst", r#"{"incremental": true}"#);
    assert!(
        err.contains("an incremental backup never replaces one"),
        "{err}"
    );
    assert_eq!(list(&b), ["same.zst", "same.zst.pages"]);
}

/// The page list is stored, then the sqlite3 CLI is killed while it compresses the
/// incremental's pages: the previous chain restores, the lone page list is not a backup, and
/// the next backup builds on the previous chain and removes it; no temp file stays.
#[test]
fn kill_9_mid_incremental_leaves_the_previous_chain_intact() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let dir = tempdir();
    let b = dir.path().join("b");
    let tmp = dir.path().join("tmp");
    fs::create_dir(&b).unwrap();
    fs::create_dir(&tmp).unwrap();
    let (conn, _) = big_db(dir.path());
    let options = |minute: u32| {
        format!(
            r#"{{"incremental": true, "match": "big-*", "now": "{}", "temp_dir": {}, "level": 19, "threads": 1}}"#,
            at(minute),
            serde_json::Value::from(tmp.to_str().unwrap())
        )
    };
    let pattern = b.join("big-%H%M.zst");
    let sql = |minute: u32| {
        format!(
            "SELECT backup_to_file({}, {});",
            path_lit(&pattern),
            lit(options(minute))
        )
    };
    let first = call_json(&conn, &sql(0).replace(';', ""));
    assert_eq!(first["kind"], "full");
    conn.execute_batch("UPDATE blobs SET data = randomblob(100000) WHERE id = 1")
        .unwrap();
    let second = call_json(&conn, &sql(1).replace(';', ""));
    assert_eq!(second["kind"], "incremental");
    // Half the pages change: the level-19 compression of the next one takes seconds.
    conn.execute_batch("UPDATE blobs SET data = randomblob(100000) WHERE id % 2 = 0")
        .unwrap();
    let mut child = Command::new(SQLITE3)
        .arg("-bail")
        .arg("-cmd")
        .arg(format!(".load {}", ext_load_name()))
        .arg(dir.path().join("big.db"))
        .arg(sql(2))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pages = b.join("big-0002.zst.pages");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pages.exists() {
        assert!(child.try_wait().unwrap().is_none(), "sqlite3 ended early");
        assert!(Instant::now() < deadline, "no page list after 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!b.join("big-0002.zst").exists(), "killed too late");

    // The previous chain is whole; the lone page list is no backup.
    let dest = dir.path().join("restored.db");
    let out = call_json(
        &conn,
        &format!(
            r#"SELECT restore_backup({}, {}, '{{"newest": true}}')"#,
            path_lit(&b),
            path_lit(&dest)
        ),
    );
    assert_eq!(out["sha256"], second["sha256"], "{out}");
    let backups: i64 = conn
        .query_row(
            "SELECT count(*) FROM backup_list(?1) WHERE backup = 1",
            [b.to_str().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(backups, 2);

    // The next backup continues the chain and removes the page list; nothing else is left.
    let next = call_json(&conn, &sql(3).replace(';', ""));
    assert_eq!(next["kind"], "incremental", "{next}");
    assert_eq!(next["base"], "big-0001.zst");
    assert!(!pages.exists());
    assert_eq!(list(&tmp), Vec::<String>::new());
    assert_no_temp_files(&b);
    let restored = restore(&conn, next["destination"].as_str().unwrap(), dir.path());
    assert_eq!(sha_of(&restored), next["sha256"].as_str().unwrap());
}

#[test]
fn an_s3_chain_restores_lists_and_prunes() {
    use common::s3server::S3Server;
    let server = S3Server::start();
    server.create_bucket("bkt");
    let dir = tempdir();
    let db = dir.path().join("app.db");
    make_sample_db(&db, Journal::Wal, 3000);
    let conn = open(&db);
    let s3 = server.options_json();
    let mut taken = Vec::new();
    for i in 0..3 {
        if i > 0 {
            activity(&conn, i);
        }
        let mut opts = s3.clone();
        opts["incremental"] = true.into();
        opts["now"] = at(i).into();
        let out = call_json(
            &conn,
            &format!(
                "SELECT backup_to_s3('s3://bkt/app', 'db-%H%M.zst', {})",
                lit(opts.to_string())
            ),
        );
        taken.push(out);
    }
    assert_eq!(taken[0]["kind"], "full");
    assert_eq!(taken[2]["kind"], "incremental");
    assert_eq!(taken[2]["base"], "db-0001.zst");
    let s3_lit = lit(s3.to_string());
    for t in &taken {
        let dest = dir.path().join(format!("r-{}.db", fastrand_name()));
        let out = call_json(
            &conn,
            &format!(
                "SELECT restore_backup({}, {}, {s3_lit})",
                lit(t["destination"].as_str().unwrap()),
                path_lit(&dest)
            ),
        );
        assert_eq!(out["sha256"], t["sha256"], "{out}");
        assert_eq!(sha_of(&dest), t["sha256"].as_str().unwrap());
    }
    let rows: Vec<(String, Option<String>, Option<String>)> = conn
        .prepare("SELECT name, kind, base FROM backup_list('s3://bkt/app', ?1) ORDER BY name")
        .unwrap()
        .query_map([s3.to_string()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rows,
        [
            ("db-0000.zst".into(), Some("full".into()), None),
            (
                "db-0001.zst".into(),
                Some("incremental".into()),
                Some("db-0000.zst".into())
            ),
            (
                "db-0002.zst".into(),
                Some("incremental".into()),
                Some("db-0001.zst".into())
            ),
        ]
    );
    let mut prune = s3.clone();
    prune["keep_last"] = 1.into();
    let out = call_json(
        &conn,
        &format!(
            "SELECT backup_prune('s3://bkt/app', {})",
            lit(prune.to_string())
        ),
    );
    assert_eq!(out["deleted"], serde_json::json!([]), "{out}");
    assert_eq!(out["kept"].as_array().unwrap().len(), 3, "{out}");
    // From the bucket's root the names carry the prefix: the chain is still followed.
    prune["match"] = "app/*".into();
    prune["dry_run"] = true.into();
    let out = call_json(
        &conn,
        &format!(
            "SELECT backup_prune('s3://bkt', {})",
            lit(prune.to_string())
        ),
    );
    assert_eq!(out["deleted"], serde_json::json!([]), "{out}");
    assert_eq!(
        out["kept"][2]["reasons"],
        serde_json::json!(["needed by app/db-0001.zst"]),
        "{out}"
    );
}

/// A database that shrinks and grows again (auto_vacuum moves pages and cuts the file): every
/// backup of the chain still restores byte for byte.
#[test]
fn a_chain_through_shrinking_and_growing_restores_byte_for_byte() {
    let dir = tempdir();
    let b = dir.path().join("b");
    fs::create_dir(&b).unwrap();
    let conn = open(dir.path().join("auto.db"));
    conn.execute_batch(
        "PRAGMA auto_vacuum = FULL;
         CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)
         INSERT INTO t SELECT i, randomblob(3000) FROM n;",
    )
    .unwrap();
    let steps = [
        "UPDATE t SET data = randomblob(3000) WHERE id = 7",
        "DELETE FROM t WHERE id > 250",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
         INSERT INTO t (data) SELECT randomblob(3000) FROM n",
        "DELETE FROM t WHERE id % 3 = 0",
    ];
    let mut taken = Vec::new();
    for (i, step) in std::iter::once("").chain(steps).enumerate() {
        if !step.is_empty() {
            conn.execute_batch(step).unwrap();
        }
        let out = backup(
            &conn,
            &b.join("auto-%H%M.zst"),
            &format!(
                r#"{{"incremental": true, "full_every": 10, "now": "{}"}}"#,
                at(i as u32)
            ),
        );
        taken.push(out);
    }
    let kinds: Vec<&str> = taken.iter().map(|t| t["kind"].as_str().unwrap()).collect();
    // The shrinking and the growing backups are incrementals.
    assert_eq!(
        kinds[..4],
        ["full", "incremental", "incremental", "incremental"]
    );
    let counts: Vec<u64> = taken
        .iter()
        .map(|t| t["page_count"].as_u64().unwrap())
        .collect();
    assert!(counts[2] < counts[1] && counts[3] > counts[2], "{counts:?}");
    for t in &taken {
        let url = t["destination"].as_str().unwrap();
        let restored = restore(&conn, url, dir.path());
        assert_eq!(sha_of(&restored), t["sha256"].as_str().unwrap(), "{t}");
    }
}

/// Only page lists go with their backups: a file of someone else's that merely ends in
/// `.pages` stays, beside a deleted backup or alone; a real page list left alone by a killed
/// run goes once it is an hour old.
#[test]
fn pruning_deletes_only_real_page_lists() {
    let (dir, conn) = setup();
    let b = dir.path().join("b");
    for day in 1..=3u32 {
        backup(
            &conn,
            &b.join("plain-%d.db.gz"),
            &format!(r#"{{"now": "2026-01-0{day}T00:00:00Z"}}"#),
        );
    }
    fs::write(b.join("plain-01.db.gz.pages"), "my notes").unwrap();
    fs::write(b.join("plain-09.db.gz.pages"), "more notes").unwrap();
    // A real page list whose backup is gone (as a kill between the two writes leaves).
    let taken = chain(&conn, dir.path(), 1, "");
    let full = name_of(&taken[0].url).to_string();
    fs::copy(
        b.join(format!("{full}.pages")),
        b.join("plain-08.db.gz.pages"),
    )
    .unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    for name in ["plain-09.db.gz.pages", "plain-08.db.gz.pages"] {
        let f = fs::File::options().write(true).open(b.join(name)).unwrap();
        f.set_modified(old).unwrap();
    }
    let out = call_json(
        &conn,
        &format!(
            r#"SELECT backup_prune({}, '{{"keep_last": 1, "match": "plain-*", "now": "2026-01-05T00:00:00Z"}}')"#,
            path_lit(&b)
        ),
    );
    let deleted: Vec<&str> = out["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        deleted,
        ["plain-08.db.gz.pages", "plain-02.db.gz", "plain-01.db.gz"],
        "{out}"
    );
    let left = list(&b);
    assert!(
        left.contains(&"plain-01.db.gz.pages".to_string()),
        "{left:?}"
    );
    assert!(
        left.contains(&"plain-09.db.gz.pages".to_string()),
        "{left:?}"
    );
    assert!(
        !left.contains(&"plain-08.db.gz.pages".to_string()),
        "{left:?}"
    );
    assert_eq!(
        fs::read(b.join("plain-01.db.gz.pages")).unwrap(),
        b"my notes"
    );
}

/// An uncompressed full backup changed in a page no incremental replaces: nothing but the
/// sha256 of the rebuilt whole can tell, and the error names the full backup.
#[test]
fn a_changed_page_of_an_uncompressed_full_backup_is_found_and_named() {
    let (dir, conn) = setup();
    let b = dir.path().join("b");
    let options = |minute: u32| format!(r#"{{"incremental": true, "now": "{}"}}"#, at(minute));
    let full = backup(&conn, &b.join("raw-%H%M.db"), &options(0));
    activity(&conn, 1);
    let inc = backup(&conn, &b.join("raw-%H%M.db"), &options(1));
    assert_eq!(inc["kind"], "incremental");
    let full_path = PathBuf::from(full["destination"].as_str().unwrap());
    let mut bytes = fs::read(&full_path).unwrap();
    // The last byte of page 3: the sample's pages past the first few are rows that the
    // activity (appends at the end, a few updates) leaves as they are.
    let pos = 3 * 4096 - 1;
    bytes[pos] ^= 0x5a;
    rewrite(&full_path, &bytes);
    let dest = dir.path().join("out.db");
    let err = call_err(
        &conn,
        &format!(
            "SELECT restore_backup({}, {})",
            lit(inc["destination"].as_str().unwrap()),
            path_lit(&dest)
        ),
    );
    assert!(
        err.contains(&format!("backup {} (needed by", full_path.display()))
            && err.contains("does not match the sha256 recorded when it was taken"),
        "{err}"
    );
    assert!(!dest.exists());
    // The source database is open in WAL mode: its -wal and -shm are expected.
    assert_no_temp_files_except(dir.path(), &["app.db-shm", "app.db-wal"]);
}

// ---- encrypted chains (.age) ----

/// Options of an encrypted incremental backup at minute `i`.
fn sealed_options(public: &str, key: &Path, i: u32, extra: &str) -> String {
    format!(
        r#"{{"incremental": true, "match": "app-*", "now": "{}", "recipients": ["{public}"],
             "identity_file": {}{extra}}}"#,
        at(i),
        serde_json::Value::from(key.to_str().unwrap())
    )
}

/// A chain of `n` encrypted backups (`app-%H%M.zst.age`) from minute `from`.
fn sealed_chain(
    conn: &Connection,
    dir: &Path,
    public: &str,
    key: &Path,
    from: u32,
    n: u32,
    extra: &str,
) -> Vec<Taken> {
    let mut taken = Vec::new();
    for i in from..from + n {
        if i > 0 {
            activity(conn, i);
        }
        let out = backup(
            conn,
            &dir.join("b/app-%H%M.zst.age"),
            &sealed_options(public, key, i, extra),
        );
        assert_eq!(out["encrypted"], true, "{out}");
        taken.push(Taken::of(conn, out));
    }
    taken
}

/// Every page's hash as the page lists record it (blake3, first 16 bytes).
fn page_hashes(db: &Path) -> Vec<[u8; 16]> {
    let bytes = fs::read(db).unwrap();
    let page_size = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    let page_size = if page_size == 1 { 65536 } else { page_size };
    bytes
        .chunks(page_size)
        .map(|p| blake3::hash(p).as_bytes()[..16].try_into().unwrap())
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `root`, recursively (page lists, objects, a server's metadata files).
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// What lets whoever reads the files under `root` test a guess of the content: any page hash
/// of a restored step, its plaintext sha256 (hex or raw).
fn found_in_the_clear(root: &Path, restored: &[(PathBuf, String)]) -> Vec<String> {
    let mut found = Vec::new();
    let files: Vec<(PathBuf, Vec<u8>)> = files_under(root)
        .into_iter()
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    for (db, sha) in restored {
        let raw: Vec<u8> = (0..32)
            .map(|i| u8::from_str_radix(&sha[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let pages = page_hashes(db);
        let hashes: std::collections::HashMap<&[u8], usize> = pages
            .iter()
            .enumerate()
            .map(|(i, h)| (&h[..], i + 1))
            .collect();
        for (path, bytes) in &files {
            let shown = path.display();
            if contains(bytes, sha.as_bytes()) || contains(bytes, sha.to_uppercase().as_bytes()) {
                found.push(format!("{shown} holds sha256 {sha}"));
            }
            if contains(bytes, &raw) {
                found.push(format!("{shown} holds sha256 {sha} (raw)"));
            }
            // One pass over the file: each 16-byte window looked up among the page hashes.
            let hit = bytes.windows(16).find_map(|w| hashes.get(w).copied());
            if let Some(page) = hit {
                found.push(format!("{shown} holds the hash of page {page}"));
            }
        }
    }
    found
}

#[track_caller]
fn assert_nothing_in_the_clear(root: &Path, restored: &[(PathBuf, String)]) {
    let found = found_in_the_clear(root, restored);
    assert!(found.is_empty(), "{found:#?}");
}

/// The check above is not blind: on a plain chain it finds the page hashes and the sha256.
#[test]
fn the_clear_text_check_finds_the_hashes_of_a_plain_chain() {
    let (dir, conn) = setup();
    let taken = chain(&conn, dir.path(), 2, "");
    let restored: Vec<(PathBuf, String)> = taken
        .iter()
        .map(|t| (restore(&conn, &t.url, dir.path()), t.sha256.clone()))
        .collect();
    let found = found_in_the_clear(&dir.path().join("b"), &restored).join("\n");
    assert!(found.contains(".pages holds the hash of page"), "{found}");
    assert!(found.contains("(raw)"), "{found}");
}

/// An encrypted chain (.zst.age): each step restores and verifies byte for byte with the
/// identity; objects and page lists are age files; no page hash or plaintext sha256 is on
/// disk in the clear; the full decrypts with the age CLI and zstd.
#[test]
fn an_encrypted_chain_restores_each_step_and_shows_no_page_hash() {
    let (dir, conn) = setup();
    let b = dir.path().join("b");
    let (key, public, secret) = age_key(dir.path(), "key.txt");
    let taken = sealed_chain(&conn, dir.path(), &public, &key, 0, 3, "");
    let kinds: Vec<&str> = taken
        .iter()
        .map(|t| t.out["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["full", "incremental", "incremental"]);
    assert_eq!(taken[2].out["base"], name_of(&taken[1].url));
    for t in &taken {
        for f in [t.url.clone(), format!("{}.pages", t.url)] {
            let bytes = fs::read(&f).unwrap();
            assert!(bytes.starts_with(AGE_MAGIC), "{f} is not an age file");
        }
        // Only the changed pages, as in a plain chain.
        let pages = t.out["page_count"].as_u64().unwrap();
        if t.out["kind"] == "incremental" {
            assert!(
                t.out["changed_pages"].as_u64().unwrap() * 4 < pages,
                "{}",
                t.out
            );
        }
    }
    let key_opt = format!(
        r#"{{"identity_file": {}}}"#,
        serde_json::Value::from(key.to_str().unwrap())
    );
    let mut restored = Vec::new();
    for t in &taken {
        let dest = dir.path().join(format!("r-{}.db", fastrand_name()));
        let out = call_json(
            &conn,
            &format!(
                "SELECT restore_backup({}, {}, {})",
                lit(&t.url),
                path_lit(&dest),
                lit(&key_opt)
            ),
        );
        assert_eq!(out["ok"], true, "{out}");
        assert_eq!(sha_of(&dest), t.sha256, "{}", t.url);
        assert_eq!(digest(&dest), t.digest, "{}", t.url);
        let verified = call_json(
            &conn,
            &format!("SELECT verify_backup({}, {})", lit(&t.url), lit(&key_opt)),
        );
        assert_eq!(verified["ok"], true, "{verified}");
        assert_eq!(verified["encrypted"], true, "{verified}");
        assert_eq!(verified["sha256"], t.sha256.as_str(), "{verified}");
        restored.push((dest, t.sha256.clone()));
    }
    assert_nothing_in_the_clear(&b, &restored);

    // Without the identity: a clear error naming the option, no key material.
    let err = call_err(
        &conn,
        &format!(
            "SELECT restore_backup({}, {})",
            lit(&taken[2].url),
            path_lit(dir.path().join("none.db"))
        ),
    );
    assert!(err.contains("identity_file"), "{err}");
    assert_no_secret(&err, &[&secret]);
    assert!(!dir.path().join("none.db").exists());

    // age -d -i key.txt | zstd -d: the full is the database.
    let out = std::process::Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&key)
        .arg(&taken[0].url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let zst = dir.path().join("full.zst");
    fs::write(&zst, out.stdout).unwrap();
    let full = decompress_to(&zst, dir.path(), "full.db");
    assert_eq!(sha_of(&full), taken[0].sha256);
    assert_no_temp_files(&b);
}

/// Missing identity: refused before any work, naming the option. A wrong identity once a
/// chain exists: a clear error (no key material), nothing stored, no new chain started.
#[test]
fn an_encrypted_chain_needs_its_identity_and_refuses_a_wrong_one() {
    let (dir, conn) = setup();
    let b = dir.path().join("b");
    let (key, public, secret) = age_key(dir.path(), "key.txt");
    let (other, _, other_secret) = age_key(dir.path(), "other.txt");
    let pattern = b.join("app-%H%M.zst.age");
    let no_key = format!(
        r#"{{"incremental": true, "now": "{}", "recipients": ["{public}"]}}"#,
        at(0)
    );
    let err = call_err(
        &conn,
        &format!(
            "SELECT backup_to_file({}, {})",
            path_lit(&pattern),
            lit(&no_key)
        ),
    );
    assert!(err.starts_with("backup_to_file: "), "{err}");
    assert!(err.contains("needs option 'identity_file'"), "{err}");
    assert!(err.contains("SQLITE_BACKUP_AGE_IDENTITY_FILE"), "{err}");
    assert_eq!(list(&b), Vec::<String>::new());
    // A file that holds no key: refused before any work too.
    let not_a_key = dir.path().join("not-a-key.txt");
    fs::write(&not_a_key, "hello\n").unwrap();
    let err = call_err(
        &conn,
        &format!(
            "SELECT backup_to_file({}, {})",
            path_lit(&pattern),
            lit(sealed_options(&public, &not_a_key, 0, ""))
        ),
    );
    assert!(err.contains("holds no age identity"), "{err}");
    assert_eq!(list(&b), Vec::<String>::new());

    let taken = sealed_chain(&conn, dir.path(), &public, &key, 0, 2, "");
    let before = list(&b);
    activity(&conn, 2);
    let err = call_err(
        &conn,
        &format!(
            "SELECT backup_to_file({}, {})",
            path_lit(&pattern),
            lit(sealed_options(&public, &other, 2, ""))
        ),
    );
    assert!(
        err.contains("was not encrypted to any key in identity_file"),
        "{err}"
    );
    assert!(err.contains(name_of(&taken[1].url)), "{err}");
    assert_no_secret(&err, &[&secret, &other_secret]);
    assert_eq!(list(&b), before, "nothing stored, no new chain");
    // The right key continues the chain.
    let next = backup(&conn, &pattern, &sealed_options(&public, &key, 2, ""));
    assert_eq!(next["kind"], "incremental", "{next}");
    assert_eq!(next["base"], name_of(&taken[1].url), "{next}");
    // if_changed compares with the sha256 in the (decrypted) page list: nothing stored.
    let files = list(&b);
    let same = backup(
        &conn,
        &pattern,
        &sealed_options(&public, &key, 3, r#", "if_changed": true"#),
    );
    assert_eq!(same["skipped"], true, "{same}");
    assert_eq!(list(&b), files);
    // A plain series after it never builds on the encrypted chain.
    let plain = backup(
        &conn,
        &b.join("app-%H%M.zst"),
        &format!(
            r#"{{"incremental": true, "match": "app-*", "now": "{}"}}"#,
            at(4)
        ),
    );
    assert_eq!(plain["kind"], "full", "{plain}");
    assert!(
        plain["full_reason"]
            .as_str()
            .unwrap()
            .ends_with("its chain is encrypted and this backup is not"),
        "{plain}"
    );
    assert_no_temp_files(&b);
}

/// Retention on an encrypted series: without the identity nothing of a chain is deleted (the
/// dry run says why); with it whole chains go, page lists with them; a wrong one is an error
/// that deletes nothing. backup_list shows kind 'encrypted' without the identity.
#[test]
fn pruning_an_encrypted_chain_with_or_without_identity_never_breaks_it() {
    let (dir, conn) = setup();
    let b = dir.path().join("b");
    let (key, public, _) = age_key(dir.path(), "key.txt");
    let (other, _, _) = age_key(dir.path(), "other.txt");
    // Chain A: 0 full, 1, 2; chain B: 3 full (full_every 1), 4 on it.
    let mut taken = sealed_chain(&conn, dir.path(), &public, &key, 0, 3, "");
    taken.extend(sealed_chain(
        &conn,
        dir.path(),
        &public,
        &key,
        3,
        1,
        r#", "full_every": 1"#,
    ));
    taken.extend(sealed_chain(&conn, dir.path(), &public, &key, 4, 1, ""));
    let kinds: Vec<&str> = taken
        .iter()
        .map(|t| t.out["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["full", "incremental", "incremental", "full", "incremental"]
    );
    let all = list(&b);
    assert_eq!(all.len(), 10, "{all:?}");
    let prune = |opts: &str| format!("SELECT backup_prune({}, {})", path_lit(&b), lit(opts));
    let key_json = serde_json::Value::from(key.to_str().unwrap()).to_string();

    for dry in [true, false] {
        let out = call_json(
            &conn,
            &prune(&format!(
                r#"{{"keep_last": 1, "match": "app-*", "dry_run": {dry}}}"#
            )),
        );
        assert_eq!(out["deleted"], serde_json::json!([]), "{out}");
        let kept = out["kept"].as_array().unwrap();
        assert_eq!(kept.len(), 5, "{out}");
        for k in &kept[1..] {
            let reasons = k["reasons"].to_string();
            assert!(reasons.contains("page list is encrypted"), "{out}");
            assert!(reasons.contains("identity_file"), "{out}");
        }
        assert_eq!(list(&b), all);
    }
    // backup_list: kind 'encrypted' without the identity, the chain with it.
    let rows = |opts: &str| -> Vec<(String, Option<String>, Option<String>)> {
        conn.prepare("SELECT name, kind, base FROM backup_list(?1, ?2) ORDER BY name")
            .unwrap()
            .query_map([b.to_str().unwrap(), opts], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let locked = rows("{}");
    assert!(
        locked
            .iter()
            .all(|(_, k, b)| k.as_deref() == Some("encrypted") && b.is_none()),
        "{locked:?}"
    );
    let open_rows = rows(&format!(r#"{{"identity_file": {key_json}}}"#));
    let n = |i: usize| name_of(&taken[i].url).to_string();
    assert_eq!(
        open_rows,
        [
            (n(0), Some("full".into()), None),
            (n(1), Some("incremental".into()), Some(n(0))),
            (n(2), Some("incremental".into()), Some(n(1))),
            (n(3), Some("full".into()), None),
            (n(4), Some("incremental".into()), Some(n(3))),
        ]
    );
    // The database's sha256 with the identity (from the page list, never from hashing an
    // incremental's pages), NULL without.
    let shas = |opts: &str| -> Vec<Option<String>> {
        conn.prepare("SELECT sha256 FROM backup_list(?1, ?2) ORDER BY name")
            .unwrap()
            .query_map([b.to_str().unwrap(), opts], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let want: Vec<Option<String>> = taken.iter().map(|t| Some(t.sha256.clone())).collect();
    assert_eq!(shas(&format!(r#"{{"identity_file": {key_json}}}"#)), want);
    assert_eq!(shas("{}"), vec![None; 5]);
    // A wrong identity: an error, nothing deleted.
    let err = call_err(
        &conn,
        &prune(&format!(
            r#"{{"keep_last": 1, "match": "app-*", "identity_file": {}}}"#,
            serde_json::Value::from(other.to_str().unwrap())
        )),
    );
    assert!(
        err.contains("was not encrypted to any key in identity_file"),
        "{err}"
    );
    assert_eq!(list(&b), all);
    // With it: chain A goes whole, page lists with it; B stays (4 needs 3).
    let out = call_json(
        &conn,
        &prune(&format!(
            r#"{{"keep_last": 1, "match": "app-*", "identity_file": {key_json}}}"#
        )),
    );
    assert_eq!(out["deleted"].as_array().unwrap().len(), 3, "{out}");
    assert_eq!(
        out["kept"][1]["reasons"],
        serde_json::json!([format!("needed by {}", n(4))]),
        "{out}"
    );
    assert_eq!(
        list(&b),
        [
            n(3),
            format!("{}.pages", n(3)),
            n(4),
            format!("{}.pages", n(4))
        ]
    );
    let dest = dir.path().join("newest.db");
    let out = call_json(
        &conn,
        &format!(
            "SELECT restore_backup({}, {}, {})",
            lit(&taken[4].url),
            path_lit(&dest),
            lit(format!(r#"{{"identity_file": {key_json}}}"#))
        ),
    );
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(sha_of(&dest), taken[4].sha256);

    // Keys rotated: another series encrypted to another key. A prune with the new key keeps
    // what that key does not open (saying so) and follows what it does.
    let (old_key, old_public, _) = age_key(dir.path(), "old.txt");
    let mut old = Vec::new();
    for i in [10, 11] {
        activity(&conn, i);
        let opts = sealed_options(&old_public, &old_key, i, "").replace("app-*", "old-*");
        let out = backup(&conn, &b.join("old-%H%M.zst.age"), &opts);
        old.push(name_of(out["destination"].as_str().unwrap()).to_string());
    }
    let out = call_json(
        &conn,
        &prune(&format!(
            r#"{{"keep_last": 1, "dry_run": true, "identity_file": {key_json}}}"#
        )),
    );
    let names = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names(&out["kept"]),
        [old[1].clone(), old[0].clone()],
        "{out}"
    );
    let reasons = out["kept"][1]["reasons"].to_string();
    assert!(reasons.contains("identity_file does not hold"), "{out}");
    let mut deleted = names(&out["deleted"]);
    deleted.sort();
    assert_eq!(deleted, [n(3), n(4)], "{out}");
}

/// On S3 the same: an encrypted chain restores, and no file the server keeps (objects,
/// metadata) holds the plaintext sha256 or a page hash.
#[test]
fn an_encrypted_s3_chain_stores_no_hash_in_the_clear() {
    use common::s3server::S3Server;
    let server = S3Server::start();
    server.create_bucket("bkt");
    let (dir, conn) = setup();
    let (key, public, _) = age_key(dir.path(), "key.txt");
    let s3 = server.options_json();
    let mut taken = Vec::new();
    for i in 0..2 {
        if i > 0 {
            activity(&conn, i);
        }
        let mut opts = s3.clone();
        opts["incremental"] = true.into();
        opts["now"] = at(i).into();
        opts["recipients"] = serde_json::json!([public]);
        opts["identity_file"] = key.to_str().unwrap().into();
        let out = call_json(
            &conn,
            &format!(
                "SELECT backup_to_s3('s3://bkt/app', 'db-%H%M.zst.age', {})",
                lit(opts.to_string())
            ),
        );
        taken.push(out);
    }
    assert_eq!(taken[1]["kind"], "incremental", "{}", taken[1]);
    let mut opts = s3.clone();
    opts["identity_file"] = key.to_str().unwrap().into();
    let mut restored = Vec::new();
    for t in &taken {
        let dest = dir.path().join(format!("r-{}.db", fastrand_name()));
        let out = call_json(
            &conn,
            &format!(
                "SELECT restore_backup({}, {}, {})",
                lit(t["destination"].as_str().unwrap()),
                path_lit(&dest),
                lit(opts.to_string())
            ),
        );
        assert_eq!(out["sha256"], t["sha256"], "{out}");
        assert_eq!(sha_of(&dest), t["sha256"].as_str().unwrap());
        restored.push((dest, t["sha256"].as_str().unwrap().to_string()));
    }
    assert_nothing_in_the_clear(server.root(), &restored);

    // The check sees what the server keeps: a plain backup's sha256 is found there (its
    // page list, and the trailer of its object: the full one streams).
    server.create_bucket("plain");
    let mut opts = s3.clone();
    opts["incremental"] = true.into();
    let out = call_json(
        &conn,
        &format!(
            "SELECT backup_to_s3('s3://plain', 'p.zst', {})",
            lit(opts.to_string())
        ),
    );
    let dest = dir.path().join("plain.db");
    call_json(
        &conn,
        &format!(
            "SELECT restore_backup({}, {}, {})",
            lit(out["destination"].as_str().unwrap()),
            path_lit(&dest),
            lit(s3.to_string())
        ),
    );
    let sha = out["sha256"].as_str().unwrap().to_string();
    let found = found_in_the_clear(server.root(), &[(dest, sha.clone())]);
    assert!(
        found
            .iter()
            .any(|f| f.contains("p.zst holds") && f.contains(&format!("holds sha256 {sha}"))),
        "{found:#?}"
    );
}

/// A page list whose backup is gone (deleted by hand, or a run killed between the two
/// writes) is removed by the next backup only once its magic checks after decryption; an age
/// file encrypted to someone else under such a name is never removed, and without the key
/// nothing is.
#[test]
fn an_encrypted_orphan_page_list_goes_only_when_the_key_shows_it_is_ours() {
    let (dir, conn) = setup();
    let b = dir.path().join("b");
    let (key, public, _) = age_key(dir.path(), "key.txt");
    let (_, stranger, _) = age_key(dir.path(), "stranger.txt");
    let taken = sealed_chain(&conn, dir.path(), &public, &key, 0, 2, "");
    // The newest backup deleted by hand: its page list is an orphan.
    fs::remove_file(&taken[1].url).unwrap();
    let orphan = format!("{}.pages", name_of(&taken[1].url));
    // Someone else's age file under a page list's name, whose backup is not there either.
    let foreign = b.join("app-0059.zst.age.pages");
    let out = std::process::Command::new("age")
        .args(["-r", &stranger, "-o"])
        .arg(&foreign)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let files = list(&b);
    assert!(files.contains(&orphan) && files.contains(&"app-0059.zst.age.pages".to_string()));
    // Without the key, retention cannot tell: nothing deleted.
    let prune = |extra: &str| {
        call_json(
            &conn,
            &format!(
                "SELECT backup_prune({}, {})",
                path_lit(&b),
                lit(format!(
                    r#"{{"keep_last": 5, "match": "app-*", "now": "2030-01-01T00:00:00Z"{extra}}}"#
                ))
            ),
        )
    };
    let out = prune("");
    assert_eq!(out["deleted"], serde_json::json!([]), "{out}");
    assert_eq!(list(&b), files);
    // The next backup (with the key) removes the orphan, keeps the stranger's file, and builds
    // on the backup that is still there.
    activity(&conn, 1);
    let next = backup(
        &conn,
        &b.join("app-%H%M.zst.age"),
        &sealed_options(&public, &key, 2, ""),
    );
    assert_eq!(next["kind"], "incremental", "{next}");
    assert_eq!(next["base"], name_of(&taken[0].url), "{next}");
    let left = list(&b);
    assert!(!left.contains(&orphan), "{left:?}");
    assert!(
        left.contains(&"app-0059.zst.age.pages".to_string()),
        "{left:?}"
    );
    // backup_prune with the key leaves the stranger's file too.
    let out = prune(&format!(
        r#", "identity_file": {}"#,
        serde_json::Value::from(key.to_str().unwrap())
    ));
    assert_eq!(out["deleted"], serde_json::json!([]), "{out}");
    assert!(list(&b).contains(&"app-0059.zst.age.pages".to_string()));
    let restored = restore_with(
        &conn,
        next["destination"].as_str().unwrap(),
        &key,
        dir.path(),
    );
    assert_eq!(sha_of(&restored), next["sha256"].as_str().unwrap());
}

fn restore_with(conn: &Connection, backup: &str, key: &Path, dir: &Path) -> PathBuf {
    let dest = dir.join(format!("restored-{}.db", fastrand_name()));
    let out = call_json(
        conn,
        &format!(
            "SELECT restore_backup({}, {}, {})",
            lit(backup),
            path_lit(&dest),
            lit(format!(
                r#"{{"identity_file": {}}}"#,
                serde_json::Value::from(key.to_str().unwrap())
            ))
        ),
    );
    assert_eq!(out["ok"], true, "{out}");
    dest
}

/// Memory does not grow with the database (#15): the page hashes of the base and of the new
/// snapshot (32 bytes a page) go through temp files. Under a test budget far below them (a
/// debug build's SQLITE_BACKUP_TEST_MEMORY_BUDGET) a chain is still taken, incrementally, and
/// restores byte for byte; a budget below the 1 bit a page that stays in memory is a clear
/// error that leaves nothing behind.
#[test]
fn an_incremental_backup_holds_no_page_hashes_in_memory() {
    let dir = tempdir();
    let out = python(
        r#"
import json, os, sqlite3, sys
d = sys.argv[1]
# ~6000 pages of 512 bytes: their hashes alone take ~96 KiB for the base and the same for
# the snapshot; the budget is 4 KiB (the 1-bit-a-page map takes ~750 bytes).
os.environ["SQLITE_BACKUP_TEST_MEMORY_BUDGET"] = "4096"
conn = sqlite3.connect(d + "/m.db", isolation_level=None)
conn.enable_load_extension(True)
conn.load_extension(os.environ["EXT"])
conn.executescript("""
PRAGMA page_size = 512;
CREATE TABLE t (id INTEGER PRIMARY KEY, data BLOB);
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 6000)
INSERT INTO t SELECT i, randomblob(300) FROM n;
""")
os.mkdir(d + "/b")
def call(sql, *args):
    try:
        return json.loads(conn.execute(sql, args).fetchone()[0])
    except sqlite3.Error as e:
        return {"error": str(e)}
steps = ["", "UPDATE t SET data = randomblob(300) WHERE id % 500 = 1",
         "DELETE FROM t WHERE id > 5900", "UPDATE t SET data = randomblob(300) WHERE id = 3"]
for i, step in enumerate(steps):
    if step:
        conn.execute(step)
    out = call("SELECT backup_to_file(?, ?)", d + "/b/m-%H%M.zst",
               json.dumps({"incremental": True, "now": "2026-01-01T00:%02d:00Z" % i, "threads": 1}))
    print(json.dumps(out))
    if "error" in out:
        break
    back = call("SELECT restore_backup(?, ?)", out["destination"], d + "/r%d.db" % i)
    print(json.dumps({"restored": back.get("ok"), "error": back.get("error")}))
os.environ["SQLITE_BACKUP_TEST_MEMORY_BUDGET"] = "100"
conn.execute("UPDATE t SET data = randomblob(300) WHERE id = 4")
print(json.dumps(sorted(os.listdir(d + "/b"))))
print(json.dumps(call("SELECT backup_to_file(?, ?)", d + "/b/m-%H%M.zst",
                      json.dumps({"incremental": True, "now": "2026-01-01T00:09:00Z"}))))
print(json.dumps(sorted(os.listdir(d + "/b"))))
"#,
        &[dir.path().to_str().unwrap()],
    );
    let lines = out.json_lines();
    assert_eq!(lines.len(), 2 * 4 + 3, "{lines:?}");
    for (i, pair) in lines[..8].chunks(2).enumerate() {
        let (taken, restored) = (&pair[0], &pair[1]);
        assert!(taken.get("error").is_none(), "{taken}");
        let kind = if i == 0 { "full" } else { "incremental" };
        assert_eq!(taken["kind"], kind, "{taken}");
        assert!(taken["page_count"].as_u64().unwrap() > 5000, "{taken}");
        if i > 0 {
            assert!(taken["changed_pages"].as_u64().unwrap() < 200, "{taken}");
        }
        assert_eq!(restored["restored"], true, "{restored}");
        let copy = dir.path().join(format!("r{i}.db"));
        assert_eq!(sha_of(&copy), taken["sha256"].as_str().unwrap(), "{taken}");
    }
    let err = lines[9]["error"].as_str().unwrap_or_default();
    assert!(
        err.contains("bytes of memory") && err.contains("page size"),
        "{}",
        lines[9]
    );
    assert_eq!(lines[8], lines[10], "nothing left behind");
    assert_no_temp_files(&dir.path().join("b"));
}

// ---- method stream (#15 through the #14 page sink) ----

/// Restores each taken backup and checks it is the database it was taken from, byte for byte.
fn assert_each_restores(conn: &Connection, taken: &[Taken], dir: &Path) {
    for t in taken {
        let restored = restore(conn, &t.url, dir);
        assert_eq!(sha_of(&restored), t.sha256, "{}", t.url);
        assert_eq!(digest(&restored), t.digest, "{}", t.url);
        fs::remove_file(restored).unwrap();
    }
}

/// Mounts a tmpfs of `size` on a new directory; unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempdir();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn a_wal_or_memory_database_streams_by_default_and_each_step_restores_byte_for_byte() {
    let (dir, conn) = setup();
    let taken = chain(&conn, dir.path(), 4, "");
    for t in &taken {
        assert_eq!(t.out["method"], "stream", "{}", t.out);
        assert_eq!(t.out["spilled_bytes"], 0, "{}", t.out);
    }
    assert_eq!(taken[3].out["kind"], "incremental", "{}", taken[3].out);
    // Asked for by name, and method 'pages' still the page copy, in the same chain.
    activity(&conn, 7);
    let pattern = dir.path().join("b/app-%H%M.zst");
    let mut more = Vec::new();
    for (minute, method) in [(10, "stream"), (11, "pages")] {
        if minute == 11 {
            activity(&conn, 8);
        }
        let out = backup(
            &conn,
            &pattern,
            &format!(
                r#"{{"incremental": true, "match": "app-*", "now": "{}", "method": "{method}"}}"#,
                at(minute)
            ),
        );
        assert_eq!(out["method"], method, "{out}");
        assert_eq!(out["kind"], "incremental", "{out}");
        more.push(Taken::of(&conn, out));
    }
    assert_each_restores(&conn, &taken, dir.path());
    assert_each_restores(&conn, &more, dir.path());
    assert_no_temp_files_except(dir.path(), &["app.db-shm", "app.db-wal"]);

    // A memory database streams too (the caller's connection, a first pass for page 1).
    let mem = open_memory();
    fill_sample(&mem, 500);
    let b = dir.path().join("m");
    fs::create_dir(&b).unwrap();
    let mut taken = Vec::new();
    for i in 0..3 {
        if i > 0 {
            activity(&mem, i);
        }
        let out = backup(
            &mem,
            &b.join("mem-%H%M.zst"),
            &format!(r#"{{"incremental": true, "now": "{}"}}"#, at(i)),
        );
        assert_eq!(out["method"], "stream", "{out}");
        assert_eq!(out["kind"], if i == 0 { "full" } else { "incremental" });
        taken.push(Taken::of(&mem, out));
    }
    assert_each_restores(&mem, &taken, dir.path());
}

#[test]
fn a_deleted_row_is_in_no_stored_byte_of_an_incremental_nor_of_its_restore() {
    let (dir, conn) = setup();
    conn.execute_batch("PRAGMA secure_delete = OFF").unwrap();
    let pattern = dir.path().join("b/app-%H%M.db"); // uncompressed: the stored bytes as they are
    let opts = |minute: u32| {
        format!(
            r#"{{"incremental": true, "match": "app-*", "now": "{}"}}"#,
            at(minute)
        )
    };
    let first = backup(&conn, &pattern, &opts(0));
    assert_eq!(first["kind"], "full");
    // Rows written and deleted between two backups: with secure_delete off their bytes stay
    // in the pages' free space (and in free pages: the second table is dropped whole).
    let marker = "DELETED-SECRET-7f3a9c";
    conn.execute_batch(&format!(
        "INSERT INTO orders (customer_id, total, status, note, payload)
           VALUES (1, 1, 'open', '{marker}', zeroblob(10));
         CREATE TABLE scratch(x);
         INSERT INTO scratch VALUES ('{marker}' || hex(randomblob(2000)));
         UPDATE customers SET score = score + 1 WHERE id = 5;"
    ))
    .unwrap();
    conn.execute_batch(&format!(
        "DELETE FROM orders WHERE note = '{marker}'; DROP TABLE scratch;"
    ))
    .unwrap();
    let db_bytes = fs::read(dir.path().join("app.db")).unwrap();
    let wal_bytes = fs::read(dir.path().join("app.db-wal")).unwrap_or_default();
    assert!(
        contains(&db_bytes, marker.as_bytes()) || contains(&wal_bytes, marker.as_bytes()),
        "the deleted row's bytes are still in the source"
    );
    let second = backup(&conn, &pattern, &opts(1));
    assert_eq!(second["kind"], "incremental", "{second}");
    assert_eq!(second["method"], "stream", "{second}");
    let object = fs::read(second["destination"].as_str().unwrap()).unwrap();
    assert!(
        !contains(&object, marker.as_bytes()),
        "the incremental holds the deleted row"
    );
    let restored = restore(&conn, second["destination"].as_str().unwrap(), dir.path());
    assert_eq!(sha_of(&restored), second["sha256"].as_str().unwrap());
    assert!(
        !contains(&fs::read(&restored).unwrap(), marker.as_bytes()),
        "the restore holds the deleted row"
    );
    for f in files_under(&dir.path().join("b")) {
        assert!(
            !contains(&fs::read(&f).unwrap(), marker.as_bytes()),
            "{} holds the deleted row",
            f.display()
        );
    }
}

#[test]
fn a_writer_in_another_process_during_an_incremental_stream_never_shows() {
    use std::process::{Command, Stdio};
    let dir = tempdir();
    let db = dir.path().join("w.db");
    let conn = open(&db);
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000)
         INSERT INTO acct SELECT i, 100 FROM n;
         CREATE TABLE pad(x BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
         INSERT INTO pad SELECT randomblob(100000) FROM n;",
    )
    .unwrap();
    let b = dir.path().join("b");
    fs::create_dir(&b).unwrap();
    let first = backup(
        &conn,
        &b.join("w-%H%M.zst"),
        &format!(r#"{{"incremental": true, "now": "{}"}}"#, at(0)),
    );
    assert_eq!(first["kind"], "full");
    // Transfers keep the total at 100000 in every committed state; some pad rows change.
    let script: String = (0..400)
        .map(|i| {
            format!(
                "BEGIN; UPDATE acct SET bal = bal - 1 WHERE id = {a}; \
                 UPDATE acct SET bal = bal + 1 WHERE id = {b}; \
                 UPDATE pad SET x = randomblob(100000) WHERE rowid = {p}; COMMIT;\n",
                a = i % 1000 + 1,
                b = (i * 7) % 1000 + 1,
                p = i % 200 + 1
            )
        })
        .collect();
    let mut writer = Command::new(SQLITE3)
        .arg(&db)
        .arg(format!("PRAGMA busy_timeout = 10000;\n{script}"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut taken = Vec::new();
    for i in 1..4 {
        let out = backup(
            &conn,
            &b.join("w-%H%M.zst"),
            &format!(r#"{{"incremental": true, "now": "{}"}}"#, at(i)),
        );
        assert_eq!(out["method"], "stream", "{out}");
        taken.push(out);
    }
    assert!(writer.wait().unwrap().success());
    for out in &taken {
        let restored = restore(&conn, out["destination"].as_str().unwrap(), dir.path());
        assert_eq!(sha_of(&restored), out["sha256"].as_str().unwrap(), "{out}");
        let check = rusqlite::Connection::open(&restored).unwrap();
        let total: i64 = check
            .query_row("SELECT sum(bal) FROM acct", [], |r| r.get(0))
            .unwrap();
        assert_eq!(total, 100_000, "{out}");
        assert_eq!(integrity(&restored), "ok");
    }
}

#[test]
fn kill_9_mid_incremental_stream_leaves_the_previous_chain_and_no_debris() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let dir = tempdir();
    let b = dir.path().join("b");
    let tmp = dir.path().join("tmp");
    fs::create_dir(&b).unwrap();
    fs::create_dir(&tmp).unwrap();
    let db = dir.path().join("k.db");
    let conn = open(&db);
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 400)
         INSERT INTO blobs SELECT i, randomblob(100000) FROM n;",
    )
    .unwrap();
    let options = |minute: u32| {
        format!(
            r#"{{"incremental": true, "match": "k-*", "now": "{}", "temp_dir": {}, "level": 19, "threads": 1}}"#,
            at(minute),
            serde_json::Value::from(tmp.to_str().unwrap())
        )
    };
    let pattern = b.join("k-%H%M.zst");
    let sql = |minute: u32| {
        format!(
            "SELECT backup_to_file({}, {})",
            path_lit(&pattern),
            lit(options(minute))
        )
    };
    let first = call_json(&conn, &sql(0));
    assert_eq!(first["kind"], "full");
    assert_eq!(first["method"], "stream");
    let before = list(&b);
    conn.execute_batch("UPDATE blobs SET data = randomblob(100000) WHERE id % 2 = 0")
        .unwrap();
    let mut child = Command::new(SQLITE3)
        .arg("-bail")
        .arg("-cmd")
        .arg(format!(".load {}", ext_load_name()))
        .arg(&db)
        .arg(sql(1))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Mid-stream: the process holds its unnamed temp files (page hashes, changed pages).
    let pid = child.id();
    let in_temp = || {
        fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|fds| {
                fds.flatten()
                    .any(|fd| fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(&tmp)))
            })
            .unwrap_or(false)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !in_temp() {
        assert!(child.try_wait().unwrap().is_none(), "sqlite3 ended early");
        assert!(Instant::now() < deadline, "no temp file after 30 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(list(&b), before, "killed mid-stream: nothing new stored");
    assert_eq!(list(&tmp), Vec::<String>::new());
    assert_no_temp_files(&b);
    // The chain is whole; the next backup continues it.
    let next = call_json(&conn, &sql(2));
    assert_eq!(next["kind"], "incremental", "{next}");
    assert_eq!(
        next["base"],
        name_of(first["destination"].as_str().unwrap())
    );
    let restored = restore(&conn, next["destination"].as_str().unwrap(), dir.path());
    assert_eq!(sha_of(&restored), next["sha256"].as_str().unwrap());
    assert_eq!(list(&tmp), Vec::<String>::new());
}

#[test]
fn a_database_much_larger_than_temp_dir_backs_up_incrementally() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let tmpfs = Tmpfs::mount("8m");
    let dir = tempdir();
    let db = dir.path().join("big.db");
    let conn = open(&db);
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE blobs(id INTEGER PRIMARY KEY, data BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 700)
         INSERT INTO blobs SELECT i, randomblob(100000) FROM n;
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .unwrap();
    assert!(fs::metadata(&db).unwrap().len() > 64 << 20);
    let b = dir.path().join("b");
    fs::create_dir(&b).unwrap();
    let run = |minute: u32| {
        backup(
            &conn,
            &b.join("big-%H%M.zst"),
            &format!(
                r#"{{"incremental": true, "now": "{}", "temp_dir": {}}}"#,
                at(minute),
                serde_json::Value::from(tmpfs.0.path().to_str().unwrap())
            ),
        )
    };
    let first = run(0);
    assert_eq!(first["kind"], "full", "{first}");
    assert_eq!(first["method"], "stream", "{first}");
    conn.execute_batch("UPDATE blobs SET data = randomblob(100000) WHERE id IN (3, 300)")
        .unwrap();
    let second = run(1);
    assert_eq!(second["kind"], "incremental", "{second}");
    assert_eq!(second["spilled_bytes"], 0, "{second}");
    let changed = second["changed_pages"].as_u64().unwrap();
    assert!(changed < 200, "{second}");
    assert_eq!(list(tmpfs.0.path()), Vec::<String>::new());
    let restored = restore(&conn, second["destination"].as_str().unwrap(), dir.path());
    assert_eq!(sha_of(&restored), second["sha256"].as_str().unwrap());
}

#[test]
fn a_rollback_journal_database_streams_when_asked_and_spills_rather_than_wait() {
    let dir = tempdir();
    let db = dir.path().join("rj.db");
    make_sample_db(&db, Journal::Rollback, 3000);
    let conn = open(&db);
    let b = dir.path().join("b");
    fs::create_dir(&b).unwrap();
    let mut taken = Vec::new();
    for (i, method) in [(0, Some("stream")), (1, Some("stream")), (2, None)] {
        if i > 0 {
            activity(&conn, i);
        }
        let method = method.map_or(String::new(), |m| format!(r#", "method": "{m}""#));
        let out = backup(
            &conn,
            &b.join("rj-%H%M.zst"),
            &format!(r#"{{"incremental": true, "now": "{}"{method}}}"#, at(i)),
        );
        taken.push(Taken::of(&conn, out));
    }
    for t in &taken[..2] {
        assert_eq!(t.out["method"], "stream", "{}", t.out);
        // The copy never waited for the hashing: what it had not taken yet was set aside.
        assert!(t.out["spilled_bytes"].is_u64(), "{}", t.out);
    }
    assert_eq!(taken[1].out["kind"], "incremental");
    // Not asked for: a rollback-journal file keeps the page copy.
    assert_eq!(taken[2].out["method"], "pages", "{}", taken[2].out);
    assert_eq!(taken[2].out["kind"], "incremental");
    assert_each_restores(&conn, &taken, dir.path());
    assert_no_temp_files_except(dir.path(), &[]);
}

/// A row updated to a shorter long value (secure_delete off) leaves the old value's bytes at the
/// end of its new overflow chain's last page: an incremental zeroes them as a full stream does.
#[test]
fn the_unused_end_of_an_overflow_chain_is_zeroed_in_an_incremental() {
    let dir = tempdir();
    let db = dir.path().join("o.db");
    let conn = open(&db);
    // 1 KiB pages; random padding so the changed pages stay well below a new full backup.
    conn.execute_batch(
        "PRAGMA page_size = 1024;
         PRAGMA journal_mode = WAL;
         PRAGMA secure_delete = OFF;
         CREATE TABLE pad(x BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
         INSERT INTO pad SELECT randomblob(900) FROM n;
         CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB);",
    )
    .unwrap();
    fs::create_dir(dir.path().join("b")).unwrap();
    let pattern = dir.path().join("b/o-%H%M.db"); // uncompressed: the stored bytes as they are
    let opts = |minute: u32| {
        format!(
            r#"{{"incremental": true, "match": "o-*", "now": "{}"}}"#,
            at(minute)
        )
    };
    assert_eq!(backup(&conn, &pattern, &opts(0))["kind"], "full");
    // A 4400-byte value overflows into pages that the shorter one (2023 bytes) reuses.
    conn.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50)
         INSERT INTO t SELECT i, CAST(replace(hex(zeroblob(400)), '00', 'TAIL-MARKER') AS BLOB)
           FROM n;
         UPDATE t SET v = zeroblob(2021) || CAST('ok' AS BLOB);",
    )
    .unwrap();
    let marker = b"TAIL-MARKER";
    let second = backup(&conn, &pattern, &opts(1));
    assert_eq!(second["kind"], "incremental", "{second}");
    assert_eq!(second["method"], "stream", "{second}");
    assert!(second.get("fallback").is_none(), "{second}");
    for f in files_under(&dir.path().join("b")) {
        assert!(
            !contains(&fs::read(&f).unwrap(), marker),
            "{} holds the old value's bytes",
            f.display()
        );
    }
    let restored = restore(&conn, second["destination"].as_str().unwrap(), dir.path());
    assert_eq!(sha_of(&restored), second["sha256"].as_str().unwrap());
    assert!(!contains(&fs::read(&restored).unwrap(), marker));
}

/// A free list that does not add up to page 1's count (a damaged header): the stream cannot
/// tell the free pages apart, so a plain backup takes VACUUM INTO and an incremental one the
/// page copy, each saying why in `fallback`, and both still back up.
#[test]
fn a_free_list_the_stream_cannot_tell_apart_falls_back_and_says_why() {
    let dir = tempdir();
    let db = dir.path().join("f.db");
    {
        let conn = open(&db);
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE t(x BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300)
             INSERT INTO t SELECT randomblob(3000) FROM n;
             DELETE FROM t WHERE rowid > 100;
             PRAGMA wal_checkpoint(TRUNCATE);",
        )
        .unwrap();
    }
    // Page 1's total of free-list pages (offset 36), one more than the list holds.
    let mut bytes = fs::read(&db).unwrap();
    let count = u32::from_be_bytes(bytes[36..40].try_into().unwrap());
    assert!(count > 0, "the database has free pages");
    bytes[36..40].copy_from_slice(&(count + 1).to_be_bytes());
    fs::write(&db, bytes).unwrap();
    let conn = open(&db);
    let why =
        "the free pages cannot be zeroed (the free list does not add up to the header's count)";
    let plain = call_json(
        &conn,
        &format!(
            "SELECT backup_to_file({}, '{{\"method\": \"stream\"}}')",
            path_lit(dir.path().join("plain.db.zst"))
        ),
    );
    assert_eq!(plain["method"], "vacuum", "{plain}");
    let fallback = plain["fallback"].as_str().unwrap_or_default();
    assert!(fallback.starts_with(why), "{plain}");
    assert!(
        fallback.ends_with("copied with VACUUM INTO instead"),
        "{plain}"
    );
    fs::create_dir(dir.path().join("b")).unwrap();
    let pattern = dir.path().join("b/f-%H%M.db.zst");
    let opts = format!(
        r#"{{"incremental": true, "match": "f-*", "now": "{}"}}"#,
        at(0)
    );
    let inc = backup(&conn, &pattern, &opts);
    assert_eq!(inc["kind"], "full", "{inc}");
    assert_eq!(inc["method"], "pages", "{inc}");
    let fallback = inc["fallback"].as_str().unwrap_or_default();
    assert!(fallback.starts_with(why), "{inc}");
    assert!(
        fallback.ends_with("copied with method 'pages' instead"),
        "{inc}"
    );
}
