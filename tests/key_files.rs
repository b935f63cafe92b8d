//! Key files (issue #12, what was left of it): `backup_list` with `identity_file` shows the
//! plaintext sha256 of encrypted backups (a directory and S3 on s3s-fs; encrypted by the
//! extension and by the `age` CLI), a key that opens none of them is an error naming one, and
//! under SQLITE_BACKUP_ALLOW the key files named by options (`identity_file`,
//! `recipients_file`) must be inside it like every other path, symlinks and `..` resolved.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::age::age_key;
use common::calls::*;
use common::s3server::S3Server;
use common::*;
use rusqlite::Connection;
use serde_json::{json, Value};

const OUTSIDE: &str = "is outside SQLITE_BACKUP_ALLOW";

/// A small source database with the extension loaded.
fn source(dir: &Path) -> (Connection, PathBuf) {
    let path = dir.join("src.db");
    make_sample_db(&path, Journal::Wal, 100);
    (open(&path), path)
}

/// Changes the source, so that the next backup has another sha256.
fn touch(conn: &Connection) {
    conn.execute(
        "DELETE FROM orders WHERE id = (SELECT min(id) FROM orders)",
        [],
    )
    .unwrap();
}

/// `age -r recipient -o output input`.
fn age_encrypt(recipient: &str, input: &Path, output: &Path) {
    let out = Command::new("age")
        .arg("-r")
        .arg(recipient)
        .arg("-o")
        .arg(output)
        .arg(input)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// A copy of `from` at `to` with one ciphertext byte flipped: fails age's authentication.
fn tampered(from: &Path, to: &Path) {
    let mut bytes = fs::read(from).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 1;
    fs::write(to, bytes).unwrap();
}

fn sha(report: &Value) -> Option<String> {
    report["sha256"].as_str().map(str::to_string)
}

fn sha_of(rows: &[Row], name: &str) -> Option<String> {
    rows.iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("{name} not listed: {rows:?}"))
        .sha256
        .clone()
}

fn list_err(conn: &Connection, location: &str, opts: &Value) -> String {
    call_err(
        conn,
        &format!(
            "SELECT count(*) FROM backup_list({}, {})",
            lit(location),
            lit(opts.to_string())
        ),
    )
}

#[test]
fn list_with_an_identity_shows_the_plaintext_sha256_in_a_directory() {
    let tmp = tempdir();
    let (conn, db) = source(tmp.path());
    let (key, public, secret) = age_key(tmp.path(), "key.txt");
    let (_, old_public, _) = age_key(tmp.path(), "old.txt");
    let dir = tmp.path().join("b");
    fs::create_dir(&dir).unwrap();

    let ours = to_file(
        &conn,
        &dir.join("db-1.zst.age"),
        &json!({"recipients": [public]}),
    );
    touch(&conn);
    let plain = to_file(&conn, &dir.join("db-2.zst"), &json!({}));
    assert_ne!(sha(&ours), sha(&plain));
    // A plain backup encrypted by the age CLI: its plaintext is that database.
    age_encrypt(&public, &dir.join("db-2.zst"), &dir.join("db-3.zst.age"));
    // A backup made for an older key, and a damaged one: the key opens neither.
    to_file(
        &conn,
        &dir.join("db-4.zst.age"),
        &json!({"recipients": [old_public]}),
    );
    tampered(&dir.join("db-1.zst.age"), &dir.join("db-5.zst.age"));
    let location = dir.display().to_string();

    // Without an identity, as before: NULL for every encrypted file; the plain one shows the
    // sha256 of its trailer (#14).
    let rows = list_rows(&conn, &location, None);
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r.sha256.is_none() == r.name.ends_with(".age")),
        "{rows:?}"
    );
    assert_eq!(sha_of(&rows, "db-2.zst"), sha(&plain), "{rows:?}");

    let rows = list_rows(&conn, &location, Some(&json!({"identity_file": key})));
    assert_eq!(sha_of(&rows, "db-1.zst.age"), sha(&ours), "{rows:?}");
    assert_eq!(sha_of(&rows, "db-3.zst.age"), sha(&plain), "{rows:?}");
    assert_eq!(sha_of(&rows, "db-2.zst"), sha(&plain), "{rows:?}");
    for name in ["db-4.zst.age", "db-5.zst.age"] {
        assert_eq!(sha_of(&rows, name), None, "{name}: {rows:?}");
    }
    // The hash verify_backup reports for it.
    let url = dir.join("db-1.zst.age").display().to_string();
    let verified = verify(&conn, &url, &json!({"identity_file": key}));
    assert_eq!(sha(&verified), sha(&ours), "{verified}");
    assert_no_secret(&format!("{rows:?}"), &[&secret, &secret[15..]]);
    // With `match`, only the series is read.
    let rows = list_rows(
        &conn,
        &location,
        Some(&json!({"identity_file": key, "match": "db-1.*"})),
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].sha256, sha(&ours));

    // SQLITE_BACKUP_AGE_IDENTITY_FILE, through the sqlite3 CLI.
    let home = tmp.path().join("home");
    fs::create_dir(&home).unwrap();
    let script = format!(
        "SELECT name || ' ' || ifnull(sha256, 'NULL') FROM backup_list({}) ORDER BY name;",
        lit(&location)
    );
    let key_text = key.display().to_string();
    let out = sqlite3_cli_clean_env(
        &db,
        &["-bail"],
        &script,
        &home,
        &[("SQLITE_BACKUP_AGE_IDENTITY_FILE", &key_text)],
    );
    out.assert_ok();
    let want = format!(
        "db-1.zst.age {}\ndb-2.zst {}\ndb-3.zst.age {}\ndb-4.zst.age NULL\ndb-5.zst.age NULL",
        sha(&ours).unwrap(),
        sha(&plain).unwrap(),
        sha(&plain).unwrap()
    );
    assert_eq!(out.stdout.trim(), want);
}

