//! Client-side encryption with age (issue #12 part 1): `.age` names are encrypted to the
//! recipients, decrypt with the `age` CLI, and the other way round; verify/restore/if_changed
//! decrypt with identity_file; missing recipients or identities are clear errors that print
//! no key material; on S3 no plaintext sha256 is stored.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::age::{age_key, AGE_MAGIC};
use common::calls::*;
use common::s3server::S3Server;
use common::*;
use serde_json::{json, Value};

/// A source database with the extension loaded, and its content digest.
fn source(dir: &Path) -> (rusqlite::Connection, String) {
    let path = dir.join("src.db");
    make_sample_db(&path, Journal::Wal, 300);
    let conn = open(&path);
    let digest = digest_conn(&conn, "main");
    (conn, digest)
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    out.stdout
}

#[test]
fn a_backup_decrypts_with_the_age_cli_and_verifies_and_restores() {
    let tmp = tempdir();
    let (conn, want) = source(tmp.path());
    let (key, public, secret) = age_key(tmp.path(), "key.txt");
    let dir = tmp.path().join("b");
    fs::create_dir(&dir).unwrap();

    for (name, decompress) in [("db.zst.age", "zstd"), ("db.gz.age", "gzip")] {
        let report = to_file(&conn, &dir.join(name), &json!({"recipients": [public]}));
        assert_eq!(report["encrypted"], json!(true), "{report}");
        let stored = fs::read(dir.join(name)).unwrap();
        assert!(stored.starts_with(AGE_MAGIC), "{name} is not an age file");
        assert_eq!(report["stored_bytes"], json!(stored.len()), "{report}");

        // age -d -i key.txt | zstd -d (or gzip -d): a database that passes integrity_check.
        let compressed = run(Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(&key)
            .arg(dir.join(name)));
        let plain_path = tmp.path().join(format!("{name}.compressed"));
        fs::write(&plain_path, compressed).unwrap();
        let db = run(Command::new(decompress).args(["-d", "-c"]).arg(&plain_path));
        let restored = tmp.path().join(format!("{name}.db"));
        fs::write(&restored, db).unwrap();
        assert_eq!(integrity(&restored), "ok");
        assert_eq!(digest(&restored), want);

        let location = dir.join(name).display().to_string();
        let verified = verify(&conn, &location, &json!({"identity_file": key}));
        assert_eq!(verified["ok"], json!(true), "{verified}");
        assert_eq!(verified["encrypted"], json!(true), "{verified}");
        assert_eq!(verified["sha256"], report["sha256"], "{verified}");
        let dest = tmp.path().join(format!("{name}.restored.db"));
        restore(
            &conn,
            &location,
            Some(&dest),
            &json!({"identity_file": key}),
        );
        assert_eq!(digest(&dest), want);
        assert_no_secret(&verified.to_string(), &[&secret]);
    }
    // Unencrypted backups report no `encrypted` key, as before.
    let plain = to_file(&conn, &dir.join("db.zst"), &json!({}));
    assert!(plain.get("encrypted").is_none(), "{plain}");
}

#[test]
fn a_file_encrypted_by_the_age_cli_verifies_and_restores() {
    let tmp = tempdir();
    let (conn, want) = source(tmp.path());
    let (key, public, _) = age_key(tmp.path(), "key.txt");
    // An ssh-ed25519 key works as recipient and identity too.
    let ssh = tmp.path().join("id_ed25519");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&ssh));
    let ssh_public = fs::read_to_string(ssh.with_extension("pub")).unwrap();
    let zst = tmp.path().join("db.zst");
    to_file(&conn, &zst, &json!({}));

    for (recipient, identity) in [(public.as_str(), key.clone()), (ssh_public.trim(), ssh)] {
        let sealed = tmp.path().join("cli.db.zst.age");
        let _ = fs::remove_file(&sealed);
        run(Command::new("age")
            .arg("-r")
            .arg(recipient)
            .arg("-o")
            .arg(&sealed)
            .arg(&zst));
        let location = sealed.display().to_string();
        let opts = json!({"identity_file": identity});
        let verified = verify(&conn, &location, &opts);
        assert_eq!(verified["ok"], json!(true), "{verified}");
        assert_eq!(verified["compression"], json!("zstd"), "{verified}");
        let dest = tmp.path().join("restored.db");
        let _ = fs::remove_file(&dest);
        restore(&conn, &location, Some(&dest), &opts);
        assert_eq!(digest(&dest), want);
    }
}

