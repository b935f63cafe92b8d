//! Bad calls: a clear error naming the function and what to fix, no panic, the connection
//! still works, nothing left in the destination or temp_dir, the source and any previous
//! backup of that name unchanged.

mod common;

use std::fs;
use std::path::PathBuf;

use common::*;
use rusqlite::Connection;

struct Fixture {
    dir: tempfile::TempDir,
    src: PathBuf,
    backups: PathBuf,
    tmp: PathBuf,
    conn: Connection,
    /// A good backup made before the bad calls: backups/app.db.gz.
    previous: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempdir();
        let backups = dir.path().join("backups");
        let tmp = dir.path().join("tmp");
        fs::create_dir(&backups).unwrap();
        fs::create_dir(&tmp).unwrap();
        let src = dir.path().join("app.db");
        make_sample_db(&src, Journal::Rollback, 300);
        let conn = open(&src);
        let previous = backups.join("app.db.gz");
        call_json(
            &conn,
            &format!("SELECT backup_to_file({})", path_lit(&previous)),
        );
        Fixture {
            dir,
            src,
            backups,
            tmp,
            conn,
            previous,
        }
    }

    fn tmp_opt(&self) -> String {
        format!("json_object('temp_dir', {})", path_lit(&self.tmp))
    }

    /// Runs `sql`, which must fail with a message starting `function: ` and containing every
    /// one of `wants`; then checks that nothing changed.
    #[track_caller]
    fn refused(&self, function: &str, sql: &str, wants: &[&str]) -> String {
        let src_before = fs::read(&self.src).unwrap();
        let digest_before = digest_conn(&self.conn, "main");
        let previous_before = fs::read(&self.previous).unwrap();
        let listing_before = list(&self.backups);

        let err = call_err(&self.conn, sql);
        assert!(
            err.starts_with(&format!("{function}: ")),
            "{sql}\n  error does not name {function}: {err}"
        );
        for want in wants {
            assert!(err.contains(want), "{sql}\n  error lacks {want:?}: {err}");
        }
        assert!(!err.contains("internal error"), "{sql}: a panic: {err}");

        assert_alive(&self.conn);
        assert_eq!(
            fs::read(&self.src).unwrap(),
            src_before,
            "{sql}: source changed"
        );
        assert_eq!(digest_conn(&self.conn, "main"), digest_before);
        assert_eq!(
            fs::read(&self.previous).unwrap(),
            previous_before,
            "{sql}: previous backup changed"
        );
        assert_eq!(
            list(&self.backups),
            listing_before,
            "{sql}: wrote something"
        );
        assert_no_temp_files(&self.backups);
        assert_eq!(
            list(&self.tmp),
            Vec::<String>::new(),
            "{sql}: temp_dir not empty"
        );
        assert_no_temp_files_except(self.dir.path(), &[]);
        err
    }

    fn backup_err(&self, args: &str, wants: &[&str]) -> String {
        self.refused(
            "backup_to_file",
            &format!("SELECT backup_to_file({args})"),
            wants,
        )
    }

    fn pattern(&self, name: &str) -> String {
        path_lit(self.backups.join(name))
    }
}

#[test]
fn wrong_argument_counts() {
    let f = Fixture::new();
    f.backup_err(
        "",
        &["takes 1 to 2 arguments", "(pattern [, options])", "got 0"],
    );
    f.backup_err(
        &format!("{}, '{{}}', 3", f.pattern("a.db.gz")),
        &["takes 1 to 2 arguments", "got 3"],
    );
    f.refused(
        "verify_backup",
        "SELECT verify_backup()",
        &["takes 1 to 2 arguments", "got 0"],
    );
    f.refused(
        "restore_backup",
        "SELECT restore_backup('a', 'b', '{}', 4)",
        &["takes 1 to 3 arguments", "got 4"],
    );
    f.refused(
        "backup_version",
        "SELECT backup_version(1)",
        &["takes 0 arguments", "got 1"],
    );
}

