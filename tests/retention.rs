//! backup_prune: every retention rule, exactly what it keeps and deletes, on a directory and
//! on S3 with made-up ages (the series of tests/common/series.rs, made with the injected clock;
//! pruning gets the same clock through its own `now`, so nothing depends on the real date).
//! What prune must never delete is in tests/retention_safety.rs.

mod common;

use std::fs;

use common::calls::*;
use common::s3server::S3Server;
use common::series::*;
use common::*;
use rusqlite::Connection;
use serde_json::{json, Value};

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