#[test]
fn recipients_come_from_a_file_or_the_environment() {
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let (key1, public1, _) = age_key(tmp.path(), "k1.txt");
    let (key2, public2, _) = age_key(tmp.path(), "k2.txt");
    let list = tmp.path().join("recipients.txt");
    fs::write(&list, format!("# team keys\n{public1}\n\n{public2}\n")).unwrap();
    let out = tmp.path().join("f.zst.age");
    to_file(&conn, &out, &json!({"recipients_file": list}));
    for key in [&key1, &key2] {
        let location = out.display().to_string();
        let v = verify(&conn, &location, &json!({"identity_file": key}));
        assert_eq!(v["ok"], json!(true), "{v}");
    }

    // SQLITE_BACKUP_AGE_RECIPIENTS and SQLITE_BACKUP_AGE_IDENTITY_FILE, through the CLI.
    let home = tmp.path().join("home");
    fs::create_dir(&home).unwrap();
    let env_out = tmp.path().join("e.gz.age");
    let script = format!(
        "SELECT json_extract(backup_to_file({}), '$.encrypted');\n\
         SELECT json_extract(verify_backup({}), '$.ok');\n",
        path_lit(&env_out),
        path_lit(&env_out)
    );
    let vars = [
        (
            "SQLITE_BACKUP_AGE_RECIPIENTS",
            format!("{public1}, {public2}"),
        ),
        (
            "SQLITE_BACKUP_AGE_IDENTITY_FILE",
            key2.display().to_string(),
        ),
    ];
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let db = tmp.path().join("src.db");
    let output = sqlite3_cli_clean_env(&db, &[], &script, &home, &vars);
    output.assert_ok();
    assert_eq!(output.stdout.trim(), "1\n1", "{}", output.stderr);
    assert!(fs::read(&env_out).unwrap().starts_with(AGE_MAGIC));
}

#[test]
fn age_without_a_recipient_is_refused_before_any_work() {
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let (_, public, secret) = age_key(tmp.path(), "key.txt");
    let dir = tmp.path().join("b");
    fs::create_dir(&dir).unwrap();

    let err = to_file_err(&conn, &dir.join("db.zst.age"), &json!({}));
    assert!(
        err.contains("no recipient") && err.contains("recipients"),
        "{err}"
    );
    // Recipients on a name without .age would store plaintext the caller meant to encrypt.
    let err = to_file_err(&conn, &dir.join("db.zst"), &json!({"recipients": [public]}));
    assert!(err.contains(".age"), "{err}");
    let err = to_file_err(
        &conn,
        &dir.join("db.zst.age"),
        &json!({"recipients": ["age1nope"]}),
    );
    assert!(err.contains("not an age recipient"), "{err}");
    // A secret key given by mistake is refused without being echoed.
    let err = to_file_err(
        &conn,
        &dir.join("db.zst.age"),
        &json!({"recipients": [secret]}),
    );
    assert!(err.contains("secret key"), "{err}");
    assert_no_secret(&err, &[&secret, &secret[15..]]);
    // if_changed cannot compare an encrypted series without an identity.
    let err = to_file_err(
        &conn,
        &dir.join("db.zst.age"),
        &json!({"recipients": [public], "if_changed": true}),
    );
    assert!(err.contains("identity_file"), "{err}");
    assert!(list(&dir).is_empty(), "{:?}", list(&dir));
    assert_no_temp_files(&dir);
}