#[test]
fn list_with_an_identity_shows_the_plaintext_sha256_on_s3() {
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let (key, public, _) = age_key(tmp.path(), "key.txt");
    let server = S3Server::start();
    server.create_bucket("bkt");
    let s3 = server.options_json();
    let with = |extra: Value| merge(&s3, &extra);

    let ours = to_s3(
        &conn,
        "s3://bkt/p",
        "db-1.zst.age",
        &with(json!({"recipients": [public]})),
    );
    touch(&conn);
    let plain = to_s3(&conn, "s3://bkt/p", "db-2.zst", &with(json!({})));
    // A file the age CLI encrypted, put there by another tool (no metadata of ours).
    touch(&conn);
    let local = tmp.path().join("x.zst");
    let other = to_file(&conn, &local, &json!({}));
    age_encrypt(
        &public,
        &local,
        &server.object_path("bkt", "p/db-3.zst.age"),
    );
    // Another tool's object whose name ends in .age but is no age file: never hashed.
    fs::write(server.object_path("bkt", "p/notes.age"), b"not an age file").unwrap();

    let rows = list_rows(&conn, "s3://bkt/p", Some(&s3));
    assert_eq!(sha_of(&rows, "db-1.zst.age"), None, "{rows:?}");
    assert_eq!(sha_of(&rows, "db-3.zst.age"), None, "{rows:?}");
    assert_eq!(sha_of(&rows, "db-2.zst"), sha(&plain), "{rows:?}");

    let rows = list_rows(
        &conn,
        "s3://bkt/p",
        Some(&with(json!({"identity_file": key}))),
    );
    assert_eq!(sha_of(&rows, "db-1.zst.age"), sha(&ours), "{rows:?}");
    assert_eq!(sha_of(&rows, "db-2.zst"), sha(&plain), "{rows:?}");
    assert_eq!(sha_of(&rows, "db-3.zst.age"), sha(&other), "{rows:?}");
    assert_eq!(sha_of(&rows, "notes.age"), None, "{rows:?}");
    assert_eq!(rows.len(), 4, "{rows:?}");
}

#[test]
fn a_key_that_opens_none_of_the_listed_backups_is_an_error() {
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let (key, public, _) = age_key(tmp.path(), "key.txt");
    let (other, _, other_secret) = age_key(tmp.path(), "other.txt");
    let dir = tmp.path().join("b");
    fs::create_dir(&dir).unwrap();
    to_file(&conn, &dir.join("db.zst"), &json!({}));
    let location = dir.display().to_string();

    // Nothing encrypted to open: the identity is not even read.
    let missing = tmp.path().join("missing.txt");
    let rows = list_rows(&conn, &location, Some(&json!({"identity_file": missing})));
    assert_eq!(rows.len(), 1, "{rows:?}");

    to_file(
        &conn,
        &dir.join("db.zst.age"),
        &json!({"recipients": [public]}),
    );
    let err = list_err(&conn, &location, &json!({"identity_file": other}));
    assert!(err.starts_with("backup_list: "), "{err}");
    assert!(
        err.contains("opens none of the encrypted backups listed")
            && err.contains("db.zst.age was not encrypted to any key"),
        "{err}"
    );
    assert_no_secret(&err, &[&other_secret, &other_secret[15..]]);
    // An unusable key file is said once, before any backup is read.
    let err = list_err(&conn, &location, &json!({"identity_file": missing}));
    assert!(
        err.contains("identity_file") && err.contains("cannot open"),
        "{err}"
    );
    let not_a_key = tmp.path().join("notakey.txt");
    fs::write(&not_a_key, "hello\n").unwrap();
    let err = list_err(&conn, &location, &json!({"identity_file": not_a_key}));
    assert!(err.contains("no age identity"), "{err}");
    // The right key: the listing works; the plain backup shows its trailer's sha256 (#14).
    let rows = list_rows(&conn, &location, Some(&json!({"identity_file": key})));
    assert!(sha_of(&rows, "db.zst.age").is_some(), "{rows:?}");
    assert_eq!(
        sha_of(&rows, "db.zst"),
        sha_of(&rows, "db.zst.age"),
        "{rows:?}"
    );
}

