//! The cron operations at SQL level: rolling names, backup_list, backup_prune and `keep`,
//! `if_changed`, `create_only` and monitoring pings, against a directory and a real S3 server
//! (s3s-fs). Backups of made-up ages are made with the injected clock (`now`), which sets
//! both the name and the recorded time (file mtime, `x-amz-meta-backup-time`); pruning gets
//! the same clock through its own `now`, so nothing here depends on the real date.

mod common;
#[path = "common/ping.rs"]
mod ping;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use common::proxy::{Fault, Proxy};
use common::s3server::{free_port, S3Server};
use common::*;
use ping::PingServer;
use rusqlite::Connection;
use serde_json::{json, Value};

/// The clock of the retention tests: Monday 2026-11-23 12:00 UTC (ISO week 2026-W48).
const NOW: &str = "2026-11-23T12:00:00Z";

/// Twenty backup times, newest first, spread over hours, days, ISO weeks, months and years.
/// Numbered 1..=20 in the expectations below.
const SERIES: [&str; 20] = [
    "2026-11-23T11:30:00Z", //  1 Mon W48, hour 11
    "2026-11-23T11:10:00Z", //  2 same hour as 1
    "2026-11-23T10:45:00Z", //  3 hour 10
    "2026-11-23T09:00:00Z", //  4 hour 09
    "2026-11-22T23:00:00Z", //  5 Sun W47
    "2026-11-22T08:00:00Z", //  6 same day as 5
    "2026-11-21T12:00:00Z", //  7 Sat, exactly now - 2d
    "2026-11-19T12:00:00Z", //  8 Thu W47
    "2026-11-16T12:00:00Z", //  9 Mon W47
    "2026-11-15T12:00:00Z", // 10 Sun W46
    "2026-11-08T12:00:00Z", // 11 Sun W45
    "2026-11-01T12:00:00Z", // 12 Sun W44, first of November
    "2026-10-31T12:00:00Z", // 13 Sat W44, last of October
    "2026-10-15T12:00:00Z", // 14
    "2026-09-30T12:00:00Z", // 15
    "2026-08-01T12:00:00Z", // 16
    "2025-12-31T23:00:00Z", // 17 last of 2025
    "2025-06-01T12:00:00Z", // 18
    "2024-12-31T12:00:00Z", // 19
    "2023-01-01T00:00:00Z", // 20
];

/// The series' name pattern; `db-*.gz` matches every name it makes.
const PATTERN: &str = "db-%Y%m%d-%H%M.gz";

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

fn series_name(i: usize) -> String {
    at(SERIES[i - 1]).format("db-%Y%m%d-%H%M.gz").to_string()
}

/// (rule, policy, kept numbers, reasons of the kept ones when checked). Everything else in
/// the series is deleted.
struct Rule {
    label: &'static str,
    policy: Value,
    kept: Vec<usize>,
    reasons: Option<Vec<(usize, Vec<&'static str>)>>,
}

fn rules() -> Vec<Rule> {
    let rule = |label, policy, kept: &[usize]| Rule {
        label,
        policy,
        kept: kept.to_vec(),
        reasons: None,
    };
    vec![
        rule("keep_last", json!({"keep_last": 3}), &[1, 2, 3]),
        // 11h (1; 2 shares its hour), 10h, 09h, and 23h of the day before.
        rule("keep_hourly", json!({"keep_hourly": 4}), &[1, 3, 4, 5]),
        // 23rd, 22nd (newest: 23:00), 21st, (no 20th) 19th.
        rule("keep_daily", json!({"keep_daily": 4}), &[1, 5, 7, 8]),
        // W48, W47 (Sunday 22nd 23:00 is its newest), W46, W45.
        rule("keep_weekly", json!({"keep_weekly": 4}), &[1, 5, 10, 11]),
        // November, October (31st), September, August.
        rule("keep_monthly", json!({"keep_monthly": 4}), &[1, 13, 15, 16]),
        // 2026, 2025 (Dec 31st), 2024.
        rule("keep_yearly", json!({"keep_yearly": 3}), &[1, 17, 19]),
        // now - 2d = 2026-11-21T12:00:00Z, inclusive: 7 sits exactly on it.
        rule(
            "keep_within",
            json!({"keep_within": "2d"}),
            &[1, 2, 3, 4, 5, 6, 7],
        ),
        Rule {
            label: "combination",
            policy: json!({
                "keep_last": 2, "keep_daily": 3, "keep_weekly": 2, "keep_monthly": 3,
                "keep_yearly": 10, "keep_within": "36h",
            }),
            kept: vec![1, 2, 3, 4, 5, 6, 7, 13, 15, 17, 19, 20],
            reasons: Some(vec![
                (
                    1,
                    vec![
                        "last",
                        "daily 2026-11-23",
                        "weekly 2026-W48",
                        "monthly 2026-11",
                        "yearly 2026",
                        "within 36h",
                    ],
                ),
                (2, vec!["last", "within 36h"]),
                (3, vec!["within 36h"]),
                (4, vec!["within 36h"]),
                (5, vec!["daily 2026-11-22", "weekly 2026-W47", "within 36h"]),
                // 08:00 on the 22nd is after the 36h cutoff (22nd 00:00).
                (6, vec!["within 36h"]),
                (7, vec!["daily 2026-11-21"]),
                (13, vec!["monthly 2026-10"]),
                (15, vec!["monthly 2026-09"]),
                // Only four years have backups: keep_yearly 10 keeps one of each.
                (17, vec!["yearly 2025"]),
                (19, vec!["yearly 2024"]),
                (20, vec!["yearly 2023"]),
            ]),
        },
    ]
}

// ---------------------------------------------------------------- helpers

/// A small source database in its own directory.
fn source(dir: &Path) -> (Connection, PathBuf) {
    let path = dir.join("src.db");
    let conn = open(&path);
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO t(v) VALUES ('one'), ('two'), ('three');",
    )
    .unwrap();
    (conn, path)
}

/// `a` with the keys of `b` added.
/// A temp dir holding a source database (open, extension loaded) and an empty `b/` for
/// backups.
fn fixture() -> (tempfile::TempDir, Connection, PathBuf) {
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let dir = tmp.path().join("b");
    fs::create_dir(&dir).unwrap();
    (tmp, conn, dir)
}