#[test]
fn missing_or_wrong_identity_is_a_clear_error() {
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let (_, public, _) = age_key(tmp.path(), "key.txt");
    let (other, _, other_secret) = age_key(tmp.path(), "other.txt");
    let backup = tmp.path().join("db.zst.age");
    to_file(&conn, &backup, &json!({"recipients": [public]}));
    let location = backup.display().to_string();

    let err = verify_err(&conn, &location, &json!({}));
    assert!(
        err.contains("encrypted with age") && err.contains("identity_file"),
        "{err}"
    );
    let err = verify_err(&conn, &location, &json!({"identity_file": other}));
    assert!(err.contains("not encrypted to any key"), "{err}");
    assert_no_secret(&err, &[&other_secret, &other_secret[15..]]);
    let err = verify_err(
        &conn,
        &location,
        &json!({"identity_file": tmp.path().join("none")}),
    );
    assert!(
        err.contains("identity_file") && err.contains("cannot open"),
        "{err}"
    );
    let not_a_key = tmp.path().join("notakey.txt");
    fs::write(&not_a_key, "hello\n").unwrap();
    let err = verify_err(&conn, &location, &json!({"identity_file": not_a_key}));
    assert!(err.contains("no age identity"), "{err}");
    let dest = tmp.path().join("r.db");
    let err = restore_err(
        &conn,
        &location,
        Some(&dest),
        &json!({"identity_file": other}),
    );
    assert!(err.contains("not encrypted to any key"), "{err}");
    assert!(!dest.exists());
    // A flipped byte in the ciphertext fails age's authentication: an error, nothing restored.
    let mut bytes = fs::read(&backup).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 1;
    let tampered = tmp.path().join("t.zst.age");
    fs::write(&tampered, bytes).unwrap();
    let opts = json!({"identity_file": tmp.path().join("key.txt")});
    let err = restore_err(&conn, &tampered.display().to_string(), Some(&dest), &opts);
    assert!(err.contains("t.zst.age failed age decryption"), "{err}");
    assert!(err.contains("changed or truncated"), "{err}");
    assert!(!dest.exists());
    assert_no_temp_files_except(tmp.path(), &["src.db-shm", "src.db-wal"]);
}

#[test]
fn if_changed_decrypts_the_newest_backup() {
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let (key, public, _) = age_key(tmp.path(), "key.txt");
    let dir = tmp.path().join("b");
    fs::create_dir(&dir).unwrap();
    let pattern = dir.join("c-%H.zst.age");
    let opts = |now: &str| json!({"now": now, "if_changed": true, "recipients": [public], "identity_file": key});
    let first = to_file(&conn, &pattern, &opts("2026-11-23T10:00:00Z"));
    assert_eq!(first["skipped"], json!(false), "{first}");
    let second = to_file(&conn, &pattern, &opts("2026-11-23T11:00:00Z"));
    assert_eq!(second["skipped"], json!(true), "{second}");
    conn.execute(
        "DELETE FROM orders WHERE id = (SELECT min(id) FROM orders)",
        [],
    )
    .unwrap();
    let third = to_file(&conn, &pattern, &opts("2026-11-23T12:00:00Z"));
    assert_eq!(third["skipped"], json!(false), "{third}");
    assert_eq!(list(&dir), ["c-10.zst.age", "c-12.zst.age"]);
}