/// A host's layout: `allowed/` (the policy), `allowed/keys/` with a key and a recipients file,
/// `outside/` with another pair, and links in `allowed/keys/` pointing at the outside ones.
struct Host {
    _tmp: tempfile::TempDir,
    allowed: PathBuf,
    outside: PathBuf,
    db: PathBuf,
    home: PathBuf,
    public: String,
}

fn host() -> Host {
    let tmp = tempdir();
    let root = tmp.path().canonicalize().unwrap();
    let allowed = root.join("allowed");
    let keys = allowed.join("keys");
    let outside = root.join("outside");
    let home = root.join("home");
    for dir in [&keys, &outside, &home] {
        fs::create_dir_all(dir).unwrap();
    }
    let (_, public, _) = age_key(&outside, "key.txt");
    fs::copy(outside.join("key.txt"), keys.join("key.txt")).unwrap();
    for dir in [&keys, &outside] {
        fs::write(dir.join("recipients.txt"), format!("{public}\n")).unwrap();
    }
    std::os::unix::fs::symlink(outside.join("key.txt"), keys.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(outside.join("recipients.txt"), keys.join("rlink.txt")).unwrap();
    let db = root.join("app.db");
    make_sample_db(&db, Journal::Rollback, 20);
    to_file(
        &open(&db),
        &allowed.join("enc.zst.age"),
        &json!({"recipients": [public]}),
    );
    Host {
        _tmp: tmp,
        allowed,
        outside,
        db,
        home,
        public,
    }
}

impl Host {
    fn run(&self, sql: &str, vars: &[(&str, &str)]) -> Output {
        let allow = self.allowed.display().to_string();
        let mut all = vec![("SQLITE_BACKUP_ALLOW", allow.as_str())];
        all.extend_from_slice(vars);
        sqlite3_cli_clean_env(&self.db, &["-bail"], sql, &self.home, &all)
    }

    fn enc(&self) -> String {
        self.allowed.join("enc.zst.age").display().to_string()
    }
}

#[test]
fn key_files_outside_the_allow_list_are_refused_before_any_work() {
    let h = host();
    let (a, o) = (&h.allowed, &h.outside);
    let keys = a.join("keys");
    let enc = h.enc();
    let id = |path: PathBuf| json!({ "identity_file": path });
    let new = a.join("new.zst.age");
    let restored = a.join("r.db");
    let mut cases = vec![
        // recipients_file: outside, and through a link inside that points outside.
        (
            to_file_sql(&new, &json!({"recipients_file": o.join("recipients.txt")})),
            "option 'recipients_file'",
        ),
        (
            to_file_sql(&new, &json!({"recipients_file": keys.join("rlink.txt")})),
            "option 'recipients_file'",
        ),
        // identity_file of if_changed.
        (
            to_file_sql(
                &new,
                &json!({"recipients": [h.public], "if_changed": true, "identity_file": o.join("key.txt")}),
            ),
            "option 'identity_file'",
        ),
        (
            restore_sql(&enc, Some(&restored), &id(o.join("key.txt"))),
            "option 'identity_file'",
        ),
        (
            format!(
                "SELECT count(*) FROM backup_list({}, {})",
                path_lit(a),
                lit(id(o.join("key.txt")).to_string())
            ),
            "option 'identity_file'",
        ),
    ];
    for key in [
        o.join("key.txt"),
        keys.join("link.txt"),
        keys.join("../../outside/key.txt"),
        // A file that does not exist says the same: no probing for files outside.
        o.join("nothing.txt"),
    ] {
        cases.push((verify_sql(&enc, &id(key)), "option 'identity_file'"));
    }
    let before = list(a);
    for (sql, what) in &cases {
        let out = h.run(sql, &[]);
        assert!(!out.ok(), "{sql}: not refused: {}", out.stdout);
        assert!(
            out.stderr.contains(what) && out.stderr.contains(OUTSIDE),
            "{sql}: {}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("AGE-SECRET-KEY") && !out.stderr.contains("cannot open"),
            "{sql}: {}",
            out.stderr
        );
        assert_eq!(list(a), before, "{sql}: files changed");
    }
    assert_no_temp_files(a);
}

#[test]
fn key_files_inside_the_allow_list_work() {
    let h = host();
    let a = &h.allowed;
    let keys = a.join("keys");
    let enc = h.enc();
    let id = json!({"identity_file": keys.join("key.txt")});
    let sql = [
        to_file_sql(
            &a.join("new.zst.age"),
            &json!({"recipients_file": keys.join("recipients.txt")}),
        ),
        verify_sql(&enc, &id),
        restore_sql(&enc, Some(&a.join("r.db")), &id),
        format!(
            "SELECT json_object('n', count(sha256)) FROM backup_list({}, {})",
            path_lit(a),
            lit(id.to_string())
        ),
    ]
    .join(";\n")
        + ";";
    let lines = h.run(&sql, &[]).json_lines();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["encrypted"], json!(true));
    assert_eq!(lines[1]["ok"], json!(true));
    assert_eq!(lines[3]["n"], json!(2), "{lines:?}");
    assert_eq!(digest(&a.join("r.db")), digest(&h.db));

    // SQLITE_BACKUP_AGE_IDENTITY_FILE is the host's own setting, like $TMPDIR: not checked.
    let key = h.outside.join("key.txt").display().to_string();
    let lines = h
        .run(
            &format!("{};", verify_sql(&enc, &json!({}))),
            &[("SQLITE_BACKUP_AGE_IDENTITY_FILE", &key)],
        )
        .json_lines();
    assert_eq!(lines[0]["ok"], json!(true), "{lines:?}");
}

