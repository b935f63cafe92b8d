//! Virtual-hosted-style addressing (`Host: bucket.endpoint`) against the real S3 server.
//!
//! `*.localhost` names do not resolve here, so the sqlite3 CLI reaches the server through an
//! HTTP proxy (HTTPS_PROXY/HTTP_PROXY, which the extension honours like curl and the AWS CLI):
//! DNS is the proxy's business, and this one sends every CONNECT to the server on 127.0.0.1.
//! The request itself is untouched, so s3s-fs checks the SigV4 signature over the virtual
//! host name, and resolves the bucket from it (`--domain s3.test`).

mod common;

use std::process::Command;

use common::http::{HttpServer, Reply};
use common::s3server::S3Server;

#[test]
fn virtual_hosted_round_trip_through_a_proxy() {
    let server = S3Server::start_with_domain(Some("s3.test"));
    server.create_bucket("vhost-bkt");
    // A CONNECT-only proxy tunnelling every connection to the server.
    let proxy = HttpServer::replying(&[Reply::Tunnel(server.port())]);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("app.db");
    common::make_sample_db(&db, common::Journal::Wal, 200);

    // Port 80 is implied, so the Host header is exactly `vhost-bkt.s3.test`.
    let opts = format!(
        r#"{{"endpoint": "http://s3.test", "access_key_id": "{}", "secret_access_key": "{}", "part_size": 5242880}}"#,
        server.access_key, server.secret_key
    );
    let sql = format!(
        "SELECT backup_to_s3('s3://vhost-bkt/app', 'db.gz', '{opts}') ->> '$.destination';\n\
         SELECT verify_backup('s3://vhost-bkt/app/db.gz', '{opts}') ->> '$.ok';\n\
         SELECT count(*) FROM backup_list('s3://vhost-bkt/app', '{opts}');\n"
    );
    let out = Command::new(common::SQLITE3)
        .arg("-bail")
        .arg("-cmd")
        .arg(format!(".load {}", common::ext_load_name()))
        .arg(&db)
        .arg(&sql)
        .env("HTTP_PROXY", proxy.base())
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .expect("run sqlite3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["s3://vhost-bkt/app/db.gz", "1", "1"]
    );
    // The object is where path-style would have put it: the server resolved the bucket from
    // the host name.
    assert!(server.object_path("vhost-bkt", "app/db.gz").is_file());
    // And every connection asked for the virtual host, never a path-style URL.
    let targets: Vec<String> = proxy
        .requests()
        .iter()
        .map(|r| format!("{} {} ", r.method, r.target))
        .collect();
    assert!(!targets.is_empty());
    assert!(
        targets
            .iter()
            .all(|t| t.starts_with("CONNECT vhost-bkt.s3.test:80 ")),
        "{targets:?}"
    );
}