#[test]
fn encrypted_backups_on_s3_store_no_plaintext_sha256() {
    let tmp = tempdir();
    let (conn, want) = source(tmp.path());
    let (key, public, _) = age_key(tmp.path(), "key.txt");
    let server = S3Server::start();
    server.create_bucket("bkt");
    let s3 = server.options_json();
    let with = |extra: Value| merge(&s3, &extra);

    let report = to_s3(
        &conn,
        "s3://bkt/p",
        "db.zst.age",
        &with(json!({"recipients": [public]})),
    );
    assert_eq!(report["encrypted"], json!(true), "{report}");
    let plain = to_s3(&conn, "s3://bkt/p", "db.zst", &with(json!({})));
    let rows = list_rows(&conn, "s3://bkt/p", Some(&s3));
    let sha_of = |name: &str| rows.iter().find(|r| r.name == name).unwrap().sha256.clone();
    // The plain backup records its hash; the encrypted one records none anywhere on the server.
    assert_eq!(
        sha_of("db.zst"),
        plain["sha256"].as_str().map(str::to_string)
    );
    assert_eq!(sha_of("db.zst.age"), None, "{rows:?}");
    let hash = report["sha256"].as_str().unwrap();
    for entry in walk(server.root()) {
        let bytes = fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        if entry.to_string_lossy().contains("db.zst.age") {
            assert!(
                !text.contains(hash),
                "{} holds the plaintext sha256",
                entry.display()
            );
        }
    }

    let location = "s3://bkt/p/db.zst.age";
    let v = verify(&conn, location, &with(json!({"identity_file": key})));
    assert_eq!(v["ok"], json!(true), "{v}");
    let dest = tmp.path().join("r.db");
    restore(
        &conn,
        location,
        Some(&dest),
        &with(json!({"identity_file": key})),
    );
    assert_eq!(digest(&dest), want);
    // Into a connection (dest_path NULL) too.
    let target = open_memory();
    restore(
        &target,
        location,
        None,
        &with(json!({"identity_file": key})),
    );
    assert_eq!(digest_conn(&target, "main"), want);
}

/// Every file under `dir` (object data and the server's metadata sidecars).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn retention_deletes_old_encrypted_backups() {
    let tmp = tempdir();
    let (conn, _) = source(tmp.path());
    let (_, public, _) = age_key(tmp.path(), "key.txt");
    let dir = tmp.path().join("b");
    fs::create_dir(&dir).unwrap();
    let pattern = dir.join("r-%H.zst.age");
    for hour in ["10", "11", "12"] {
        let opts = json!({"now": format!("2026-11-23T{hour}:00:00Z"), "recipients": [public], "keep": {"keep_last": 2}});
        to_file(&conn, &pattern, &opts);
    }
    assert_eq!(list(&dir), ["r-11.zst.age", "r-12.zst.age"]);
    // A file named like the series that is not an age file is never deleted.
    fs::write(dir.join("r-09.zst.age"), b"not age").unwrap();
    let location = dir.display().to_string();
    prune(
        &conn,
        &location,
        &json!({"keep_last": 1, "match": "r-*.zst.age"}),
    );
    assert_eq!(list(&dir), ["r-09.zst.age", "r-12.zst.age"]);
}

#[test]
fn a_multipart_encrypted_upload_records_no_sha256_and_decrypts_with_the_cli() {
    let tmp = tempdir();
    // About 12 MB of random blobs: incompressible, so three 5 MiB parts.
    let (conn, want) = big_db(tmp.path());
    let (key, public, _) = age_key(tmp.path(), "key.txt");
    let server = S3Server::start();
    server.create_bucket("bkt");
    let s3 = server.options_json();
    let opts = merge(
        &s3,
        &json!({"recipients": [public], "part_size": 5 << 20, "level": 1}),
    );
    let report = to_s3(&conn, "s3://bkt", "big.zst.age", &opts);
    assert!(report["parts"].as_u64().unwrap() > 1, "{report}");
    let rows = list_rows(&conn, "s3://bkt", Some(&s3));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].sha256, None, "{rows:?}");
    let object = server.object_path("bkt", "big.zst.age");
    let compressed = run(Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(&key)
        .arg(&object));
    let plain = tmp.path().join("big.zst");
    fs::write(&plain, compressed).unwrap();
    let restored = tmp.path().join("restored.db");
    fs::write(
        &restored,
        run(Command::new("zstd").args(["-d", "-c"]).arg(&plain)),
    )
    .unwrap();
    assert_eq!(integrity(&restored), "ok");
    assert_eq!(digest(&restored), want);
}
