//! Incremental backups (#15): chains across codecs restore byte for byte, a missing or
//! damaged link is named, retention never breaks a chain, a kill leaves the chain intact,
//! the full_every policies, S3, if_changed.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

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
        taken.push(Taken {
            url: out["destination"].as_str().unwrap().to_string(),
            sha256: out["sha256"].as_str().unwrap().to_string(),
            digest: digest_conn(conn, "main"),
            out,
        });
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
