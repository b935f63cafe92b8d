//! S3 server-side encryption (`sse`, `sse_kms_key_id`, `sse_customer_key`) and `storage_class`:
//! the headers that reach the server (recorded by the proxy in front of s3s-fs, which checks
//! their signatures), on the single PUT, CreateMultipartUpload, every UploadPart, and (SSE-C)
//! every GET and HEAD; bad values refused before any request; the customer key never shown.

mod common;

use std::path::Path;

use common::calls::*;
use common::proxy::{Proxy, Recorded};
use common::s3server::S3Server;
use common::*;
use rusqlite::Connection;
use serde_json::{json, Value};

/// s3s-fs, like AWS, refuses parts below 5 MiB (other than the last) at Complete.
const PART: u64 = 5 << 20;
/// 32 random bytes, base64: an SSE-C key.
const KEY: &str = "q83vEjRWeJq8EjRWeJq83vEjRWeJq83vEjRWeJq83vE=";

const SSE: &str = "x-amz-server-side-encryption";
const KMS_KEY: &str = "x-amz-server-side-encryption-aws-kms-key-id";
const CLASS: &str = "x-amz-storage-class";
const C_ALG: &str = "x-amz-server-side-encryption-customer-algorithm";
const C_KEY: &str = "x-amz-server-side-encryption-customer-key";
const C_MD5: &str = "x-amz-server-side-encryption-customer-key-md5";

fn setup() -> (S3Server, Proxy) {
    let server = S3Server::start();
    server.create_bucket("bkt");
    let proxy = Proxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], server.port())));
    (server, proxy)
}

fn opts(server: &S3Server, proxy: &Proxy, extra: Value) -> Value {
    let o = merge(
        &server.options_json(),
        &json!({"endpoint": proxy.endpoint(), "part_size": PART, "timeout_ms": 30000}),
    );
    merge(&o, &extra)
}

/// About 7 MB of random blobs: two parts, uncompressed.
fn big_db(dir: &Path) -> Connection {
    let conn = open(dir.join("big.db"));
    conn.execute_batch(
        "CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 70)
         INSERT INTO blobs SELECT i, randomblob(100000) FROM n;",
    )
    .unwrap();
    conn
}

fn small_db(dir: &Path) -> Connection {
    let path = dir.join("small.db");
    make_sample_db(&path, Journal::Rollback, 50);
    open(path)
}

fn is_part(r: &Recorded) -> bool {
    r.method == "PUT" && r.query.contains("partNumber")
}
fn is_create(r: &Recorded) -> bool {
    r.method == "POST" && r.query.contains("uploads")
}
fn is_single_put(r: &Recorded) -> bool {
    r.method == "PUT" && !r.query.contains("partNumber")
}

#[track_caller]
fn has(r: &Recorded, headers: &[(&str, &str)]) {
    for (name, value) in headers {
        assert_eq!(
            r.header(name),
            Some(*value),
            "{} {}?{}: {name}",
            r.method,
            r.path,
            r.query
        );
        // Signed: AWS refuses unsigned x-amz-* headers.
        assert!(
            r.query.contains(&name.to_string()),
            "{name} unsigned: {}",
            r.query
        );
    }
}

#[track_caller]
fn has_none(r: &Recorded, names: &[&str]) {
    for name in names {
        assert_eq!(r.header(name), None, "{} {}?{}", r.method, r.path, r.query);
    }
}

#[test]
fn sse_and_storage_class_on_the_single_put_and_on_create_multipart() {
    let (server, proxy) = setup();
    let dir = tempdir();
    // s3s-fs stores only STANDARD (and refuses other classes, below).
    let extra = json!({"sse": "aws:kms", "sse_kms_key_id": "alias/backups",
                       "storage_class": "STANDARD"});
    let want = [
        (SSE, "aws:kms"),
        (KMS_KEY, "alias/backups"),
        (CLASS, "STANDARD"),
    ];

    let small = small_db(dir.path());
    let r = to_s3(
        &small,
        "s3://bkt/p",
        "small.db.gz",
        &opts(&server, &proxy, extra.clone()),
    );
    assert_eq!(r["parts"], 1, "{r}");
    let reqs = proxy.requests();
    let puts: Vec<_> = reqs.iter().filter(|r| is_single_put(r)).collect();
    assert_eq!(puts.len(), 1);
    has(puts[0], &want);
    proxy.clear_requests();

    let big = big_db(dir.path());
    let r = to_s3(
        &big,
        "s3://bkt/p",
        "big.db",
        &opts(&server, &proxy, extra.clone()),
    );
    assert_eq!(r["parts"], 2, "{r}");
    let reqs = proxy.requests();
    let creates: Vec<_> = reqs.iter().filter(|r| is_create(r)).collect();
    assert_eq!(creates.len(), 1);
    has(creates[0], &want);
    // S3 takes them only when the upload is created.
    for part in reqs.iter().filter(|r| is_part(r)) {
        has_none(part, &[SSE, KMS_KEY, CLASS]);
    }
    proxy.clear_requests();

    // The server reads the class on PutObject (s3s-fs ignores it on CreateMultipartUpload):
    // one it does not offer is refused, and nothing is left.
    let o = opts(
        &server,
        &proxy,
        json!({"storage_class": "GLACIER_IR", "sse": "AES256"}),
    );
    let err = to_s3_err(&small, "s3://bkt/p", "ia.db.gz", &o);
    assert!(err.contains("(InvalidStorageClass)"), "{err}");
    let put = proxy.requests().into_iter().find(is_single_put).unwrap();
    has(&put, &[(CLASS, "GLACIER_IR"), (SSE, "AES256")]);
    assert!(!server.object_path("bkt", "p/ia.db.gz").exists());
    proxy.clear_requests();

    // Without the options nothing changes.
    to_s3(
        &small,
        "s3://bkt/p",
        "plain.db.gz",
        &opts(&server, &proxy, json!({})),
    );
    for r in proxy.requests() {
        has_none(&r, &[SSE, KMS_KEY, CLASS, C_ALG, C_KEY, C_MD5]);
    }
}

