//! backup_list on a directory and on S3: columns, newest first, `match`, nested keys, objects
//! stored by other tools, and ListObjectsV2 continuation pages (through the fault proxy, which
//! records the requests).

mod common;

use std::fs;

use chrono::Utc;
use common::calls::*;
use common::proxy::Proxy;
use common::series::*;
use common::*;
use serde_json::json;

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
    // Hidden files and directories are not listed; the plain bystanders are (no match).
    // Equal times by name descending, as retention orders them.
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
                // From the backup's trailer (#14): the sha256 its call reported.
                sha256: results[i - 1]["sha256"].as_str().map(str::to_string),
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