fn merge(a: &Value, b: &Value) -> Value {
    let mut out = a.as_object().cloned().unwrap_or_default();
    if let Some(b) = b.as_object() {
        for (k, v) in b {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

fn to_file_sql(pattern: &Path, opts: &Value) -> String {
    format!(
        "SELECT backup_to_file({}, {})",
        path_lit(pattern),
        lit(opts.to_string())
    )
}

fn to_s3_sql(bucket: &str, pattern: &str, opts: &Value) -> String {
    format!(
        "SELECT backup_to_s3({}, {}, {})",
        lit(bucket),
        lit(pattern),
        lit(opts.to_string())
    )
}

fn prune_sql(location: &str, policy: &Value) -> String {
    format!(
        "SELECT backup_prune({}, {})",
        lit(location),
        lit(policy.to_string())
    )
}

fn to_file(conn: &Connection, pattern: &Path, opts: &Value) -> Value {
    call_json(conn, &to_file_sql(pattern, opts))
}

fn to_file_err(conn: &Connection, pattern: &Path, opts: &Value) -> String {
    call_err(conn, &to_file_sql(pattern, opts))
}

fn to_s3(conn: &Connection, bucket: &str, pattern: &str, opts: &Value) -> Value {
    call_json(conn, &to_s3_sql(bucket, pattern, opts))
}

fn to_s3_err(conn: &Connection, bucket: &str, pattern: &str, opts: &Value) -> String {
    call_err(conn, &to_s3_sql(bucket, pattern, opts))
}

fn prune(conn: &Connection, location: &str, policy: &Value) -> Value {
    call_json(conn, &prune_sql(location, policy))
}

fn prune_err(conn: &Connection, location: &str, policy: &Value) -> String {
    call_err(conn, &prune_sql(location, policy))
}

#[derive(Debug, Clone, PartialEq)]
struct Row {
    name: String,
    url: String,
    size: i64,
    modified: String,
    sha256: Option<String>,
}

/// `SELECT * FROM backup_list(location[, options])`, in the order it returns.
fn list_rows(conn: &Connection, location: &str, opts: Option<&Value>) -> Vec<Row> {
    let sql = match opts {
        Some(o) => format!(
            "SELECT name, url, size, modified, sha256 FROM backup_list({}, {})",
            lit(location),
            lit(o.to_string())
        ),
        None => format!(
            "SELECT name, url, size, modified, sha256 FROM backup_list({})",
            lit(location)
        ),
    };
    let mut stmt = conn.prepare(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    stmt.query_map([], |r| {
        Ok(Row {
            name: r.get(0)?,
            url: r.get(1)?,
            size: r.get(2)?,
            modified: r.get(3)?,
            sha256: r.get(4)?,
        })
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn list_names(conn: &Connection, location: &str, opts: Option<&Value>) -> Vec<String> {
    list_rows(conn, location, opts)
        .into_iter()
        .map(|r| r.name)
        .collect()
}

fn names_of(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {items}"))
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

fn set_mtime(path: &Path, t: DateTime<Utc>) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::from(t))
        .unwrap();
}

fn mtime(path: &Path) -> DateTime<Utc> {
    DateTime::<Utc>::from(fs::metadata(path).unwrap().modified().unwrap())
}

/// Checks a prune report against a rule: exact kept and deleted names (newest first), each
/// item's `modified`, and the reasons when the rule lists them.
#[track_caller]
fn check_report(report: &Value, rule: &Rule, dry_run: bool, where_: &str) {
    let ctx = format!("{where_} {}: {report}", rule.label);
    assert_eq!(report["dry_run"], json!(dry_run), "{ctx}");
    let kept: Vec<String> = rule.kept.iter().map(|&i| series_name(i)).collect();
    let deleted: Vec<String> = (1..=SERIES.len())
        .filter(|i| !rule.kept.contains(i))
        .map(series_name)
        .collect();
    assert_eq!(names_of(&report["kept"]), kept, "kept, {ctx}");
    assert_eq!(names_of(&report["deleted"]), deleted, "deleted, {ctx}");
    for item in report["kept"]
        .as_array()
        .unwrap()
        .iter()
        .chain(report["deleted"].as_array().unwrap())
    {
        let name = item["name"].as_str().unwrap();
        let i = (1..=SERIES.len())
            .find(|&i| series_name(i) == name)
            .unwrap();
        assert_eq!(item["modified"], json!(SERIES[i - 1]), "{name}, {ctx}");
    }
    for item in report["kept"].as_array().unwrap() {
        let reasons = item["reasons"].as_array().unwrap();
        assert!(!reasons.is_empty(), "{ctx}");
    }
    if let Some(expected) = &rule.reasons {
        let got: BTreeMap<String, Vec<String>> = report["kept"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["name"].as_str().unwrap().to_string(),
                    k["reasons"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| r.as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect();
        let want: BTreeMap<String, Vec<String>> = expected
            .iter()
            .map(|(i, r)| (series_name(*i), r.iter().map(|s| s.to_string()).collect()))
            .collect();
        assert_eq!(got, want, "reasons, {ctx}");
    }
}

/// Copies every file of `from` into the new directory `to`, keeping modification times.
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            fs::create_dir(&dest).unwrap();
        } else {
            fs::copy(entry.path(), &dest).unwrap();
            set_mtime(&dest, mtime(&entry.path()));
        }
    }
}

/// Files in the directory that are not part of the series: never candidates for pruning.
const BYSTANDERS: [&str; 4] = [
    "notes.txt",
    "other-20261123-1159.gz",
    ".hidden-db-20200101-0000.gz",
    "db-dir.gz",
];

fn s3_server() -> S3Server {
    let server = S3Server::start();
    server.create_bucket("bkt");
    server
}

// ---------------------------------------------------------------- 1. directory retention

/// The series in a directory, made by backup_to_file with `now`, plus bystanders newer than
/// everything (so they would take keep_last slots if `match` were not applied).
fn directory_series(conn: &Connection, dir: &Path) -> Vec<Value> {
    fs::create_dir_all(dir).unwrap();
    let results: Vec<Value> = SERIES
        .iter()
        .map(|t| to_file(conn, &dir.join(PATTERN), &json!({ "now": t })))
        .collect();
    let recent = at(NOW) - chrono::Duration::minutes(1);
    for name in [
        "notes.txt",
        "other-20261123-1159.gz",
        ".hidden-db-20200101-0000.gz",
    ] {
        fs::write(dir.join(name), b"not a backup of this series").unwrap();
        set_mtime(&dir.join(name), recent);
    }
    // A directory whose name matches the glob: not a backup, never listed or deleted.
    fs::create_dir(dir.join("db-dir.gz")).unwrap();
    results
}

#[test]
fn directory_list_shows_the_series_newest_first() {
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let dir = tmp.path().join("b");
    let results = directory_series(&conn, &dir);
    let loc = dir.to_str().unwrap();

    // Each backup is named by its injected time and carries it as its mtime.
    for (i, r) in results.iter().enumerate() {
        let path = dir.join(series_name(i + 1));
        assert_eq!(r["destination"], json!(path.to_str().unwrap()), "{r}");
        assert_eq!(r["skipped"], json!(false));
        assert_eq!(mtime(&path), at(SERIES[i]), "{}", path.display());
    }

    let rows = list_rows(&conn, loc, None);
    // Hidden files and directories are not listed; the plain bystanders are (no match), equal
    // times by name descending as retention orders them.
    let mut want: Vec<String> = vec!["other-20261123-1159.gz".into(), "notes.txt".into()];
    want.extend((1..=20).map(series_name));
    assert_eq!(
        rows.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        want,
        "{rows:#?}"
    );
    for row in &rows[2..] {
        let path = dir.join(&row.name);
        let i = (1..=20).find(|&i| series_name(i) == row.name).unwrap();
        assert_eq!(
            row,
            &Row {
                name: row.name.clone(),
                url: path.to_str().unwrap().to_string(),
                size: fs::metadata(&path).unwrap().len() as i64,
                modified: SERIES[i - 1].to_string(),
                sha256: None,
            }
        );
        assert_eq!(
            row.size,
            results[i - 1]["stored_bytes"].as_i64().unwrap(),
            "{row:?}"
        );
    }
    // `match` narrows the listing to the series; the time is shown as ISO 8601 UTC.
    let matched = list_names(&conn, loc, Some(&json!({"match": "db-*.gz"})));
    assert_eq!(matched, (1..=20).map(series_name).collect::<Vec<_>>());
    assert_eq!(rows[2].modified, "2026-11-23T11:30:00Z");
    let few = list_names(&conn, loc, Some(&json!({"match": "db-2025*"})));
    assert_eq!(few, [series_name(17), series_name(18)]);
    // Ordinary SQL over the table-valued function.
    let (n, total): (i64, i64) = conn
        .query_row(
            &format!(
                "SELECT count(*), sum(size) FROM backup_list({}) WHERE name GLOB 'db-*'",
                lit(loc)
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(n, 20);
    assert_eq!(
        total,
        results
            .iter()
            .map(|r| r["stored_bytes"].as_i64().unwrap())
            .sum::<i64>()
    );
}

#[test]
fn directory_prune_each_rule_exactly() {
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let template = tmp.path().join("template");
    directory_series(&conn, &template);
    let all_files = list(&template);

    for (n, rule) in rules().iter().enumerate() {
        let dir = tmp.path().join(format!("rule-{n}"));
        copy_dir(&template, &dir);
        let loc = dir.to_str().unwrap();
        let policy = merge(&rule.policy, &json!({"match": "db-*.gz", "now": NOW}));

        // Dry run: the plan, and nothing deleted.
        let dry = prune(&conn, loc, &merge(&policy, &json!({"dry_run": true})));
        check_report(&dry, rule, true, "directory dry run");
        assert_eq!(
            list(&dir),
            all_files,
            "dry run deleted files: {}",
            rule.label
        );

        // Real run: the same plan, and exactly the deleted files are gone.
        let real = prune(&conn, loc, &policy);
        check_report(&real, rule, false, "directory");
        assert_eq!(real["kept"], dry["kept"], "{}", rule.label);
        assert_eq!(real["deleted"], dry["deleted"], "{}", rule.label);
        let mut want: Vec<String> = BYSTANDERS.iter().map(|s| s.to_string()).collect();
        want.extend(rule.kept.iter().map(|&i| series_name(i)));
        want.sort();
        assert_eq!(list(&dir), want, "{}", rule.label);

        // Running it again deletes nothing more.
        let again = prune(&conn, loc, &policy);
        assert_eq!(again["deleted"], json!([]), "{}: {again}", rule.label);
        assert_eq!(names_of(&again["kept"]), names_of(&real["kept"]));
    }
}

#[test]
fn directory_prune_refuses_a_policy_that_keeps_nothing() {
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let dir = tmp.path().join("b");
    directory_series(&conn, &dir);
    let before = list(&dir);
    let loc = dir.to_str().unwrap();
    for policy in [
        json!({}),
        json!({"match": "db-*.gz"}),
        json!({"keep_last": 0, "keep_daily": 0}),
        json!({"keep_within": "0d", "now": NOW}),
    ] {
        let err = prune_err(&conn, loc, &policy);
        assert!(
            err.starts_with("backup_prune: ") && err.contains("keeps nothing"),
            "{policy}: {err}"
        );
        assert_eq!(list(&dir), before, "{policy}");
    }
    // Without `match`, every backup in the directory is a candidate; the bystanders are not
    // backups, so they take no keep slot and are only reported.
    let report = prune(
        &conn,
        loc,
        &json!({"keep_last": 2, "now": NOW, "dry_run": true}),
    );
    assert_eq!(names_of(&report["kept"]), [series_name(1), series_name(2)]);
    assert_eq!(report["deleted"].as_array().unwrap().len(), 18);
    assert_eq!(
        names_of(&report["ignored"]),
        ["notes.txt", "other-20261123-1159.gz"]
    );
    assert_eq!(list(&dir), before);
}

// ---------------------------------------------------------------- 2. S3 retention and listing

/// The series under `s3://bkt/<prefix>`, plus two bystanders newer than all of it.
fn s3_series(conn: &Connection, server: &S3Server, prefix: &str) -> Vec<Value> {
    let s3 = server.options_json();
    let bucket = format!("s3://bkt/{prefix}");
    let results = SERIES
        .iter()
        .map(|t| to_s3(conn, &bucket, PATTERN, &merge(&s3, &json!({ "now": t }))))
        .collect();
    let recent = "2026-11-23T11:59:00Z";
    for pattern in ["notes.txt", "other-%Y%m%d-%H%M.gz"] {
        to_s3(
            conn,
            &bucket,
            pattern,
            &merge(&s3, &json!({ "now": recent })),
        );
    }
    results
}

#[test]
fn s3_list_columns_and_prune_each_rule_exactly() {
    let server = s3_server();
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let s3 = server.options_json();
    let results = s3_series(&conn, &server, "series");

    // Listing: newest first, sha256 and size as the backup reported them, modified = the
    // injected time (x-amz-meta-backup-time), not the upload's LastModified (today).
    let rows = list_rows(&conn, "s3://bkt/series", Some(&s3));
    // Equal times: name descending, as retention orders them.
    let mut want = vec![
        "other-20261123-1159.gz".to_string(),
        "notes.txt".to_string(),
    ];
    want.extend((1..=20).map(series_name));
    assert_eq!(
        rows.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        want
    );
    for (i, r) in results.iter().enumerate() {
        let name = series_name(i + 1);
        let row = rows.iter().find(|row| row.name == name).unwrap();
        assert_eq!(
            row,
            &Row {
                name: name.clone(),
                url: format!("s3://bkt/series/{name}"),
                size: r["stored_bytes"].as_i64().unwrap(),
                modified: SERIES[i].to_string(),
                sha256: Some(r["sha256"].as_str().unwrap().to_string()),
            }
        );
        assert_eq!(r["destination"], json!(row.url));
        assert_eq!(
            fs::metadata(server.object_path("bkt", &format!("series/{name}")))
                .unwrap()
                .len() as i64,
            row.size
        );
    }
    // A trailing slash names the same prefix; `match` filters.
    assert_eq!(
        list_names(&conn, "s3://bkt/series/", Some(&s3)),
        want,
        "trailing slash"
    );
    assert_eq!(
        list_names(
            &conn,
            "s3://bkt/series",
            Some(&merge(&s3, &json!({"match": "db-2026111*"})))
        ),
        [series_name(8), series_name(9), series_name(10)]
    );

    for rule in rules() {
        let policy = merge(
            &merge(&rule.policy, &s3),
            &json!({"match": "db-*.gz", "now": NOW}),
        );
        let dry = prune(
            &conn,
            "s3://bkt/series",
            &merge(&policy, &json!({"dry_run": true})),
        );
        check_report(&dry, &rule, true, "s3 dry run");
    }
    assert_eq!(
        list_rows(&conn, "s3://bkt/series", Some(&s3)),
        rows,
        "a dry run deleted objects"
    );

    // Real runs: each rule on its own copy of the series.
    for (n, rule) in rules().iter().enumerate() {
        // The first rule runs on the series listed above, the others on fresh copies.
        let prefix = if n == 0 {
            "series".to_string()
        } else {
            let prefix = format!("rule-{n}");
            s3_series(&conn, &server, &prefix);
            prefix
        };
        let loc = format!("s3://bkt/{prefix}");
        let policy = merge(
            &merge(&rule.policy, &s3),
            &json!({"match": "db-*.gz", "now": NOW}),
        );
        let report = prune(&conn, &loc, &policy);
        check_report(&report, rule, false, "s3");
        let mut left = list_names(&conn, &loc, Some(&s3));
        left.sort();
        let mut want: Vec<String> = vec!["notes.txt".into(), "other-20261123-1159.gz".into()];
        want.extend(rule.kept.iter().map(|&i| series_name(i)));
        want.sort();
        assert_eq!(left, want, "{}", rule.label);
        for i in (1..=20).filter(|i| !rule.kept.contains(i)) {
            let key = format!("{prefix}/{}", series_name(i));
            assert!(
                !server.object_path("bkt", &key).exists(),
                "{key} still stored ({})",
                rule.label
            );
        }
    }
}

/// More keys than one ListObjectsV2 page (1000): the objects are written straight into the
/// server's directory (s3s-fs serves files it finds there), listed across pages, then pruned.
#[test]
fn s3_list_and_prune_follow_continuation_pages() {
    let server = s3_server();
    let dir = server.root().join("bkt").join("paged");
    fs::create_dir_all(&dir).unwrap();
    for i in 0..1100 {
        // Raw SQLite files: backups by content, though they carry none of our metadata.
        fs::write(dir.join(format!("db-{i:04}.gz")), b"SQLite format 3\0").unwrap();
    }
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into());
    let s3 = merge(
        &server.options_json(),
        &json!({ "endpoint": proxy.endpoint() }),
    );
    let conn = open_memory();

    let names = list_names(&conn, "s3://bkt/paged", Some(&s3));
    assert_eq!(names.len(), 1100);
    let lists: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.query.contains("list-type=2"))
        .collect();
    assert!(lists.len() >= 2, "one page only: {}", lists.len());
    assert!(lists.iter().any(|r| r.query.contains("continuation-token")));

    let report = prune(
        &conn,
        "s3://bkt/paged",
        &merge(&s3, &json!({ "keep_last": 1000, "match": "db-*.gz" })),
    );
    assert_eq!(report["kept"].as_array().unwrap().len(), 1000);
    assert_eq!(report["deleted"].as_array().unwrap().len(), 100);
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1000);
}

#[test]
fn s3_list_nested_keys_and_many_objects() {
    let server = s3_server();
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let s3 = server.options_json();
    let base = at("2026-11-20T00:00:00Z");
    // 24 at the prefix's top level, 6 one level down, 2 two levels down.
    let mut top = Vec::new();
    for i in 0..24 {
        let now = (base + chrono::Duration::minutes(i * 7)).to_rfc3339();
        let r = to_s3(
            &conn,
            "s3://bkt/many",
            "db-%H%M.gz",
            &merge(&s3, &json!({ "now": now })),
        );
        top.push(r);
    }
    for i in 0..6 {
        let now = (base - chrono::Duration::days(i + 1)).to_rfc3339();
        to_s3(
            &conn,
            "s3://bkt/many",
            "sub/db-%d.gz",
            &merge(&s3, &json!({ "now": now })),
        );
    }
    for i in 0..2 {
        let now = (base - chrono::Duration::days(30 + i)).to_rfc3339();
        to_s3(
            &conn,
            "s3://bkt/many/sub/deeper",
            "x-%d.gz",
            &merge(&s3, &json!({ "now": now })),
        );
    }
    // A sibling whose name starts with the prefix's name is not below the prefix.
    to_s3(
        &conn,
        "s3://bkt/many-other",
        "db-%H%M.gz",
        &merge(&s3, &json!({"now": NOW})),
    );
    to_s3(
        &conn,
        "s3://bkt",
        "manydb-%H%M.gz",
        &merge(&s3, &json!({"now": NOW})),
    );

    let rows = list_rows(&conn, "s3://bkt/many", Some(&s3));
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    let mut want: Vec<String> = (0..24)
        .rev()
        .map(|i| {
            (base + chrono::Duration::minutes(i * 7))
                .format("db-%H%M.gz")
                .to_string()
        })
        .collect();
    want.extend((0..6).map(|i| {
        (base - chrono::Duration::days(i + 1))
            .format("sub/db-%d.gz")
            .to_string()
    }));
    want.extend((0..2).map(|i| {
        (base - chrono::Duration::days(30 + i))
            .format("sub/deeper/x-%d.gz")
            .to_string()
    }));
    assert_eq!(names, want, "{rows:#?}");
    assert_eq!(rows.len(), 32);
    assert_eq!(rows[0].url, format!("s3://bkt/many/{}", want[0]));
    assert_eq!(rows[0].sha256.as_deref(), top[23]["sha256"].as_str());
    assert_eq!(rows[24].url, format!("s3://bkt/many/{}", want[24]));

    // `*` does not cross '/': the top-level series only, or only the sub-folder.
    assert_eq!(
        list_names(
            &conn,
            "s3://bkt/many",
            Some(&merge(&s3, &json!({"match": "db-*.gz"})))
        ),
        want[..24]
    );
    assert_eq!(
        list_names(
            &conn,
            "s3://bkt/many",
            Some(&merge(&s3, &json!({"match": "sub/*"})))
        ),
        want[24..30]
    );
    // The sub-folder as a prefix of its own, and the whole bucket.
    assert_eq!(
        list_names(&conn, "s3://bkt/many/sub", Some(&s3)),
        want[24..]
            .iter()
            .map(|n| n.trim_start_matches("sub/").to_string())
            .collect::<Vec<_>>()
    );
    let all = list_names(&conn, "s3://bkt", Some(&s3));
    assert_eq!(all.len(), 32 + 2, "{all:?}");
    assert!(
        all.contains(&"many-other/db-1200.gz".to_string()),
        "{all:?}"
    );
    // More than one ListObjectsV2 page: s3_list_and_prune_follow_continuation_pages.
}

// ---------------------------------------------------------------- 3. keep after a backup

#[test]
fn keep_in_backup_to_file_prunes_the_series_after_success_only() {
    let (_tmp, conn, dir) = fixture();
    let pattern = dir.join("k-%Y%m%d.gz");
    for day in 18..=22 {
        to_file(
            &conn,
            &pattern,
            &json!({ "now": format!("2026-11-{day}T12:00:00Z") }),
        );
    }
    // Bystanders, older than the series: not in the family `k-*.gz`.
    for name in ["other-20200101.gz", "notes.txt", "k.txt"] {
        fs::write(dir.join(name), b"x").unwrap();
        set_mtime(&dir.join(name), at("2020-01-01T00:00:00Z"));
    }

    let r = to_file(
        &conn,
        &pattern,
        &json!({"now": NOW, "keep": {"keep_last": 3}}),
    );
    assert_eq!(r["skipped"], json!(false));
    let pruned = &r["pruned"];
    assert_eq!(pruned["dry_run"], json!(false), "{r}");
    assert_eq!(
        names_of(&pruned["kept"]),
        ["k-20261123.gz", "k-20261122.gz", "k-20261121.gz"],
        "{r}"
    );
    assert_eq!(pruned["kept"][0]["reasons"], json!(["last"]));
    assert_eq!(pruned["kept"][0]["modified"], json!(NOW));
    assert_eq!(
        names_of(&pruned["deleted"]),
        ["k-20261120.gz", "k-20261119.gz", "k-20261118.gz"],
        "{r}"
    );
    assert_eq!(
        list(&dir),
        [
            "k-20261121.gz",
            "k-20261122.gz",
            "k-20261123.gz",
            "k.txt",
            "notes.txt",
            "other-20200101.gz"
        ]
    );

    // A failing backup (create_only on an existing name) prunes nothing, even with a policy
    // that would delete two backups.
    let err = to_file_err(
        &conn,
        &pattern,
        &json!({"now": NOW, "create_only": true, "keep": {"keep_last": 1}}),
    );
    assert!(
        err.contains("already exists and create_only is set"),
        "{err}"
    );
    assert_eq!(list(&dir).len(), 6, "{:?}", list(&dir));

    // A backup that fails on a missing directory prunes nothing either (and says why).
    let err = to_file_err(
        &conn,
        &dir.join("missing/k-%Y%m%d.gz"),
        &json!({"now": "2026-11-24T12:00:00Z", "keep": {"keep_last": 1}}),
    );
    assert!(err.contains("does not exist"), "{err}");
    assert_eq!(list(&dir).len(), 6);

    // A policy that keeps nothing fails before the backup: nothing stored, nothing deleted.
    let err = to_file_err(
        &conn,
        &pattern,
        &json!({"now": "2026-11-24T12:00:00Z", "keep": {"keep_last": 0}}),
    );
    assert!(
        err.contains("keep") && err.contains("keeps nothing"),
        "{err}"
    );
    assert!(!dir.join("k-20261124.gz").exists());
    assert_eq!(list(&dir).len(), 6);

    // An explicit `match` narrows the series the policy sees.
    let r = to_file(
        &conn,
        &pattern,
        &json!({"now": "2026-11-24T12:00:00Z", "match": "k-2026112[34].gz",
                "keep": {"keep_last": 1}}),
    );
    assert_eq!(names_of(&r["pruned"]["kept"]), ["k-20261124.gz"], "{r}");
    assert_eq!(names_of(&r["pruned"]["deleted"]), ["k-20261123.gz"], "{r}");
    assert_eq!(
        list(&dir),
        [
            "k-20261121.gz",
            "k-20261122.gz",
            "k-20261124.gz",
            "k.txt",
            "notes.txt",
            "other-20200101.gz"
        ]
    );
    // Without `keep` there is no `pruned`.
    let r = to_file(&conn, &pattern, &json!({"now": "2026-11-25T12:00:00Z"}));
    assert!(r.get("pruned").is_none(), "{r}");
}

#[test]
fn keep_in_backup_to_s3_prunes_the_series_after_success_only() {
    let server = s3_server();
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let s3 = server.options_json();
    let bucket = "s3://bkt/keep";
    let pattern = "k-%Y%m%d.gz";
    for day in 18..=22 {
        let now = format!("2026-11-{day}T12:00:00Z");
        to_s3(&conn, bucket, pattern, &merge(&s3, &json!({ "now": now })));
    }
    to_s3(
        &conn,
        bucket,
        "other-%Y%m%d.gz",
        &merge(&s3, &json!({"now": "2020-01-01T00:00:00Z"})),
    );
    to_s3(
        &conn,
        bucket,
        "sub/k-%Y%m%d.gz",
        &merge(&s3, &json!({"now": "2020-01-01T00:00:00Z"})),
    );

    let r = to_s3(
        &conn,
        bucket,
        pattern,
        &merge(&s3, &json!({"now": NOW, "keep": {"keep_daily": 2}})),
    );
    assert_eq!(
        names_of(&r["pruned"]["kept"]),
        ["k-20261123.gz", "k-20261122.gz"],
        "{r}"
    );
    assert_eq!(
        r["pruned"]["kept"][1]["reasons"],
        json!(["daily 2026-11-22"])
    );
    assert_eq!(
        names_of(&r["pruned"]["deleted"]),
        [
            "k-20261121.gz",
            "k-20261120.gz",
            "k-20261119.gz",
            "k-20261118.gz"
        ],
        "{r}"
    );
    let mut left = list_names(&conn, bucket, Some(&s3));
    left.sort();
    assert_eq!(
        left,
        [
            "k-20261122.gz",
            "k-20261123.gz",
            "other-20200101.gz",
            "sub/k-20200101.gz"
        ]
    );

    // Failing backups prune nothing: an existing key with create_only, and a bad schema.
    let err = to_s3_err(
        &conn,
        bucket,
        pattern,
        &merge(
            &s3,
            &json!({"now": NOW, "create_only": true, "keep": {"keep_last": 1}}),
        ),
    );
    assert!(
        err.contains("already exists and create_only is set"),
        "{err}"
    );
    let err = to_s3_err(
        &conn,
        bucket,
        pattern,
        &merge(
            &s3,
            &json!({"now": "2026-11-24T12:00:00Z", "schema": "nosuch", "keep": {"keep_last": 1}}),
        ),
    );
    assert!(err.starts_with("backup_to_s3: "), "{err}");
    let mut after = list_names(&conn, bucket, Some(&s3));
    after.sort();
    assert_eq!(after, left);
}

// ---------------------------------------------------------------- 4. names

#[test]
fn names_expand_every_common_specifier_in_utc() {
    let (_tmp, conn, dir) = fixture();
    // Sunday 2027-01-03: ISO week 53 of 2026 (%G %V), but week 01 counting from Sundays (%U).
    let pattern = "n-%Y-%m-%d-%H-%M-%S-%j-%U-%V-%G-%a-%b-%e-%s-%%.gz";
    let want = "n-2027-01-03-04-05-06-003-01-53-2026-Sun-Jan- 3-1798949106-%.gz";
    for now in ["2027-01-03T04:05:06Z", "2027-01-03T13:05:06+09:00"] {
        let r = to_file(&conn, &dir.join(pattern), &json!({ "now": now }));
        assert_eq!(
            r["destination"],
            json!(dir.join(want).to_str().unwrap()),
            "{now}"
        );
        assert!(dir.join(want).is_file());
    }
    // Padded and unpadded forms, and chrono's longer names.
    let r = to_file(
        &conn,
        &dir.join("m-%-d-%-m-%y-%A-%B-%I%p-%F-%T.gz"),
        &json!({"now": "2027-01-03T16:05:06Z"}),
    );
    assert_eq!(
        r["destination"],
        json!(dir
            .join("m-3-1-27-Sunday-January-04PM-2027-01-03-16:05:06.gz")
            .to_str()
            .unwrap())
    );
    // On S3 too.
    let server = s3_server();
    let r = to_s3(
        &conn,
        "s3://bkt/names",
        pattern,
        &merge(
            &server.options_json(),
            &json!({"now": "2027-01-03T04:05:06Z"}),
        ),
    );
    assert_eq!(r["destination"], json!(format!("s3://bkt/names/{want}")));
    assert!(server
        .object_path("bkt", &format!("names/{want}"))
        .is_file());
    // An unknown specifier is an error naming it, not a literal in a file name.
    let err = to_file_err(&conn, &dir.join("x-%Q.gz"), &json!({}));
    assert!(err.contains("'%Q'"), "{err}");
}

/// The sqlite3 CLI with the extension, in a given time zone.
fn cli_in_zone(tz: &str, db: &Path, script: &str) -> Output {
    let mut cmd = Command::new(SQLITE3);
    cmd.arg("-bail")
        .arg("-cmd")
        .arg(format!(".load {}", ext_load_name()))
        .arg(db)
        .env("TZ", tz)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().unwrap();
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn names_and_buckets_in_local_time_with_utc_false() {
    let tmp = tempdir();
    let (_conn, db) = source(tmp.path());
    let dir = tmp.path().join("b");
    fs::create_dir(&dir).unwrap();
    let d = dir.to_str().unwrap().replace('\'', "''");
    let script = format!(
        "SELECT backup_to_file('{d}/local-%Y%m%d-%H%z.gz', '{{\"now\":\"{NOW}\",\"utc\":false}}');\n\
         SELECT backup_to_file('{d}/utc-%Y%m%d-%H%z.gz', '{{\"now\":\"{NOW}\"}}');\n"
    );
    let out = cli_in_zone("Asia/Tokyo", &db, &script);
    out.assert_ok();
    // 12:00 UTC is 21:00 in Tokyo (UTC+9, no DST).
    assert_eq!(
        list(&dir),
        ["local-20261123-21+0900.gz", "utc-20261123-12+0000.gz"],
        "{}",
        out.stdout
    );

    // Buckets: 14:00 and 16:00 UTC on the 22nd are the same UTC day, but 23:00 on the 22nd
    // and 01:00 on the 23rd in Tokyo.
    let pdir = tmp.path().join("p");
    fs::create_dir(&pdir).unwrap();
    for (name, t) in [
        ("a.gz", "2026-11-22T14:00:00Z"),
        ("b.gz", "2026-11-22T16:00:00Z"),
    ] {
        fs::write(pdir.join(name), b"SQLite format 3\0").unwrap();
        set_mtime(&pdir.join(name), at(t));
    }
    let p = pdir.to_str().unwrap().replace('\'', "''");
    let script = format!(
        "SELECT backup_prune('{p}', '{{\"keep_daily\":5,\"now\":\"{NOW}\",\"dry_run\":true}}');\n\
         SELECT backup_prune('{p}', '{{\"keep_daily\":5,\"now\":\"{NOW}\",\"dry_run\":true,\"utc\":false}}');\n"
    );
    let out = cli_in_zone("Asia/Tokyo", &db, &script);
    out.assert_ok();
    let reports: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        reports[0]["kept"],
        json!([{"name": "b.gz", "modified": "2026-11-22T16:00:00Z",
                "reasons": ["daily 2026-11-22"]}])
    );
    assert_eq!(names_of(&reports[0]["deleted"]), ["a.gz"]);
    assert_eq!(
        reports[1]["kept"],
        json!([
            {"name": "b.gz", "modified": "2026-11-22T16:00:00Z", "reasons": ["daily 2026-11-23"]},
            {"name": "a.gz", "modified": "2026-11-22T14:00:00Z", "reasons": ["daily 2026-11-22"]}
        ])
    );
    assert_eq!(reports[1]["deleted"], json!([]));
}

// ---------------------------------------------------------------- 5. pings

const TOKEN: &str = "SECRETTOKEN123";

/// No trace of the ping URL's secret parts in `text`.
#[track_caller]
fn assert_no_secret(text: &str) {
    assert!(
        !text.contains(TOKEN) && !text.contains("QUERYSECRET77"),
        "secret shown: {text}"
    );
}

#[test]
fn snitch_pings_on_success_and_failure() {
    let (_tmp, conn, dir) = fixture();
    let monitor = PingServer::start(200);
    let url = monitor.url(&format!("/{TOKEN}"));

    let r = to_file(
        &conn,
        &dir.join("s-%H.gz"),
        &json!({"now": NOW, "notify": url}),
    );
    let dest = dir.join("s-12.gz");
    assert_eq!(r["destination"], json!(dest.to_str().unwrap()));
    assert_eq!(
        r["notify"],
        json!({"start": null, "result": {
            "ok": true, "status": 200, "error": null,
            "url": format!("http://127.0.0.1:{}/***", monitor.port())
        }}),
        "{r}"
    );
    assert_no_secret(&r.to_string());
    let reqs = monitor.requests();
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].target, format!("/{TOKEN}"));
    assert_eq!(
        reqs[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form = reqs[0].form();
    assert_eq!(form[0], ("s".to_string(), "0".to_string()), "{form:?}");
    assert_eq!(form[1].0, "m");
    assert!(
        form[1]
            .1
            .starts_with(&format!("stored {} (", dest.display())),
        "{form:?}"
    );
    assert_eq!(form.len(), 2);

    // Failure: a missing directory. The SQL call fails with its own error, and the monitor
    // gets s=1 with that error as the message.
    let missing = dir.join("missing/s-%H.gz");
    let err = to_file_err(&conn, &missing, &json!({"now": NOW, "notify": url}));
    assert!(err.contains("does not exist"), "{err}");
    assert_no_secret(&err);
    let reqs = monitor.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    assert_eq!(reqs[1].target, format!("/{TOKEN}"));
    let form = reqs[1].form();
    assert_eq!(
        form,
        [
            ("s".to_string(), "1".to_string()),
            (
                "m".to_string(),
                err.trim_start_matches("backup_to_file: ").to_string()
            )
        ]
    );
    // The same error as without monitoring.
    assert_eq!(to_file_err(&conn, &missing, &json!({"now": NOW})), err);

    // A skipped backup (if_changed) is a success, with a message saying so.
    let r = to_file(
        &conn,
        &dir.join("s-%H.gz"),
        &json!({"now": "2026-11-23T13:00:00Z", "if_changed": true, "notify": url}),
    );
    assert_eq!(r["skipped"], json!(true), "{r}");
    assert_eq!(r["notify"]["result"]["ok"], json!(true));
    let form = monitor.requests()[2].form();
    assert_eq!(form[0].1, "0");
    assert!(form[1].1.contains("unchanged"), "{form:?}");
}

#[test]
fn healthchecks_pings_start_success_and_fail() {
    let (_tmp, conn, dir) = fixture();
    let monitor = PingServer::start(200);
    let url = monitor.url(&format!("/ping/{TOKEN}"));
    let shown = format!("http://127.0.0.1:{}/***", monitor.port());
    let opts = json!({"now": NOW, "notify": url, "notify_style": "healthchecks"});

    let r = to_file(&conn, &dir.join("h-%H.gz"), &opts);
    assert_eq!(
        r["notify"],
        json!({
            "start": {"ok": true, "status": 200, "error": null, "url": format!("{shown}/start")},
            "result": {"ok": true, "status": 200, "error": null, "url": shown},
        }),
        "{r}"
    );
    assert_no_secret(&r.to_string());
    let reqs = monitor.requests();
    let targets: Vec<&str> = reqs.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        [format!("/ping/{TOKEN}/start"), format!("/ping/{TOKEN}")],
        "{reqs:#?}"
    );
    assert!(reqs.iter().all(|r| r.method == "POST"));
    assert_eq!(reqs[0].body, "");
    assert!(
        reqs[1]
            .body
            .starts_with(&format!("stored {} (", dir.join("h-12.gz").display())),
        "{}",
        reqs[1].body
    );
    assert!(
        reqs[1]
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{reqs:#?}"
    );

    // Failure: /start, then /fail with the error text as the body.
    let err = to_file_err(&conn, &dir.join("missing/h-%H.gz"), &opts);
    assert!(err.contains("does not exist"), "{err}");
    let reqs = monitor.requests();
    let targets: Vec<&str> = reqs[2..].iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            format!("/ping/{TOKEN}/start"),
            format!("/ping/{TOKEN}/fail")
        ]
    );
    assert_eq!(reqs[3].body, err.trim_start_matches("backup_to_file: "));
}

#[test]
fn a_failed_ping_never_fails_a_good_backup() {
    let (_tmp, conn, dir) = fixture();

    // Nobody listening.
    let port = free_port();
    let closed = format!("http://127.0.0.1:{port}/{TOKEN}?key=QUERYSECRET77");
    let r = to_file(
        &conn,
        &dir.join("u-%H.gz"),
        &json!({"now": NOW, "notify": closed}),
    );
    assert!(dir.join("u-12.gz").is_file());
    assert_eq!(r["skipped"], json!(false));
    let result = &r["notify"]["result"];
    assert_eq!(result["ok"], json!(false), "{r}");
    assert_eq!(result["status"], json!(null), "{r}");
    assert!(
        result["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{r}"
    );
    assert_eq!(
        result["url"],
        json!(format!("http://127.0.0.1:{port}/***?key=***"))
    );
    assert_no_secret(&r.to_string());
    // Healthchecks to nobody: both pings fail, the backup stands.
    let r = to_file(
        &conn,
        &dir.join("u2-%H.gz"),
        &json!({"now": NOW, "notify": closed, "notify_style": "healthchecks"}),
    );
    assert_eq!(r["notify"]["start"]["ok"], json!(false), "{r}");
    assert_eq!(r["notify"]["result"]["ok"], json!(false), "{r}");
    assert!(dir.join("u2-12.gz").is_file());
    assert_no_secret(&r.to_string());

    // A monitor answering 500, whose body quotes the secret URL back.
    let monitor = PingServer::start(500);
    let url = monitor.url(&format!("/{TOKEN}?key=QUERYSECRET77"));
    let r = to_file(
        &conn,
        &dir.join("f-%H.gz"),
        &json!({"now": NOW, "notify": url}),
    );
    assert!(dir.join("f-12.gz").is_file());
    let result = &r["notify"]["result"];
    assert_eq!(result["ok"], json!(false), "{r}");
    assert_eq!(result["status"], json!(500), "{r}");
    assert!(
        result["error"].as_str().unwrap().starts_with("HTTP 500"),
        "{r}"
    );
    assert_no_secret(&r.to_string());
    // 5xx is retried once (src/notify.rs), never more.
    let n = monitor.requests().len();
    assert!((1..=2).contains(&n), "{n} requests");

    // A monitor that accepts the connection and never answers: bounded by notify_timeout_ms.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}/{TOKEN}", silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let r = to_file(
        &conn,
        &dir.join("t-%H.gz"),
        &json!({"now": NOW, "notify": silent_url, "notify_timeout_ms": 300}),
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(dir.join("t-12.gz").is_file());
    assert_eq!(r["notify"]["result"]["ok"], json!(false), "{r}");
    assert!(
        r["notify"]["result"]["error"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{r}"
    );
    assert_no_secret(&r.to_string());
    drop(silent);

    // A failing backup with an unreachable monitor still reports the backup's own error.
    let err = to_file_err(&conn, &dir.join("missing/x.gz"), &json!({"notify": closed}));
    assert!(err.contains("does not exist"), "{err}");
    assert_no_secret(&err);
}

#[test]
fn a_bad_monitoring_url_is_refused_without_showing_it() {
    let (_tmp, conn, dir) = fixture();
    for bad in [
        format!("ftp://127.0.0.1/{TOKEN}"),
        format!("http://[::1/{TOKEN}"),
        format!("not a url {TOKEN}"),
    ] {
        let err = to_file_err(&conn, &dir.join("x.gz"), &json!({"notify": bad}));
        assert!(err.contains("monitoring URL"), "{bad}: {err}");
        assert_no_secret(&err);
        assert!(!dir.join("x.gz").exists(), "{bad}: backed up anyway");
    }
}

// ---------------------------------------------------------------- 6. if_changed

#[test]
fn if_changed_skips_an_unchanged_database_in_a_directory() {
    let (_tmp, conn, dir) = fixture();
    let pattern = dir.join("c-%Y%m%d%H%M.gz");
    let opts = |now: &str| json!({"now": now, "if_changed": true});

    let first = to_file(&conn, &pattern, &opts("2026-11-23T10:00:00Z"));
    assert_eq!(first["skipped"], json!(false), "{first}");
    assert!(first["stored_bytes"].as_u64().unwrap() > 0);
    let second = to_file(&conn, &pattern, &opts("2026-11-23T11:00:00Z"));
    assert_eq!(second["skipped"], json!(true), "{second}");
    assert_eq!(second["same_as"], first["destination"], "{second}");
    assert_eq!(second["sha256"], first["sha256"]);
    assert_eq!(second["stored_bytes"], json!(0));
    assert_eq!(list(&dir), ["c-202611231000.gz"]);

    conn.execute("INSERT INTO t(v) VALUES ('four')", [])
        .unwrap();
    let third = to_file(&conn, &pattern, &opts("2026-11-23T12:00:00Z"));
    assert_eq!(third["skipped"], json!(false), "{third}");
    assert_ne!(third["sha256"], first["sha256"]);
    assert_eq!(list(&dir), ["c-202611231000.gz", "c-202611231200.gz"]);
    // Unchanged again: the newest one is the match now.
    let fourth = to_file(&conn, &pattern, &opts("2026-11-23T13:00:00Z"));
    assert_eq!(fourth["skipped"], json!(true), "{fourth}");
    assert_eq!(fourth["same_as"], third["destination"]);
    assert_eq!(list(&dir).len(), 2);
    // Without if_changed the same content is stored again.
    let fifth = to_file(&conn, &pattern, &json!({"now": "2026-11-23T14:00:00Z"}));
    assert_eq!(fifth["skipped"], json!(false));
    assert_eq!(list(&dir).len(), 3);
}

#[test]
fn if_changed_skips_an_unchanged_database_on_s3() {
    let server = s3_server();
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let s3 = server.options_json();
    let bucket = "s3://bkt/ifc";
    let pattern = "c-%Y%m%d%H%M.gz";
    let opts = |now: &str| merge(&s3, &json!({"now": now, "if_changed": true}));

    let first = to_s3(&conn, bucket, pattern, &opts("2026-11-23T10:00:00Z"));
    assert_eq!(first["skipped"], json!(false), "{first}");
    assert_eq!(
        first["destination"],
        json!("s3://bkt/ifc/c-202611231000.gz")
    );
    let second = to_s3(&conn, bucket, pattern, &opts("2026-11-23T11:00:00Z"));
    assert_eq!(second["skipped"], json!(true), "{second}");
    assert_eq!(second["same_as"], first["destination"]);
    assert_eq!(second["stored_bytes"], json!(0));
    assert!(!server.object_path("bkt", "ifc/c-202611231100.gz").exists());
    assert_eq!(list_names(&conn, bucket, Some(&s3)), ["c-202611231000.gz"]);

    conn.execute("INSERT INTO t(v) VALUES ('four')", [])
        .unwrap();
    let third = to_s3(&conn, bucket, pattern, &opts("2026-11-23T12:00:00Z"));
    assert_eq!(third["skipped"], json!(false), "{third}");
    assert_eq!(
        list_names(&conn, bucket, Some(&s3)),
        ["c-202611231200.gz", "c-202611231000.gz"]
    );
    let rows = list_rows(&conn, bucket, Some(&s3));
    assert_eq!(rows[0].sha256.as_deref(), third["sha256"].as_str());
    let fourth = to_s3(&conn, bucket, pattern, &opts("2026-11-23T13:00:00Z"));
    assert_eq!(fourth["skipped"], json!(true), "{fourth}");
    assert_eq!(fourth["same_as"], third["destination"]);
    assert_eq!(list_names(&conn, bucket, Some(&s3)).len(), 2);
}

// ---------------------------------------------------------------- 7. create_only

#[test]
fn create_only_refuses_an_existing_file() {
    let (_tmp, conn, dir) = fixture();
    let pattern = dir.join("fixed-%Y%m%d.gz");
    let first = to_file(&conn, &pattern, &json!({"now": NOW, "create_only": true}));
    let path = dir.join("fixed-20261123.gz");
    assert_eq!(first["destination"], json!(path.to_str().unwrap()));
    let bytes = fs::read(&path).unwrap();
    let time = mtime(&path);

    conn.execute("INSERT INTO t(v) VALUES ('changed')", [])
        .unwrap();
    let err = to_file_err(
        &conn,
        &pattern,
        &json!({"now": "2026-11-23T18:00:00Z", "create_only": true}),
    );
    assert_eq!(
        err,
        format!(
            "backup_to_file: {} already exists and create_only is set",
            path.display()
        )
    );
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert_eq!(mtime(&path), time);
    assert_eq!(list(&dir), ["fixed-20261123.gz"]);
    assert_no_temp_files(&dir);
    // Without create_only the same name is replaced.
    let r = to_file(&conn, &pattern, &json!({"now": "2026-11-23T18:00:00Z"}));
    assert_ne!(r["sha256"], first["sha256"]);
    assert_ne!(fs::read(&path).unwrap(), bytes);
}

#[test]
fn create_only_refuses_an_existing_object_and_sends_if_none_match() {
    let server = s3_server();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port()).into());
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let s3 = merge(
        &server.options_json(),
        &json!({"endpoint": proxy.endpoint()}),
    );
    let bucket = "s3://bkt/co";
    let opts = merge(&s3, &json!({"now": NOW, "create_only": true}));

    let first = to_s3(&conn, bucket, "fixed-%Y%m%d.gz", &opts);
    assert_eq!(first["destination"], json!("s3://bkt/co/fixed-20261123.gz"));
    let puts: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.method == "PUT")
        .collect();
    assert_eq!(puts.len(), 1, "{puts:#?}");
    assert_eq!(puts[0].path, "/bkt/co/fixed-20261123.gz");
    assert_eq!(puts[0].header("if-none-match"), Some("*"), "{puts:#?}");
    let key = server.object_path("bkt", "co/fixed-20261123.gz");
    let bytes = fs::read(&key).unwrap();

    // The same name again: refused, nothing uploaded, the object unchanged.
    conn.execute("INSERT INTO t(v) VALUES ('changed')", [])
        .unwrap();
    proxy.clear_requests();
    let err = to_s3_err(&conn, bucket, "fixed-%Y%m%d.gz", &opts);
    assert_eq!(
        err,
        "backup_to_s3: s3://bkt/co/fixed-20261123.gz already exists and create_only is set"
    );
    assert!(
        proxy.requests().iter().all(|r| r.method != "PUT"),
        "{:#?}",
        proxy.requests()
    );
    assert_eq!(fs::read(&key).unwrap(), bytes);

    // Someone else wins the race between the check and the upload: the server's 412 to
    // If-None-Match is reported the same way.
    proxy.fault("PUT", "", 1, Fault::Status(412));
    let err = to_s3_err(&conn, bucket, "race-%Y%m%d.gz", &opts);
    assert_eq!(
        err,
        "backup_to_s3: s3://bkt/co/race-20261123.gz already exists and create_only is set"
    );

    // Without create_only: no If-None-Match, and the object is replaced.
    proxy.clear_requests();
    to_s3(
        &conn,
        bucket,
        "fixed-%Y%m%d.gz",
        &merge(&s3, &json!({"now": NOW})),
    );
    let put = proxy
        .requests()
        .into_iter()
        .find(|r| r.method == "PUT")
        .unwrap();
    assert_eq!(put.header("if-none-match"), None, "{put:#?}");
    assert_ne!(fs::read(&key).unwrap(), bytes);
}

// ---------------------------------------------------------------- extras

#[test]
fn future_backups_are_kept_and_use_up_no_rule() {
    let (_tmp, conn, dir) = fixture();
    let pattern = dir.join("f-%Y%m%d-%H%M.gz");
    for now in [
        "2027-06-01T00:00:00Z", // clock skew: a year ahead
        "2026-11-23T11:00:00Z",
        "2026-11-23T10:00:00Z",
        "2026-11-22T10:00:00Z",
    ] {
        to_file(&conn, &pattern, &json!({ "now": now }));
    }
    let r = prune(
        &conn,
        dir.to_str().unwrap(),
        &json!({"keep_last": 1, "now": NOW}),
    );
    assert_eq!(
        r["kept"],
        json!([
            {"name": "f-20270601-0000.gz", "modified": "2027-06-01T00:00:00Z", "reasons": ["future"]},
            {"name": "f-20261123-1100.gz", "modified": "2026-11-23T11:00:00Z", "reasons": ["last"]},
        ]),
        "{r}"
    );
    assert_eq!(
        names_of(&r["deleted"]),
        ["f-20261123-1000.gz", "f-20261122-1000.gz"]
    );
    assert_eq!(list(&dir), ["f-20261123-1100.gz", "f-20270601-0000.gz"]);
}

#[test]
fn healthchecks_suffixes_go_before_the_query() {
    let (_tmp, conn, dir) = fixture();
    let monitor = PingServer::start(200);
    let url = monitor.url(&format!("/ping/{TOKEN}/?rid=QUERYSECRET77"));
    let opts = json!({"now": NOW, "notify": url, "notify_style": "healthchecks"});
    let r = to_file(&conn, &dir.join("q.gz"), &opts);
    let shown = format!("http://127.0.0.1:{}/***", monitor.port());
    assert_eq!(
        r["notify"]["start"]["url"],
        json!(format!("{shown}/start?rid=***"))
    );
    assert_eq!(
        r["notify"]["result"]["url"],
        json!(format!("{shown}?rid=***"))
    );
    assert_no_secret(&r.to_string());
    to_file_err(&conn, &dir.join("missing/q.gz"), &opts);
    let targets: Vec<String> = monitor.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            format!("/ping/{TOKEN}/start?rid=QUERYSECRET77"),
            format!("/ping/{TOKEN}/?rid=QUERYSECRET77"),
            format!("/ping/{TOKEN}/start?rid=QUERYSECRET77"),
            format!("/ping/{TOKEN}/fail?rid=QUERYSECRET77"),
        ]
    );
}