#[test]
fn sse_c_key_on_every_part_get_and_head_and_never_shown() {
    let (server, proxy) = setup();
    let dir = tempdir();
    let key = json!({"sse_customer_key": KEY});
    // md5 of the 32 raw bytes, base64.
    let md5 = {
        use base64::Engine as _;
        use md5::Digest as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .unwrap();
        base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(&raw))
    };
    let want = [(C_ALG, "AES256"), (C_KEY, KEY), (C_MD5, md5.as_str())];

    let big = big_db(dir.path());
    let out = to_s3(
        &big,
        "s3://bkt/p",
        "big.db",
        &opts(&server, &proxy, key.clone()),
    );
    assert_eq!(out["parts"], 2, "{out}");
    let reqs = proxy.requests();
    let creates: Vec<_> = reqs.iter().filter(|r| is_create(r)).collect();
    assert_eq!(creates.len(), 1);
    has(creates[0], &want);
    let parts: Vec<_> = reqs.iter().filter(|r| is_part(r)).collect();
    assert_eq!(parts.len(), 2);
    for part in parts {
        has(part, &want);
    }
    let mut outputs = vec![out.to_string()];

    let small = small_db(dir.path());
    outputs.push(
        to_s3(
            &small,
            "s3://bkt/p",
            "small.db.gz",
            &opts(&server, &proxy, key.clone()),
        )
        .to_string(),
    );
    let put = proxy.requests().into_iter().find(is_single_put).unwrap();
    has(&put, &want);

    // Reading back: every HEAD and GET carries the key.
    proxy.clear_requests();
    let o = opts(&server, &proxy, key.clone());
    let v = verify(&small, "s3://bkt/p/small.db.gz", &o);
    assert_eq!(v["ok"], true, "{v}");
    outputs.push(v.to_string());
    let dest = dir.path().join("restored.db");
    let r = restore(&small, "s3://bkt/p/big.db", Some(&dest), &o);
    assert_eq!(r["ok"], true, "{r}");
    outputs.push(r.to_string());
    let reqs = proxy.requests();
    let reads: Vec<_> = reqs
        .iter()
        .filter(|r| r.method == "GET" || r.method == "HEAD")
        .collect();
    assert!(reads.iter().any(|r| r.method == "HEAD"), "{reads:?}");
    assert!(reads.iter().any(|r| r.method == "GET"), "{reads:?}");
    for read in reads {
        has(read, &want);
    }
    // Nor in the listing, a debug dump or an error.
    let list = call_json(
        &small,
        &format!(
            "SELECT json_group_array(json_object('name', name, 'url', url)) FROM backup_list('s3://bkt/p', {})",
            lit(o.to_string())
        ),
    );
    outputs.push(list.to_string());
    outputs.push(call_err(
        &small,
        &to_s3_sql(
            "s3://bkt/p",
            "small.db.gz",
            &merge(&o, &json!({"create_only": true})),
        ),
    ));
    for text in &outputs {
        assert_no_secret(text, &[KEY]);
    }
}

#[test]
fn bad_values_are_usage_errors_before_any_request() {
    let (server, proxy) = setup();
    let dir = tempdir();
    let conn = small_db(dir.path());
    let cases = [
        (
            json!({"sse": "AES-256"}),
            "option 'sse' must be \"AES256\" or \"aws:kms\"",
        ),
        (
            json!({"sse_kms_key_id": "alias/x"}),
            "option 'sse_kms_key_id' needs \"sse\": \"aws:kms\"",
        ),
        (
            json!({"sse": "aws:kms", "sse_kms_key_id": "a b"}),
            "must be a KMS key id",
        ),
        (
            json!({"sse": "AES256", "sse_customer_key": KEY}),
            "exclude each other",
        ),
        (
            json!({"sse_customer_key": &KEY[..40]}),
            "must be a 256-bit key in base64",
        ),
        (
            json!({"storage_class": "GLACIER-IR"}),
            "option 'storage_class' must be one of STANDARD, ",
        ),
        (json!({"storage_class": 3}), "storage_class"),
    ];
    for (extra, want) in cases {
        let o = opts(&server, &proxy, extra.clone());
        for err in [
            to_s3_err(&conn, "s3://bkt/p", "x.db.gz", &o),
            verify_err(&conn, "s3://bkt/p/x.db.gz", &o),
        ] {
            assert!(err.contains(want), "{extra}: {err}");
            assert_no_secret(&err, &[KEY]);
        }
    }
    assert!(proxy.requests().is_empty(), "{:?}", proxy.requests());
    assert!(std::fs::read_dir(server.root().join("bkt"))
        .unwrap()
        .next()
        .is_none());
}
