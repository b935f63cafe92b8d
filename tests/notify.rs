//! Monitoring pings (`notify`) for both conventions, captured by the loopback HTTP server of
//! tests/common/http.rs: start/success/failure pings, a failing monitor never failing a good
//! backup, and the URL's secret parts never shown.

mod common;

use common::calls::*;
use common::http::{HttpServer, Reply};
use common::s3server::free_port;
use common::series::*;
use common::*;
use serde_json::json;

const TOKEN: &str = "SECRETTOKEN123";

/// The ping URL's secret parts.
const SECRETS: &[&str] = &[TOKEN, "QUERYSECRET77"];

#[test]
fn snitch_pings_on_success_and_failure() {
    let (_tmp, conn, dir) = fixture();
    let monitor = HttpServer::start(200);
    let url = monitor.url(&format!("/{TOKEN}"));

    let r = to_file(
        &conn,
        &dir.join("s-%H.gz"),
        &json!({"now": NOW, "notify": url}),
    );
    let dest = dir.join("s-12.gz");
    assert_eq!(r["destination"], json!(dest.to_str().unwrap()));
    assert_eq!(
        r["notify"],
        json!({"start": null, "result": {
            "ok": true, "status": 200, "error": null,
            "url": format!("http://127.0.0.1:{}/***", monitor.port())
        }}),
        "{r}"
    );
    assert_no_secret(&r.to_string(), SECRETS);
    let reqs = monitor.requests();
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    assert_eq!(reqs[0].method, "POST");
    assert_eq!(reqs[0].target, format!("/{TOKEN}"));
    assert_eq!(
        reqs[0].header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let form = reqs[0].form();
    assert_eq!(form[0], ("s".to_string(), "0".to_string()), "{form:?}");
    assert_eq!(form[1].0, "m");
    assert!(
        form[1]
            .1
            .starts_with(&format!("stored {} (", dest.display())),
        "{form:?}"
    );
    assert_eq!(form.len(), 2);

    // Failure: a missing directory. The SQL call fails with its own error, and the monitor
    // gets s=1 with that error as the message.
    let missing = dir.join("missing/s-%H.gz");
    let err = to_file_err(&conn, &missing, &json!({"now": NOW, "notify": url}));
    assert!(err.contains("does not exist"), "{err}");
    assert_no_secret(&err, SECRETS);
    let reqs = monitor.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    assert_eq!(reqs[1].target, format!("/{TOKEN}"));
    let form = reqs[1].form();
    assert_eq!(
        form,
        [
            ("s".to_string(), "1".to_string()),
            (
                "m".to_string(),
                err.trim_start_matches("backup_to_file: ").to_string()
            )
        ]
    );
    // The same error as without monitoring.
    assert_eq!(to_file_err(&conn, &missing, &json!({"now": NOW})), err);

    // A skipped backup (if_changed) is a success, with a message saying so.
    let r = to_file(
        &conn,
        &dir.join("s-%H.gz"),
        &json!({"now": "2026-11-23T13:00:00Z", "if_changed": true, "notify": url}),
    );
    assert_eq!(r["skipped"], json!(true), "{r}");
    assert_eq!(r["notify"]["result"]["ok"], json!(true));
    let form = monitor.requests()[2].form();
    assert_eq!(form[0].1, "0");
    assert!(form[1].1.contains("unchanged"), "{form:?}");
}

#[test]
fn healthchecks_pings_start_success_and_fail() {
    let (_tmp, conn, dir) = fixture();
    let monitor = HttpServer::start(200);
    let url = monitor.url(&format!("/ping/{TOKEN}"));
    let shown = format!("http://127.0.0.1:{}/***", monitor.port());
    let opts = json!({"now": NOW, "notify": url, "notify_style": "healthchecks"});

    let r = to_file(&conn, &dir.join("h-%H.gz"), &opts);
    assert_eq!(
        r["notify"],
        json!({
            "start": {"ok": true, "status": 200, "error": null, "url": format!("{shown}/start")},
            "result": {"ok": true, "status": 200, "error": null, "url": shown},
        }),
        "{r}"
    );
    assert_no_secret(&r.to_string(), SECRETS);
    let reqs = monitor.requests();
    let targets: Vec<&str> = reqs.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        [format!("/ping/{TOKEN}/start"), format!("/ping/{TOKEN}")],
        "{reqs:#?}"
    );
    assert!(reqs.iter().all(|r| r.method == "POST"));
    assert_eq!(reqs[0].body, "");
    assert!(
        reqs[1]
            .body
            .starts_with(&format!("stored {} (", dir.join("h-12.gz").display())),
        "{}",
        reqs[1].body
    );
    assert!(
        reqs[1]
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{reqs:#?}"
    );

    // Failure: /start, then /fail with the error text as the body.
    let err = to_file_err(&conn, &dir.join("missing/h-%H.gz"), &opts);
    assert!(err.contains("does not exist"), "{err}");
    let reqs = monitor.requests();
    let targets: Vec<&str> = reqs[2..].iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            format!("/ping/{TOKEN}/start"),
            format!("/ping/{TOKEN}/fail")
        ]
    );
    assert_eq!(reqs[3].body, err.trim_start_matches("backup_to_file: "));
}

