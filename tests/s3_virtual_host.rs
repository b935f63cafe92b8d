//! Virtual-hosted-style addressing (`Host: bucket.endpoint`) against the real S3 server.
//!
//! `*.localhost` names do not resolve here, so the sqlite3 CLI reaches the server through an
//! HTTP proxy (HTTPS_PROXY/HTTP_PROXY, which the extension honours like curl and the AWS CLI):
//! DNS is the proxy's business, and this one sends every CONNECT to the server on 127.0.0.1.
//! The request itself is untouched, so s3s-fs checks the SigV4 signature over the virtual
//! host name, and resolves the bucket from it (`--domain s3.test`).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::thread;

use common::s3server::S3Server;

/// A CONNECT-only proxy tunnelling every connection to `upstream`; returns its URL and a log of
/// the CONNECT targets it was asked for.
fn connect_proxy(upstream: u16) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = log.clone();
    thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let seen = seen.clone();
            thread::spawn(move || tunnel(client, upstream, &seen));
        }
    });
    (format!("http://127.0.0.1:{port}"), log)
}

fn tunnel(mut client: TcpStream, upstream: u16, seen: &std::sync::Mutex<Vec<String>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    seen.lock().unwrap().push(line);
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    if client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .is_err()
    {
        return;
    }
    let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up = thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut s2);
        let _ = s2.shutdown(Shutdown::Write);
    });
    let (mut s3, mut c3) = (server, client);
    let _ = std::io::copy(&mut s3, &mut c3);
    let _ = c3.shutdown(Shutdown::Write);
    let _ = up.join();
}

#[test]
fn virtual_hosted_round_trip_through_a_proxy() {
    let server = S3Server::start_with_domain(Some("s3.test"));
    server.create_bucket("vhost-bkt");
    let (proxy, log) = connect_proxy(server.port());
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
        .env("HTTP_PROXY", &proxy)
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
    let targets = log.lock().unwrap().clone();
    assert!(!targets.is_empty());
    assert!(
        targets
            .iter()
            .all(|t| t.starts_with("CONNECT vhost-bkt.s3.test:80 ")),
        "{targets:?}"
    );
}
