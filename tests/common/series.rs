//! The made-up backup series of the listing, retention and `keep` tests: twenty backup times
//! spread over hours to years, each retention rule with exactly what it keeps, and the
//! fixtures that make the series in a directory or on S3. Backups of made-up ages are made
//! with the injected clock (`now`), which sets both the name and the recorded time (file
//! mtime, `x-amz-meta-backup-time`).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use chrono::{DateTime, Utc};
use rusqlite::Connection;
use serde_json::{json, Value};

use super::calls::{names_of, to_file};
use super::s3server::S3Server;
use super::{open, tempdir};

/// The clock of the retention tests: Monday 2026-11-23 12:00 UTC (ISO week 2026-W48).
pub const NOW: &str = "2026-11-23T12:00:00Z";

/// Twenty backup times, newest first, spread over hours, days, ISO weeks, months and years.
/// Numbered 1..=20 in the expectations below.
pub const SERIES: [&str; 20] = [
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
pub const PATTERN: &str = "db-%Y%m%d-%H%M.gz";

pub fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

pub fn series_name(i: usize) -> String {
    at(SERIES[i - 1]).format("db-%Y%m%d-%H%M.gz").to_string()
}

/// (rule, policy, kept numbers, reasons of the kept ones when checked). Everything else in
/// the series is deleted.
pub struct Rule {
    pub label: &'static str,
    pub policy: Value,
    pub kept: Vec<usize>,
    pub reasons: Option<Vec<(usize, Vec<&'static str>)>>,
}

pub fn rules() -> Vec<Rule> {
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

/// A small source database in its own directory.
pub fn source(dir: &Path) -> (Connection, PathBuf) {
    let path = dir.join("src.db");
    let conn = open(&path);
    conn.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);
         INSERT INTO t(v) VALUES ('one'), ('two'), ('three');",
    )
    .unwrap();
    (conn, path)
}

/// A temp dir holding a source database (open, extension loaded) and an empty `b/` for
/// backups.
pub fn fixture() -> (tempfile::TempDir, Connection, PathBuf) {
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let dir = tmp.path().join("b");
    fs::create_dir(&dir).unwrap();
    (tmp, conn, dir)
}

pub fn set_mtime(path: &Path, t: DateTime<Utc>) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::from(t))
        .unwrap();
}

pub fn mtime(path: &Path) -> DateTime<Utc> {
    DateTime::<Utc>::from(fs::metadata(path).unwrap().modified().unwrap())
}

/// Checks a prune report against a rule: exact kept and deleted names (newest first), each
/// item's `modified`, and the reasons when the rule lists them.
#[track_caller]
pub fn check_report(report: &Value, rule: &Rule, dry_run: bool, where_: &str) {
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
pub fn copy_dir(from: &Path, to: &Path) {
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
pub const BYSTANDERS: [&str; 4] = [
    "notes.txt",
    "other-20261123-1159.gz",
    ".hidden-db-20200101-0000.gz",
    "db-dir.gz",
];

pub fn s3_server() -> S3Server {
    let server = S3Server::start();
    server.create_bucket("bkt");
    server
}

/// The series in a directory, made by backup_to_file with `now`, plus bystanders newer than
/// everything (so they would take keep_last slots if `match` were not applied).
pub fn directory_series(conn: &Connection, dir: &Path) -> Vec<Value> {
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
