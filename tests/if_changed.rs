//! `if_changed`: an unchanged database is not stored again, in a directory and on S3; a
//! damaged or older identical backup never makes it skip.

mod common;

use std::fs;

use common::calls::*;
use common::series::*;
use common::*;
use serde_json::json;

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
