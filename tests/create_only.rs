//! `create_only`: an existing file or object is refused (S3 sends If-None-Match: *).

mod common;

use std::fs;

use common::calls::*;
use common::proxy::{Fault, Proxy};
use common::series::*;
use common::*;
use serde_json::json;

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
