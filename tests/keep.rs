//! `keep` in backup_to_file and backup_to_s3: the series is pruned after a successful backup
//! only.

mod common;

use std::fs;

use common::calls::*;
use common::series::*;
use common::*;
use serde_json::json;

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