#[test]
fn a_failed_ping_never_fails_a_good_backup() {
    let (_tmp, conn, dir) = fixture();

    // Nobody listening.
    let port = free_port();
    let closed = format!("http://127.0.0.1:{port}/{TOKEN}?key=QUERYSECRET77");
    let r = to_file(
        &conn,
        &dir.join("u-%H.gz"),
        &json!({"now": NOW, "notify": closed}),
    );
    assert!(dir.join("u-12.gz").is_file());
    assert_eq!(r["skipped"], json!(false));
    let result = &r["notify"]["result"];
    assert_eq!(result["ok"], json!(false), "{r}");
    assert_eq!(result["status"], json!(null), "{r}");
    assert!(
        result["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{r}"
    );
    assert_eq!(
        result["url"],
        json!(format!("http://127.0.0.1:{port}/***?key=***"))
    );
    assert_no_secret(&r.to_string(), SECRETS);
    // Healthchecks to nobody: both pings fail, the backup stands.
    let r = to_file(
        &conn,
        &dir.join("u2-%H.gz"),
        &json!({"now": NOW, "notify": closed, "notify_style": "healthchecks"}),
    );
    assert_eq!(r["notify"]["start"]["ok"], json!(false), "{r}");
    assert_eq!(r["notify"]["result"]["ok"], json!(false), "{r}");
    assert!(dir.join("u2-12.gz").is_file());
    assert_no_secret(&r.to_string(), SECRETS);

    // A monitor answering 500, whose body quotes the secret URL back.
    let monitor = HttpServer::start(500);
    let url = monitor.url(&format!("/{TOKEN}?key=QUERYSECRET77"));
    let r = to_file(
        &conn,
        &dir.join("f-%H.gz"),
        &json!({"now": NOW, "notify": url}),
    );
    assert!(dir.join("f-12.gz").is_file());
    let result = &r["notify"]["result"];
    assert_eq!(result["ok"], json!(false), "{r}");
    assert_eq!(result["status"], json!(500), "{r}");
    assert!(
        result["error"].as_str().unwrap().starts_with("HTTP 500"),
        "{r}"
    );
    assert_no_secret(&r.to_string(), SECRETS);
    // 5xx is retried once (src/notify.rs), never more.
    let n = monitor.requests().len();
    assert!((1..=2).contains(&n), "{n} requests");

    // A monitor that accepts the connection and never answers: bounded by notify_timeout_ms.
    let silent = HttpServer::replying(&[Reply::Stall(std::time::Duration::from_secs(10))]);
    let silent_url = silent.url(&format!("/{TOKEN}"));
    let started = std::time::Instant::now();
    let r = to_file(
        &conn,
        &dir.join("t-%H.gz"),
        &json!({"now": NOW, "notify": silent_url, "notify_timeout_ms": 300}),
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(dir.join("t-12.gz").is_file());
    assert_eq!(r["notify"]["result"]["ok"], json!(false), "{r}");
    assert!(
        r["notify"]["result"]["error"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{r}"
    );
    assert_no_secret(&r.to_string(), SECRETS);
    drop(silent);

    // A failing backup with an unreachable monitor still reports the backup's own error.
    let err = to_file_err(&conn, &dir.join("missing/x.gz"), &json!({"notify": closed}));
    assert!(err.contains("does not exist"), "{err}");
    assert_no_secret(&err, SECRETS);
}

#[test]
fn a_bad_monitoring_url_is_refused_without_showing_it() {
    let (_tmp, conn, dir) = fixture();
    for bad in [
        format!("ftp://127.0.0.1/{TOKEN}"),
        format!("http://[::1/{TOKEN}"),
        format!("not a url {TOKEN}"),
    ] {
        let err = to_file_err(&conn, &dir.join("x.gz"), &json!({"notify": bad}));
        assert!(err.contains("monitoring URL"), "{bad}: {err}");
        assert_no_secret(&err, SECRETS);
        assert!(!dir.join("x.gz").exists(), "{bad}: backed up anyway");
    }
}

#[test]
fn healthchecks_suffixes_go_before_the_query() {
    let (_tmp, conn, dir) = fixture();
    let monitor = HttpServer::start(200);
    let url = monitor.url(&format!("/ping/{TOKEN}/?rid=QUERYSECRET77"));
    let opts = json!({"now": NOW, "notify": url, "notify_style": "healthchecks"});
    let r = to_file(&conn, &dir.join("q.gz"), &opts);
    let shown = format!("http://127.0.0.1:{}/***", monitor.port());
    assert_eq!(
        r["notify"]["start"]["url"],
        json!(format!("{shown}/start?rid=***"))
    );
    assert_eq!(
        r["notify"]["result"]["url"],
        json!(format!("{shown}?rid=***"))
    );
    assert_no_secret(&r.to_string(), SECRETS);
    to_file_err(&conn, &dir.join("missing/q.gz"), &opts);
    let targets: Vec<String> = monitor.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            format!("/ping/{TOKEN}/start?rid=QUERYSECRET77"),
            format!("/ping/{TOKEN}/?rid=QUERYSECRET77"),
            format!("/ping/{TOKEN}/start?rid=QUERYSECRET77"),
            format!("/ping/{TOKEN}/fail?rid=QUERYSECRET77"),
        ]
    );
}

/// `https://${HOST}/${TOKEN}` with an empty HOST gives `http:///TOKEN`, which a URL parser
/// reads as host `secrettoken123`: it must be refused as a URL with no host, without the token
/// being looked up in DNS or shown.
#[test]
fn a_ping_url_without_host_is_refused_without_echoing_its_token() {
    let (_tmp, conn, dir) = fixture();
    let sql = to_file_sql(
        &dir.join("x.gz"),
        &json!({"notify": format!("http:///{TOKEN}")}),
    );
    let outcome: rusqlite::Result<String> = conn.query_row(&sql, [], |r| r.get(0));
    let text = match outcome {
        Ok(result) => result,
        Err(e) => e.to_string(),
    };
    // Without case: the URL parser lowercased the token as a host name.
    assert_no_secret(&text, &[TOKEN]);
}

#[test]
fn an_incremental_backup_pings_like_any_other() {
    // notify wraps every backup call: an incremental one reports its kind, and the monitor hears
    // "stored" for the full and for the incremental that follows it.
    let (_tmp, conn, dir) = fixture();
    let monitor = HttpServer::start(200);
    let url = monitor.url(&format!("/{TOKEN}"));
    let pattern = dir.join("inc-%Y%m%dT%H%M%SZ.db.zst");
    let first = to_file(
        &conn,
        &pattern,
        &json!({"incremental": true, "now": "2026-11-23T20:00:00Z", "notify": url}),
    );
    assert_eq!(first["kind"], json!("full"), "{first}");
    conn.execute_batch("CREATE TABLE more(x); INSERT INTO more VALUES (1);")
        .unwrap();
    let second = to_file(
        &conn,
        &pattern,
        &json!({"incremental": true, "now": "2026-11-23T21:00:00Z", "notify": url}),
    );
    assert_eq!(second["kind"], json!("incremental"), "{second}");
    for r in [&first, &second] {
        assert_eq!(r["notify"]["result"]["ok"], json!(true), "{r}");
        assert_no_secret(&r.to_string(), SECRETS);
    }
    let reqs = monitor.requests();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    for (req, r) in reqs.iter().zip([&first, &second]) {
        let form = req.form();
        assert_eq!(form[0], ("s".to_string(), "0".to_string()), "{form:?}");
        let dest = r["destination"].as_str().unwrap();
        assert!(
            form[1].1.starts_with(&format!("stored {dest} (")),
            "{form:?}"
        );
    }
}