/// `https://${HOST}/${TOKEN}` with an empty HOST gives `http:///TOKEN`, which a URL parser
/// reads as host `secrettoken123`: it must be refused as a URL with no host, without the token
/// being looked up in DNS or shown.
#[test]
fn a_ping_url_without_host_is_refused_without_echoing_its_token() {
    let (_tmp, conn, dir) = fixture();
    let sql = format!(
        "SELECT backup_to_file({}, {})",
        path_lit(dir.join("x.gz")),
        lit(json!({"notify": format!("http:///{TOKEN}")}).to_string())
    );
    let outcome: rusqlite::Result<String> = conn.query_row(&sql, [], |r| r.get(0));
    let text = match outcome {
        Ok(result) => result,
        Err(e) => e.to_string(),
    };
    assert!(
        !text
            .to_ascii_lowercase()
            .contains(&TOKEN.to_ascii_lowercase()),
        "token echoed: {text}"
    );
}

#[test]
fn s3_objects_from_elsewhere_and_nested_names_in_list_and_prune() {
    let server = s3_server();
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let s3 = server.options_json();
    // An object another tool stored (s3s-fs serves files under its root): no metadata.
    let raw = server.object_path("bkt", "mixed/plain.bin");
    fs::create_dir_all(raw.parent().unwrap()).unwrap();
    fs::write(&raw, b"twelve bytes").unwrap();
    to_s3(
        &conn,
        "s3://bkt/mixed",
        "sub/db-%d.gz",
        &merge(&s3, &json!({"now": "2026-11-20T00:00:00Z"})),
    );
    to_s3(
        &conn,
        "s3://bkt/mixed",
        "sub/db-%d.gz",
        &merge(&s3, &json!({"now": "2026-11-21T00:00:00Z"})),
    );

    let rows = list_rows(&conn, "s3://bkt/mixed", Some(&s3));
    let plain = rows.iter().find(|r| r.name == "plain.bin").expect("listed");
    assert_eq!(plain.sha256, None);
    assert_eq!(plain.size, 12);
    // No recorded backup time: LastModified, i.e. about now.
    let modified = at(&plain.modified);
    assert!(
        (Utc::now() - modified).num_seconds().abs() < 120,
        "{plain:?}"
    );
    assert_eq!(
        rows.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["plain.bin", "sub/db-21.gz", "sub/db-20.gz"]
    );

    // Nested names are pruned by their full name below the prefix.
    let r = prune(
        &conn,
        "s3://bkt/mixed",
        &merge(&s3, &json!({"keep_last": 1, "match": "sub/*", "now": NOW})),
    );
    assert_eq!(names_of(&r["kept"]), ["sub/db-21.gz"], "{r}");
    assert_eq!(names_of(&r["deleted"]), ["sub/db-20.gz"], "{r}");
    assert!(!server.object_path("bkt", "mixed/sub/db-20.gz").exists());
    assert!(raw.exists());
}