#[test]
fn wrong_argument_types() {
    let f = Fixture::new();
    f.backup_err("42", &["pattern must be text, got an integer"]);
    f.backup_err("4.5", &["pattern must be text, got a real"]);
    f.backup_err("x'2f746d70'", &["pattern must be text, got a blob"]);
    f.backup_err("NULL", &["pattern must be text, got NULL"]);
    f.backup_err(
        &format!("{}, 7", f.pattern("a.db.gz")),
        &["options must be text, got an integer"],
    );
    f.refused(
        "verify_backup",
        "SELECT verify_backup(NULL)",
        &["location must be text, got NULL"],
    );
    f.refused(
        "restore_backup",
        "SELECT restore_backup(x'00', 'x.db')",
        &["location must be text, got a blob"],
    );
}

#[test]
fn bad_patterns() {
    let f = Fixture::new();
    let err = f.backup_err(
        &f.pattern("app-%Y-%Q.db.gz"),
        &["invalid strftime specifier '%Q'", "app-%Y-%Q.db.gz", "%%"],
    );
    assert!(!err.contains("'%Y'"), "{err}");
    let missing = f.dir.path().join("nope");
    f.backup_err(
        &path_lit(missing.join("a-%H.db.gz")),
        &[&format!(
            "directory {} does not exist: create it first",
            missing.display()
        )],
    );
    assert!(!missing.exists());
    f.backup_err(
        &path_lit(format!("{}/", f.backups.display())),
        &["names no file"],
    );
    f.backup_err("''", &["empty"]);
    // The source itself, under another spelling of its path.
    f.backup_err(
        &path_lit(f.dir.path().join("backups/../app.db")),
        &[
            "is the database being backed up",
            "choose another destination",
        ],
    );
}

/// A destination directory we cannot write. Tests usually run as root here, where chmod 0555
/// does not stop writes: then a regular file stands where the directory should be, and /proc
/// (which refuses new files even to root) is the unwritable directory.
#[test]
fn unwritable_destination() {
    let f = Fixture::new();
    let file = f.dir.path().join("plainfile");
    fs::write(&file, b"x").unwrap();
    f.backup_err(
        &path_lit(file.join("a.db.gz")),
        &[&format!("{} is not a directory", file.display())],
    );
    assert_eq!(fs::read(&file).unwrap(), b"x");
    if is_root() {
        f.backup_err(
            "'/proc/sqlite-backup-test.db.gz'",
            &["/proc", "cannot create a file"],
        );
    } else {
        use std::os::unix::fs::PermissionsExt;
        let ro = f.dir.path().join("readonly");
        fs::create_dir(&ro).unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
        f.backup_err(
            &path_lit(ro.join("a.db.gz")),
            &["permission denied", ro.to_str().unwrap()],
        );
        assert_eq!(list(&ro), Vec::<String>::new());
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
    }
    // An unwritable temp_dir: the snapshot cannot start; nothing written anywhere.
    f.backup_err(
        &format!(
            "{}, json_object('temp_dir', {})",
            f.pattern("app.db.gz"),
            path_lit(&file)
        ),
        &["cannot create a file in", file.to_str().unwrap()],
    );
}