#[test]
fn encryption_errors_read_as_one_sentence() {
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let (key, public, _) = age_key(tmp.path(), "key.txt");
    let dir = tmp.path().join("b");
    fs::create_dir(&dir).unwrap();
    let backup = dir.join("db.zst.age");
    to_file(&conn, &backup, &json!({"recipients": [public]}));
    tampered(&backup, &dir.join("t.zst.age"));
    let errors = [
        to_file_err(
            &conn,
            &dir.join("x-%H.zst.age"),
            &json!({"recipients": [public], "if_changed": true}),
        ),
        to_file_err(&conn, &dir.join("x.zst"), &json!({"recipients": [public]})),
        verify_err(
            &conn,
            &dir.join("t.zst.age").display().to_string(),
            &json!({"identity_file": key}),
        ),
    ];
    for err in errors {
        // A line break inside a string literal once put runs of spaces in these.
        assert!(!err.contains("  "), "{err:?}");
    }
}

/// Reading every encrypted backup can take long: the listing stops when the application's
/// progress handler (its time limit, in Debian's python3) says so, like every other long call.
#[test]
fn a_listing_that_decrypts_can_be_interrupted() {
    const SCRIPT: &str = r#"
import json, os, sqlite3, sys
location, key = sys.argv[1], sys.argv[2]
c = sqlite3.connect(":memory:")
c.enable_load_extension(True)
c.load_extension(os.environ["EXT"])
# Past its time limit: the handler stops whatever runs its 1000th instruction.
c.set_progress_handler(lambda: 1, 1000)
for opts in [{}, {"identity_file": key}]:
    try:
        n = c.execute("SELECT count(*) FROM backup_list(?, ?)", (location, json.dumps(opts))).fetchone()[0]
        print("listed", n)
    except sqlite3.OperationalError as e:
        print("error:", e)
"#;
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let (key, public, _) = age_key(tmp.path(), "key.txt");
    let dir = tmp.path().join("b");
    fs::create_dir(&dir).unwrap();
    to_file(
        &conn,
        &dir.join("db.zst.age"),
        &json!({"recipients": [public]}),
    );
    let out = python(SCRIPT, &[dir.to_str().unwrap(), key.to_str().unwrap()]);
    out.assert_ok();
    let lines: Vec<&str> = out.stdout.lines().collect();
    // Without a backup to decrypt the listing is short and finishes; decrypting is stopped.
    assert_eq!(lines.first(), Some(&"listed 1"), "{}", out.stdout);
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.starts_with("error: backup_list: interrupted")),
        "{}",
        out.stdout
    );
}