#[test]
fn if_changed_never_skips_because_of_an_unreadable_previous_backup() {
    let (_tmp, conn, dir) = fixture();
    let pattern = dir.join("c-%H.gz");
    to_file(&conn, &pattern, &json!({"now": "2026-11-23T10:00:00Z"}));
    // The newest backup is damaged: its content cannot be compared, so store a new one.
    fs::write(dir.join("c-10.gz"), b"\x1f\x8b garbage").unwrap();
    set_mtime(&dir.join("c-10.gz"), at("2026-11-23T10:00:00Z"));
    let r = to_file(
        &conn,
        &pattern,
        &json!({"now": "2026-11-23T11:00:00Z", "if_changed": true}),
    );
    assert_eq!(r["skipped"], json!(false), "{r}");
    assert_eq!(list(&dir), ["c-10.gz", "c-11.gz"]);
    // Only the newest counts: an older identical backup does not make it skip.
    conn.execute("INSERT INTO t(v) VALUES ('x')", []).unwrap();
    to_file(&conn, &pattern, &json!({"now": "2026-11-23T12:00:00Z"}));
    conn.execute("DELETE FROM t WHERE v = 'x'", []).unwrap();
    let r = to_file(
        &conn,
        &pattern,
        &json!({"now": "2026-11-23T13:00:00Z", "if_changed": true}),
    );
    assert_eq!(r["skipped"], json!(false), "{r}");
}