#[test]
fn bad_options() {
    let f = Fixture::new();
    let p = f.pattern("app.db.gz");
    f.backup_err(
        &format!("{p}, '{{\"levle\": 9}}'"),
        &["option 'levle'", "unknown field", "level"],
    );
    f.backup_err(
        &format!("{p}, '{{\"level\": \"high\"}}'"),
        &["option 'level': invalid type"],
    );
    f.backup_err(
        &format!("{p}, '{{\"method\": \"copy\"}}'"),
        &["option 'method'", "copy"],
    );
    f.backup_err(&format!("{p}, '{{level'"), &["options are not valid JSON"]);
    f.backup_err(&format!("{p}, '[1]'"), &["options must be a JSON object"]);
    f.backup_err(&format!("{p}, '9'"), &["options must be a JSON object"]);
    f.backup_err(
        &format!("{p}, '{{\"level\": 10}}'"),
        &["level 10 is out of range for gzip: use 1 to 9"],
    );
    f.backup_err(
        &format!("{p}, '{{\"level\": 0}}'"),
        &["level 0 is out of range for gzip"],
    );
    f.backup_err(
        &format!("{}, '{{\"level\": 20}}'", f.pattern("app.db.zst")),
        &["level 20 is out of range for zstd: use 1 to 19"],
    );
    f.backup_err(
        &format!("{}, '{{\"level\": 3}}'", f.pattern("app.db")),
        &["level applies only to .gz and .zst"],
    );
    f.backup_err(
        &format!("{p}, '{{\"threads\": 0}}'"),
        &["option 'threads' must be at least 1"],
    );
    f.backup_err(
        &format!("{p}, '{{\"now\": \"yesterday\"}}'"),
        &["option 'now'", "RFC 3339"],
    );
    f.refused(
        "verify_backup",
        &format!(
            "SELECT verify_backup({}, '{{\"quik\": true}}')",
            path_lit(&f.previous)
        ),
        &["option 'quik'"],
    );
    f.refused(
        "restore_backup",
        &format!(
            "SELECT restore_backup({}, {}, '{{\"overwrite\": \"yes\"}}')",
            path_lit(&f.previous),
            path_lit(f.dir.path().join("r.db"))
        ),
        &["option 'overwrite': invalid type"],
    );
    assert!(!f.dir.path().join("r.db").exists());
}

#[test]
fn verify_rejects_bad_backups() {
    let f = Fixture::new();
    let bad = f.dir.path().join("bad");
    fs::create_dir(&bad).unwrap();
    let verify = |path: &PathBuf, wants: &[&str]| {
        f.refused(
            "verify_backup",
            &format!("SELECT verify_backup({}, {})", path_lit(path), f.tmp_opt()),
            wants,
        );
        assert_no_temp_files(&bad);
    };

    let text = bad.join("notes.txt");
    fs::write(&text, "hello, not a database\n".repeat(20)).unwrap();
    verify(&text, &[text.to_str().unwrap(), "is not a SQLite database"]);

    let gz_text = bad.join("notes.gz");
    fs::write(&gz_text, decompress_or_compress(&text)).unwrap();
    verify(
        &gz_text,
        &["is not a SQLite database (after gzip decompression)"],
    );

    let truncated = bad.join("truncated.db.gz");
    let good = fs::read(&f.previous).unwrap();
    fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    verify(
        &truncated,
        &[
            truncated.to_str().unwrap(),
            "not a readable gzip archive (truncated or corrupt)",
        ],
    );

    let missing = bad.join("missing.db.gz");
    verify(
        &missing,
        &["there is no backup at", missing.to_str().unwrap()],
    );

    let empty = bad.join("empty.db");
    fs::write(&empty, b"").unwrap();
    verify(&empty, &["is not a SQLite database"]);

    // A valid gzip of a damaged database: integrity_check fails and the message lists what it
    // found.
    // Change 'paid' to 'pAid' in the rows of one leaf page of orders (the pages holding the
    // unindexed notes); the index orders_by_status still says 'paid'.
    let raw = decompress_to(&f.previous, &bad, "raw.db");
    let page_size: usize = Connection::open(&raw)
        .unwrap()
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let mut bytes = fs::read(&raw).unwrap();
    let has = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let page = (1..bytes.len() / page_size)
        .map(|i| i * page_size)
        .find(|&at| {
            let p = &bytes[at..at + page_size];
            p[0] == 13 && has(p, b"note ") && has(p, b"paid") // 13: table leaf page
        })
        .expect("a leaf page of orders");
    let mut changed = 0;
    for i in page..page + page_size - 4 {
        if &bytes[i..i + 4] == b"paid" {
            bytes[i + 1] = b'A';
            changed += 1;
        }
    }
    assert!(changed > 0);
    fs::write(&raw, &bytes).unwrap();
    assert_ne!(integrity(&raw), "ok", "the damage must be visible");
    let corrupt = bad.join("corrupt.db.gz");
    fs::write(&corrupt, gzip_bytes(&bytes)).unwrap();
    fs::remove_file(&raw).unwrap();
    let err = f.refused(
        "verify_backup",
        &format!(
            "SELECT verify_backup({}, {})",
            path_lit(&corrupt),
            f.tmp_opt()
        ),
        &[corrupt.to_str().unwrap(), "failed integrity_check: "],
    );
    let found = err.split("failed integrity_check: ").nth(1).unwrap();
    assert!(
        found.contains("missing from index orders_by_status"),
        "{err}"
    );
    assert_no_temp_files(&bad);

    // restore refuses the same backups and creates nothing.
    let dest = f.dir.path().join("restored.db");
    for backup in [&truncated, &corrupt, &text] {
        f.refused(
            "restore_backup",
            &format!(
                "SELECT restore_backup({}, {})",
                path_lit(backup),
                path_lit(&dest)
            ),
            &[backup.to_str().unwrap()],
        );
        assert!(!dest.exists());
    }
}

fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn decompress_or_compress(path: &PathBuf) -> Vec<u8> {
    gzip_bytes(&fs::read(path).unwrap())
}

#[test]
fn restore_respects_existing_files() {
    let f = Fixture::new();
    let expected = digest(&f.src);
    let dest = f.dir.path().join("existing.db");
    fs::write(&dest, b"precious").unwrap();
    let restore = |opts: &str| {
        format!(
            "SELECT restore_backup({}, {}{opts})",
            path_lit(&f.previous),
            path_lit(&dest)
        )
    };
    f.refused(
        "restore_backup",
        &restore(""),
        &[&format!(
            "{} already exists: pass '{{\"overwrite\": true}}' to replace it",
            dest.display()
        )],
    );
    f.refused(
        "restore_backup",
        &restore(", '{\"overwrite\": false}'"),
        &["already exists"],
    );
    assert_eq!(fs::read(&dest).unwrap(), b"precious");

    // A -wal or -journal beside it belongs to a program that may have it open.
    for side in ["-wal", "-journal"] {
        let side_path = PathBuf::from(format!("{}{side}", dest.display()));
        fs::write(&side_path, b"journal").unwrap();
        let err = call_err(&f.conn, &restore(", '{\"overwrite\": true}'"));
        assert!(err.starts_with("restore_backup: "), "{err}");
        assert!(err.contains(side_path.to_str().unwrap()), "{err}");
        assert_eq!(fs::read(&dest).unwrap(), b"precious");
        assert_eq!(fs::read(&side_path).unwrap(), b"journal");
        fs::remove_file(&side_path).unwrap();
    }
    // A directory is not a database file.
    f.refused(
        "restore_backup",
        &format!(
            "SELECT restore_backup({}, {})",
            path_lit(&f.previous),
            path_lit(&f.tmp)
        ),
        &["is a directory"],
    );

    let r = call_json(&f.conn, &restore(", '{\"overwrite\": true}'"));
    assert_eq!(r["ok"], true);
    assert_eq!(digest(&dest), expected);
    assert_no_temp_files(f.dir.path());
}

