//! What the S3 upload path does per byte (#14 item 1): each body's integrity check is done once
//! and is covered by the signature. Against s3s-fs (which checks SigV4 signatures) through the
//! recording proxy of tests/common.

mod common;

use common::calls::*;
use common::proxy::Proxy;
use common::*;
use serde_json::json;

/// s3s-fs, like AWS, refuses parts below 5 MiB (other than the last) at Complete.
const PART: u64 = 5 << 20;

/// The URLs are presigned, so the body itself is not signed (`UNSIGNED-PAYLOAD`): the
/// `Content-MD5` S3 checks it against must be, or over plain http both could be replaced.
#[test]
fn every_upload_signs_its_content_md5() {
    let server = common::series::s3_server();
    let proxy = Proxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], server.port())));
    let dir = tempdir();
    let small_path = dir.path().join("small.db");
    make_sample_db(&small_path, Journal::Wal, 300);
    let small = open(&small_path);
    let (big, _) = big_db(dir.path());
    let opts = merge(
        &server.options_json(),
        &json!({"endpoint": proxy.endpoint(), "part_size": PART, "timeout_ms": 30000,
                "concurrency": 2, "level": 1}),
    );

    let one = call_json(&small, &to_s3_sql("s3://bkt/p", "small.zst", &opts));
    assert_eq!(one["parts"], 1, "{one}");
    let multi = call_json(&big, &to_s3_sql("s3://bkt/p", "big.zst", &opts));
    assert!(multi["parts"].as_u64().unwrap() >= 2, "{multi}");

    let requests = proxy.requests();
    let puts: Vec<_> = requests.iter().filter(|r| r.method == "PUT").collect();
    assert_eq!(
        puts.len() as u64,
        1 + multi["parts"].as_u64().unwrap(),
        "{requests:#?}"
    );
    for r in &puts {
        assert!(r.header("content-md5").is_some(), "{r:?}");
        let signed = r
            .query
            .split('&')
            .find_map(|kv| kv.strip_prefix("X-Amz-SignedHeaders="))
            .unwrap_or_default()
            .replace("%3B", ";")
            .replace("%3b", ";");
        assert!(
            signed.split(';').any(|h| h == "content-md5"),
            "content-md5 is not among the signed headers ({signed}): {r:?}"
        );
        // Once per body: no second hash header beside it.
        assert!(r.header("x-amz-content-sha256").is_none(), "{r:?}");
        assert!(
            r.headers
                .iter()
                .all(|(n, _)| !n.starts_with("x-amz-checksum-")),
            "{r:?}"
        );
    }
    // The server accepted the signatures and holds the databases.
    for (report, key) in [(&one, "p/small.zst"), (&multi, "p/big.zst")] {
        assert_eq!(
            sha256_hex(&decompress_cli(&server.object_path("bkt", key))),
            report["sha256"].as_str().unwrap(),
            "{key}"
        );
    }
}
