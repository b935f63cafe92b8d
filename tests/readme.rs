//! Every ```sql block of README.md runs here, in order, in the real sqlite3 CLI, against a copy of
//! the sample database. A statement followed by a `-- error: TEXT` comment must fail with an error
//! containing TEXT; every other statement must succeed. So the reference cannot drift from the code.
//!
//! S3 examples run against a local S3 server (bucket `my-bucket`) given to the CLI through the
//! AWS environment variables, as a user would; the monitoring URLs of the examples are pointed
//! at a listener on 127.0.0.1 (tests never reach past loopback).

mod common;

use std::path::Path;
use std::process::Command;

use common::http::HttpServer;
use common::s3server::S3Server;

/// Answers every HTTP request with 204, like a monitoring service; returns its base URL.
fn ping_listener() -> String {
    HttpServer::start(204).url("/")
}

struct Statement {
    sql: String,
    expected_error: Option<String>,
}

/// Splits the README's sql blocks into statements with their expected outcome.
fn statements(readme: &str) -> Vec<Statement> {
    let mut out: Vec<Statement> = Vec::new();
    let mut in_block = false;
    let mut current = String::new();
    for line in readme.lines() {
        if line.trim_start().starts_with("```") {
            in_block = line.trim() == "```sql";
            continue;
        }
        if !in_block {
            continue;
        }
        let trimmed = line.trim();
        if let Some(text) = trimmed.strip_prefix("-- error:") {
            if let Some(last) = out.last_mut() {
                last.expected_error = Some(text.trim().to_string());
            }
            continue;
        }
        if trimmed.starts_with("--") || trimmed.is_empty() || trimmed.starts_with(".load") {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if trimmed.ends_with(';') {
            out.push(Statement {
                sql: std::mem::take(&mut current),
                expected_error: None,
            });
        }
    }
    out
}

#[test]
fn readme_sql_examples_run() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let stmts = statements(&readme);
    assert!(stmts.len() >= 25, "found only {} statements", stmts.len());

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("backups")).expect("backups dir");
    // The identity of the README's age recipient age1zvkyg2…: a made-up key (32 bytes of 0x42).
    std::fs::write(
        dir.path().join("key.txt"),
        "AGE-SECRET-KEY-1GFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPYYSJZGFPQ4EGAEX\n",
    )
    .expect("key.txt");
    let made = Command::new(common::SQLITE3)
        .arg("app.db")
        .arg(format!(".read {}", root.join("sql/sample.sql").display()))
        .current_dir(dir.path())
        .output()
        .expect("run sqlite3");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );

    let server = S3Server::start();
    server.create_bucket("my-bucket");
    let opts = server.options_json();
    let pings = ping_listener();
    let ext = common::ext_load_name();
    for st in &stmts {
        let sql = st
            .sql
            .replace("https://nosnch.in/", &pings)
            .replace("https://hc-ping.com/", &pings);
        let out = Command::new(common::SQLITE3)
            .arg("-bail")
            .arg("-cmd")
            .arg(format!(".load {ext}"))
            .arg("app.db")
            .arg(&sql)
            .current_dir(dir.path())
            .env("AWS_ENDPOINT_URL", server.endpoint())
            .env(
                "AWS_ACCESS_KEY_ID",
                opts["access_key_id"].as_str().expect("key"),
            )
            .env(
                "AWS_SECRET_ACCESS_KEY",
                opts["secret_access_key"].as_str().expect("secret"),
            )
            .env("AWS_REGION", "us-east-1")
            .output()
            .expect("run sqlite3");
        let stderr = String::from_utf8_lossy(&out.stderr);
        match &st.expected_error {
            None => assert!(
                out.status.success(),
                "README statement failed:\n{}\n{stderr}",
                st.sql
            ),
            Some(text) => {
                assert!(!out.status.success(), "expected an error:\n{}", st.sql);
                assert!(
                    stderr.contains(text.as_str()),
                    "error for\n{}\nwas {stderr}, README says {text}",
                    st.sql
                );
            }
        }
    }
}