/// backup_to_file is DIRECTONLY: a trigger or view in a database someone else wrote cannot
/// make the connection write files.
#[test]
fn directonly_blocks_triggers_and_views() {
    let f = Fixture::new();
    let target = f.backups.join("evil.db");
    f.conn
        .execute_batch(&format!(
            "CREATE TABLE t (x);
             CREATE TRIGGER t_backup AFTER INSERT ON t BEGIN
               SELECT backup_to_file({target});
             END;
             CREATE VIEW v AS SELECT backup_to_file({target}) AS r;
             CREATE VIEW w AS SELECT verify_backup({previous}) AS r;
             CREATE VIEW p AS SELECT backup_prune({dir}, '{{\"keep_last\": 1}}') AS r;
             CREATE VIEW l AS SELECT name FROM backup_list({dir});",
            target = path_lit(&target),
            previous = path_lit(&f.previous),
            dir = path_lit(&f.backups),
        ))
        .unwrap();
    let files_before = std::fs::read_dir(&f.backups).unwrap().count();
    for (sql, function) in [
        ("INSERT INTO t VALUES (1)", "backup_to_file()"),
        ("SELECT r FROM v", "backup_to_file()"),
        ("SELECT r FROM w", "verify_backup()"),
        ("SELECT r FROM p", "backup_prune()"),
        // A table-valued function is marked with SQLITE_VTAB_DIRECTONLY instead.
        ("SELECT name FROM l", "virtual table \"backup_list\""),
    ] {
        let err = match f.conn.execute_batch(sql) {
            Ok(()) => panic!("{sql}: allowed"),
            Err(rusqlite::Error::SqliteFailure(_, Some(m))) => m,
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(&format!("unsafe use of {function}")),
            "{sql}: {err}"
        );
        assert!(!target.exists());
    }
    // backup_prune in the view deleted nothing.
    assert_eq!(std::fs::read_dir(&f.backups).unwrap().count(), files_before);
    let n: i64 = f
        .conn
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
    assert_no_temp_files(&f.backups);
    assert_alive(&f.conn);
}

// ------------------------------------------- fail before the work, name the real cause (#10)

/// Options for a backup whose snapshot would have to wait: `busy_ms` on a locked source.
fn with_busy(busy_ms: u64, extra: &str) -> String {
    format!("'{{\"busy_timeout_ms\": {busy_ms}{extra}}}'")
}

/// What can be refused is refused before the snapshot: with the source locked by another
/// connection a snapshot would wait `busy_timeout_ms`, so a quick, specific answer proves the
/// call never started one; and nothing is stored.
#[test]
fn refused_before_the_snapshot() {
    let f = Fixture::new();
    fs::create_dir(f.backups.join("adir.db.gz")).unwrap();
    let long = format!("{}.db.gz", "x".repeat(300));
    let cases = [
        (
            f.pattern("adir.db.gz"),
            String::new(),
            "adir.db.gz is a directory",
        ),
        (
            f.pattern(&long),
            String::new(),
            "is too long for the file system",
        ),
        (
            f.pattern("db-%d.gz"),
            r#", "match": "db-[.gz", "keep": {"keep_last": 1}"#.to_string(),
            "match: invalid glob 'db-[.gz'",
        ),
        (
            f.pattern("db-%d.gz"),
            r#", "match": "db-[.gz", "if_changed": true"#.to_string(),
            "match: invalid glob 'db-[.gz'",
        ),
    ];
    let locker = Connection::open(&f.src).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    for (pattern, extra, want) in &cases {
        let sql = format!(
            "SELECT backup_to_file({pattern}, {})",
            with_busy(4000, extra)
        );
        let started = std::time::Instant::now();
        let err = call_err(&f.conn, &sql);
        assert!(err.contains(want), "{sql}: {err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{sql}: waited for the locked source before refusing ({:?})",
            started.elapsed()
        );
    }
    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    // Unlocked, the same calls still fail and leave nothing (no backup stored, no temp file).
    for (pattern, extra, want) in &cases {
        f.backup_err(&format!("{pattern}, {}", with_busy(4000, extra)), &[want]);
    }
}

#[test]
fn restore_to_a_file_refuses_options_it_cannot_honour() {
    let f = Fixture::new();
    let dest = f.dir.path().join("restored.db");
    for opts in [
        format!("json_object('temp_dir', {})", path_lit(&f.tmp)),
        "'{\"busy_timeout_ms\": 100}'".to_string(),
    ] {
        let key = if opts.contains("temp_dir") {
            "temp_dir"
        } else {
            "busy_timeout_ms"
        };
        f.refused(
            "restore_backup",
            &format!(
                "SELECT restore_backup({}, {}, {opts})",
                path_lit(&f.previous),
                path_lit(&dest)
            ),
            &[&format!(
                "option '{key}' applies when restoring into this connection (dest_path NULL)"
            )],
        );
        assert!(!dest.exists());
    }
}

