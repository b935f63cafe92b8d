//! Rolling names: every common strftime specifier in UTC, and names and buckets in local time
//! with `utc: false` (the sqlite3 CLI run with TZ set).

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};

use common::calls::*;
use common::series::*;
use common::*;
use serde_json::{json, Value};

#[test]
fn names_expand_every_common_specifier_in_utc() {
    let (_tmp, conn, dir) = fixture();
    // Sunday 2027-01-03: ISO week 53 of 2026 (%G %V), but week 01 counting from Sundays (%U).
    let pattern = "n-%Y-%m-%d-%H-%M-%S-%j-%U-%V-%G-%a-%b-%e-%s-%%.gz";
    let want = "n-2027-01-03-04-05-06-003-01-53-2026-Sun-Jan- 3-1798949106-%.gz";
    for now in ["2027-01-03T04:05:06Z", "2027-01-03T13:05:06+09:00"] {
        let r = to_file(&conn, &dir.join(pattern), &json!({ "now": now }));
        assert_eq!(
            r["destination"],
            json!(dir.join(want).to_str().unwrap()),
            "{now}"
        );
        assert!(dir.join(want).is_file());
    }
    // Padded and unpadded forms, and chrono's longer names.
    let r = to_file(
        &conn,
        &dir.join("m-%-d-%-m-%y-%A-%B-%I%p-%F-%T.gz"),
        &json!({"now": "2027-01-03T16:05:06Z"}),
    );
    assert_eq!(
        r["destination"],
        json!(dir
            .join("m-3-1-27-Sunday-January-04PM-2027-01-03-16:05:06.gz")
            .to_str()
            .unwrap())
    );
    // On S3 too.
    let server = s3_server();
    let r = to_s3(
        &conn,
        "s3://bkt/names",
        pattern,
        &merge(
            &server.options_json(),
            &json!({"now": "2027-01-03T04:05:06Z"}),
        ),
    );
    assert_eq!(r["destination"], json!(format!("s3://bkt/names/{want}")));
    assert!(server
        .object_path("bkt", &format!("names/{want}"))
        .is_file());
    // An unknown specifier is an error naming it, not a literal in a file name.
    let err = to_file_err(&conn, &dir.join("x-%Q.gz"), &json!({}));
    assert!(err.contains("'%Q'"), "{err}");
}

/// The sqlite3 CLI with the extension, in a given time zone.
fn cli_in_zone(tz: &str, db: &Path, script: &str) -> Output {
    let mut cmd = Command::new(SQLITE3);
    cmd.arg("-bail")
        .arg("-cmd")
        .arg(format!(".load {}", ext_load_name()))
        .arg(db)
        .env("TZ", tz)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().unwrap();
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[test]
fn names_and_buckets_in_local_time_with_utc_false() {
    let tmp = tempdir();
    let (_conn, db) = source(tmp.path());
    let dir = tmp.path().join("b");
    fs::create_dir(&dir).unwrap();
    let d = dir.to_str().unwrap().replace('\'', "''");
    let script = format!(
        "SELECT backup_to_file('{d}/local-%Y%m%d-%H%z.gz', '{{\"now\":\"{NOW}\",\"utc\":false}}');\n\
         SELECT backup_to_file('{d}/utc-%Y%m%d-%H%z.gz', '{{\"now\":\"{NOW}\"}}');\n"
    );
    let out = cli_in_zone("Asia/Tokyo", &db, &script);
    out.assert_ok();
    // 12:00 UTC is 21:00 in Tokyo (UTC+9, no DST).
    assert_eq!(
        list(&dir),
        ["local-20261123-21+0900.gz", "utc-20261123-12+0000.gz"],
        "{}",
        out.stdout
    );

    // Buckets: 14:00 and 16:00 UTC on the 22nd are the same UTC day, but 23:00 on the 22nd
    // and 01:00 on the 23rd in Tokyo.
    let pdir = tmp.path().join("p");
    fs::create_dir(&pdir).unwrap();
    for (name, t) in [
        ("a.gz", "2026-11-22T14:00:00Z"),
        ("b.gz", "2026-11-22T16:00:00Z"),
    ] {
        fs::write(pdir.join(name), b"SQLite format 3\0").unwrap();
        set_mtime(&pdir.join(name), at(t));
    }
    let p = pdir.to_str().unwrap().replace('\'', "''");
    let script = format!(
        "SELECT backup_prune('{p}', '{{\"keep_daily\":5,\"now\":\"{NOW}\",\"dry_run\":true}}');\n\
         SELECT backup_prune('{p}', '{{\"keep_daily\":5,\"now\":\"{NOW}\",\"dry_run\":true,\"utc\":false}}');\n"
    );
    let out = cli_in_zone("Asia/Tokyo", &db, &script);
    out.assert_ok();
    let reports: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        reports[0]["kept"],
        json!([{"name": "b.gz", "modified": "2026-11-22T16:00:00Z",
                "reasons": ["daily 2026-11-22"]}])
    );
    assert_eq!(names_of(&reports[0]["deleted"]), ["a.gz"]);
    assert_eq!(
        reports[1]["kept"],
        json!([
            {"name": "b.gz", "modified": "2026-11-22T16:00:00Z", "reasons": ["daily 2026-11-23"]},
            {"name": "a.gz", "modified": "2026-11-22T14:00:00Z", "reasons": ["daily 2026-11-22"]}
        ])
    );
    assert_eq!(reports[1]["deleted"], json!([]));
}