#[test]
fn messages_name_the_real_cause() {
    let f = Fixture::new();

    // Uncommitted writes of this very connection lock the source: say so at once, do not wait
    // and blame "another connection".
    for (begin, method) in [("BEGIN EXCLUSIVE", ""), ("BEGIN", r#", "method": "pages""#)] {
        f.conn
            .execute_batch(&format!(
                "{begin}; CREATE TABLE pending (x); INSERT INTO pending VALUES (1)"
            ))
            .unwrap();
        let started = std::time::Instant::now();
        let err = call_err(
            &f.conn,
            &format!(
                "SELECT backup_to_file({}, {})",
                f.pattern("pending.db.gz"),
                with_busy(3000, method)
            ),
        );
        assert!(
            err.contains("this connection has uncommitted writes to 'main'")
                && err.contains("COMMIT or ROLLBACK first"),
            "{begin}: {err}"
        );
        assert!(!err.contains("another connection"), "{err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{begin}: waited"
        );
        f.conn.execute_batch("ROLLBACK").unwrap();
        assert!(!f.backups.join("pending.db.gz").exists());
    }

    // The temp schema before any temporary table exists.
    f.backup_err(
        &format!("{}, '{{\"schema\": \"temp\"}}'", f.pattern("t.db.gz")),
        &["the temp database is empty: no temporary table has been created yet"],
    );

    // Locations that are not backup files: never "there is no backup at".
    let fifo = f.dir.path().join("fifo.db.gz");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let dest = f.dir.path().join("r.db");
    for (location, kind) in [
        (fifo.clone(), "a FIFO (named pipe)"),
        (f.backups.clone(), "a directory"),
        (PathBuf::from("/dev/zero"), "a character device"),
    ] {
        let want = format!("{} is {kind}, not a backup file", location.display());
        f.refused(
            "verify_backup",
            &format!("SELECT verify_backup({})", path_lit(&location)),
            &[&want],
        );
        f.refused(
            "restore_backup",
            &format!(
                "SELECT restore_backup({}, {})",
                path_lit(&location),
                path_lit(&dest)
            ),
            &[&want],
        );
        assert!(!dest.exists());
    }
}

/// The backup API cannot change a WAL database's page size; SQLite's own words for that are
/// "attempt to write a readonly database".
#[test]
fn restore_into_a_wal_database_with_another_page_size() {
    let dir = tempdir();
    let src = dir.path().join("big-pages.db");
    let src_conn = open(&src);
    src_conn
        .execute_batch(
            "PRAGMA page_size = 8192; VACUUM; CREATE TABLE t (x); INSERT INTO t VALUES (1)",
        )
        .unwrap();
    let backup = dir.path().join("big-pages.db.gz");
    call_json(
        &src_conn,
        &format!("SELECT backup_to_file({})", path_lit(&backup)),
    );

    let target = dir.path().join("wal.db");
    make_sample_db(&target, Journal::Wal, 50);
    let conn = open(&target);
    let before = digest_conn(&conn, "main");
    let err = call_err(
        &conn,
        &format!("SELECT restore_backup({})", path_lit(&backup)),
    );
    assert!(
        err.starts_with("restore_backup: cannot restore into 'main': it is a WAL database with page size 4096 and the backup's page size is 8192"),
        "{err}"
    );
    assert!(err.contains("journal_mode = DELETE"), "{err}");
    assert_eq!(digest_conn(&conn, "main"), before);

    // What the message says works.
    conn.execute_batch("PRAGMA journal_mode = DELETE").unwrap();
    let r = call_json(
        &conn,
        &format!("SELECT restore_backup({})", path_lit(&backup)),
    );
    assert_eq!(r["ok"], true);
    drop(conn);
    let page_size: i64 = Connection::open(&target)
        .unwrap()
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    assert_eq!(page_size, 8192);
}
