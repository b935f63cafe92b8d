//! No debris after `kill -9` or `SIGTERM` (issue #9 item 10). The real sqlite3 CLI is killed in
//! each phase of a backup, a verify and a restore; afterwards either nothing of ours is left,
//! or the next call of the extension in that directory removes it. A live process's temp files
//! are never removed, even while it is stopped. A full temp_dir with method `pages` leaves no
//! `-journal`.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;

/// A database of about 64 MiB (incompressible blobs), so each phase lasts a moment. Built once
/// in cargo's temp dir for integration tests and only ever read.
fn big_db() -> &'static Path {
    static DB: OnceLock<PathBuf> = OnceLock::new();
    DB.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join("debris-source-v1.db");
        if !path.exists() {
            let building = dir.join(format!("debris-source-{}.building", std::process::id()));
            let _ = fs::remove_file(&building);
            sqlite3_plain(
                &building,
                "PRAGMA journal_mode = DELETE;
                 CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB);
                 WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 16000)
                 INSERT INTO t(b) SELECT randomblob(4000) FROM c;",
            )
            .assert_ok();
            fs::rename(&building, &path).unwrap();
        }
        path
    })
}

/// A sqlite3 CLI running one statement in the background; killed (and reaped) when dropped,
/// so a failing test leaves no process, stopped or not.
struct Cli {
    child: Child,
}

impl Cli {
    fn start(db: &Path, sql: &str) -> Cli {
        let child = Command::new(SQLITE3)
            .arg("-bail")
            .arg("-cmd")
            .arg(format!(".load {}", ext_load_name()))
            .arg(db)
            .arg(sql)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sqlite3");
        Cli { child }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: a signal to our own child, which is not reaped before `Drop` or `wait`.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Polls (every millisecond, at most 60 s) until `seen`; panics if the CLI exits first.
    fn wait_for(&mut self, what: &str, mut seen: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if seen() {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("sqlite3 ended ({status}) before {what}: {}", self.output());
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Polls (at most 60 s) until `seen`, whatever the process does meanwhile.
    fn wait_for_state(&self, what: &str, mut seen: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !seen() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sends `signal` and reaps the process.
    fn kill(mut self, signal: libc::c_int) -> ExitStatus {
        self.signal(signal);
        self.child.wait().unwrap()
    }

    fn output(&mut self) -> String {
        let mut text = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut text);
        }
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut text);
        }
        text
    }

    /// Waits for the end; panics unless it succeeded; returns stdout and stderr.
    fn finish(mut self) -> String {
        let status = self.child.wait().unwrap();
        let text = self.output();
        assert!(status.success(), "sqlite3 failed ({status}): {text}");
        text
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Our temp files in `dir` (`.sqlite-backup-*`, with their sidecars).
fn ours(dir: &Path) -> Vec<String> {
    list(dir)
        .into_iter()
        .filter(|n| n.starts_with(".sqlite-backup-"))
        .collect()
}

fn has_temp(dir: &Path, ext: &str) -> bool {
    ours(dir).iter().any(|n| n.ends_with(ext))
}

/// True when process `pid` has a file open in `dir` (named or not: an unnamed file shows as
/// `dir/#inode (deleted)`).
fn writes_into(pid: i32, dir: &Path) -> bool {
    let dir = format!("{}/", dir.canonicalize().unwrap().display());
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path())
            .map(|target| target.to_string_lossy().starts_with(&dir))
            .unwrap_or(false)
    })
}

/// True when `dir`'s file system makes unnamed files (`O_TMPFILE`; overlayfs before Linux 6.7
/// does not, and then the backup is a named temp file that the next call must sweep).
fn has_o_tmpfile(dir: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
        .is_ok()
}

/// Options for a slow, single-threaded backup with `temp_dir`.
fn slow(temp_dir: &Path) -> String {
    lit(format!(
        r#"{{"temp_dir": "{}", "level": 1, "threads": 1}}"#,
        temp_dir.display()
    ))
}

/// One test's directories: `tmp` (temp_dir), `out` (destinations), and a small database for
/// the "next call" that must clean up.
struct Dirs {
    _root: tempfile::TempDir,
    tmp: PathBuf,
    out: PathBuf,
    small: PathBuf,
}

fn dirs() -> Dirs {
    let root = tempdir();
    let (tmp, out) = (root.path().join("tmp"), root.path().join("out"));
    fs::create_dir(&tmp).unwrap();
    fs::create_dir(&out).unwrap();
    let small = root.path().join("small.db");
    make_sample_db(&small, Journal::Rollback, 50);
    Dirs {
        _root: root,
        tmp,
        out,
        small,
    }
}

impl Dirs {
    /// The next call of the extension: a small backup into `out` through `tmp`. It must clean
    /// both directories of what dead processes left, and leave nothing of its own.
    #[track_caller]
    fn next_call_cleans_up(&self) {
        let dest = self.out.join("next.db.gz");
        let sql = format!(
            "SELECT backup_to_file({}, {});",
            path_lit(&dest),
            slow(&self.tmp)
        );
        sqlite3_cli(&self.small, &["-bail"], &sql, None).assert_ok();
        fs::remove_file(&dest).unwrap();
        assert_no_temp_files(&self.tmp);
        assert_no_temp_files(&self.out);
        assert_eq!(list(&self.out), Vec::<String>::new());
    }
}

/// Killed while the snapshot is written, then while the compressed backup is written: the
/// destination directory never holds anything of ours (the upload has no name until it is
/// complete), and the next call removes the snapshot a dead process left in temp_dir.
#[test]
fn kill_9_during_a_backup_leaves_nothing_the_next_call_keeps() {
    let d = dirs();
    let dest = d.out.join("big.db.gz");
    let sql = format!(
        "SELECT backup_to_file({}, {});",
        path_lit(&dest),
        slow(&d.tmp)
    );

    // 1. Mid-snapshot (VACUUM INTO writing through the batching VFS).
    let mut cli = Cli::start(big_db(), &sql);
    cli.wait_for("the snapshot appears", || has_temp(&d.tmp, ".snapshot"));
    assert!(!cli.kill(libc::SIGKILL).success());
    assert!(
        has_temp(&d.tmp, ".snapshot"),
        "killed before the snapshot was complete"
    );
    assert_eq!(list(&d.out), Vec::<String>::new());
    d.next_call_cleans_up();

    // 1b. The same, but the killed process is not reaped yet (a zombie, as under a parent
    // that has not called wait): it will never run again, so its files go too.
    let mut cli = Cli::start(big_db(), &sql);
    cli.wait_for("the snapshot appears", || has_temp(&d.tmp, ".snapshot"));
    cli.signal(libc::SIGKILL);
    let stat = format!("/proc/{}/stat", cli.pid());
    cli.wait_for_state("a zombie", || {
        let text = fs::read_to_string(&stat).unwrap_or_default();
        text.rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    });
    d.next_call_cleans_up();
    drop(cli);

    // 2. Mid-compression: the backup is being written into `out`.
    let mut cli = Cli::start(big_db(), &sql);
    let pid = cli.pid();
    cli.wait_for("the backup is written", || writes_into(pid, &d.out));
    assert!(!cli.kill(libc::SIGKILL).success());
    if has_o_tmpfile(&d.out) {
        assert_eq!(
            list(&d.out),
            Vec::<String>::new(),
            "an unfinished backup must have no name"
        );
    }
    d.next_call_cleans_up();

    // 3. Replacing an existing backup: killed mid-write, the old one stays whole.
    fs::write(&dest, b"the previous backup").unwrap();
    let mut cli = Cli::start(big_db(), &sql);
    let pid = cli.pid();
    cli.wait_for("the backup is written", || writes_into(pid, &d.out));
    assert!(!cli.kill(libc::SIGKILL).success());
    assert_eq!(fs::read(&dest).unwrap(), b"the previous backup");
    if has_o_tmpfile(&d.out) {
        assert_eq!(list(&d.out), ["big.db.gz"]);
    }
    fs::remove_file(&dest).unwrap();
    d.next_call_cleans_up();
}

/// Killed (SIGKILL, and SIGTERM once) while verify decompresses into its temp database and
/// while it runs integrity_check on it; and while a restore writes its temp database beside
/// the destination. The next call in those directories removes what was left; the
/// destination of the restore never appears.
#[test]
fn kill_during_verify_and_restore_leaves_nothing_the_next_call_keeps() {
    let d = dirs();
    let size = fs::metadata(big_db()).unwrap().len();
    let verify = format!(
        "SELECT verify_backup({}, {});",
        path_lit(big_db()),
        lit(format!(r#"{{"temp_dir": "{}"}}"#, d.tmp.display()))
    );
    let temp_db_size = |dir: &Path| {
        ours(dir)
            .iter()
            .filter(|n| n.ends_with(".db"))
            .filter_map(|n| fs::metadata(dir.join(n)).ok())
            .map(|m| m.len())
            .max()
    };

    // 1. Decompressing, SIGKILL.
    let mut cli = Cli::start(&d.small, &verify);
    cli.wait_for("the temp database appears", || has_temp(&d.tmp, ".db"));
    assert!(!cli.kill(libc::SIGKILL).success());
    assert!(has_temp(&d.tmp, ".db"));
    d.next_call_cleans_up();

    // 2. Checking (the copy is complete), SIGTERM.
    let mut cli = Cli::start(&d.small, &verify);
    cli.wait_for("integrity_check runs", || {
        temp_db_size(&d.tmp) == Some(size)
    });
    assert!(!cli.kill(libc::SIGTERM).success());
    assert!(has_temp(&d.tmp, ".db"));
    d.next_call_cleans_up();

    // 3. A restore's temp database beside the destination.
    let dest = d.out.join("restored.db");
    let restore = format!(
        "SELECT restore_backup({}, {});",
        path_lit(big_db()),
        path_lit(&dest)
    );
    let mut cli = Cli::start(&d.small, &restore);
    cli.wait_for("the restore's temp database appears", || {
        has_temp(&d.out, ".db")
    });
    assert!(!cli.kill(libc::SIGKILL).success());
    assert!(has_temp(&d.out, ".db"));
    assert!(!dest.exists(), "a killed restore must not create {dest:?}");
    d.next_call_cleans_up();

    // 4. The same, killed while integrity_check runs on the complete copy.
    let mut cli = Cli::start(&d.small, &restore);
    cli.wait_for("the restore checks its copy", || {
        temp_db_size(&d.out) == Some(size)
    });
    assert!(!cli.kill(libc::SIGKILL).success());
    assert!(!dest.exists());
    d.next_call_cleans_up();
}

/// Two processes share temp_dir: one is stopped (SIGSTOP) mid-snapshot, a third was killed
/// there. A backup by another process removes the dead one's snapshot and never touches the
/// stopped one's, which, continued, finishes a good backup.
#[test]
fn a_live_process_keeps_its_temp_files_while_another_sweeps() {
    let d = dirs();
    let sql = |name: &str| {
        format!(
            "SELECT backup_to_file({}, {});",
            path_lit(d.out.join(name)),
            slow(&d.tmp)
        )
    };

    let mut dead = Cli::start(big_db(), &sql("dead.db.gz"));
    dead.wait_for("the snapshot appears", || has_temp(&d.tmp, ".snapshot"));
    dead.kill(libc::SIGKILL);
    let debris = ours(&d.tmp);
    assert!(!debris.is_empty());

    let mut live = Cli::start(big_db(), &sql("live.db.gz"));
    live.wait_for("the second snapshot appears", || {
        ours(&d.tmp).iter().any(|n| !debris.contains(n))
    });
    live.signal(libc::SIGSTOP);
    let live_files: Vec<String> = ours(&d.tmp)
        .into_iter()
        .filter(|n| !debris.contains(n))
        .collect();

    let dest = d.out.join("other.db.gz");
    sqlite3_cli(
        &d.small,
        &["-bail"],
        &format!(
            "SELECT backup_to_file({}, {});",
            path_lit(&dest),
            slow(&d.tmp)
        ),
        None,
    )
    .assert_ok();
    let left = ours(&d.tmp);
    for name in &debris {
        assert!(!left.contains(name), "{name} of a dead process is left");
    }
    for name in live_files.iter().filter(|n| n.ends_with(".snapshot")) {
        assert!(
            left.contains(name),
            "{name} of a stopped process was removed"
        );
    }

    live.signal(libc::SIGCONT);
    let out = live.finish();
    assert!(out.contains("\"skipped\":false"), "{out}");
    let check = sqlite3_cli(
        &d.small,
        &["-bail"],
        &format!(
            "SELECT verify_backup({}) ->> '$.ok';",
            path_lit(d.out.join("live.db.gz"))
        ),
        None,
    );
    assert_eq!(check.assert_ok().stdout.trim(), "1");
    assert_no_temp_files(&d.tmp);
    assert_no_temp_files(&d.out);
}

/// A 1 MiB tmpfs, unmounted when dropped. None when this machine will not mount one (not
/// root, no permission in a container): the test then says so and passes.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Option<Tmpfs> {
        fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Method `pages` (an in-memory database) with a temp_dir too small for the snapshot: a clear
/// error and nothing left, not even the copy's `-journal`. The same for `vacuum` and for
/// verify's temp database.
#[test]
fn a_full_temp_dir_fails_clearly_and_leaves_nothing() {
    let root = tempdir();
    let Some(full) = Tmpfs::mount(&root.path().join("full")) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    };
    let dest = root.path().join("b.db.gz");
    let options = lit(format!(r#"{{"temp_dir": "{}"}}"#, full.0.display()));
    let fill = "CREATE TABLE t(b); \
        WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000) \
        INSERT INTO t SELECT randomblob(1000) FROM c;";

    let memory = open_memory();
    memory.execute_batch(fill).unwrap();
    // (The default for memory, `stream`, needs no temp space at all: tests/streaming.rs.)
    let pages = lit(format!(
        r#"{{"temp_dir": "{}", "method": "pages"}}"#,
        full.0.display()
    ));
    let err = call_err(
        &memory,
        &format!("SELECT backup_to_file({}, {pages})", path_lit(&dest)),
    );
    assert!(err.contains("disk is full"), "{err}");
    assert!(err.starts_with("backup_to_file: "), "{err}");
    assert_eq!(list(&full.0), Vec::<String>::new(), "pages");

    let file_db = root.path().join("src.db");
    let conn = open(&file_db);
    conn.execute_batch(fill).unwrap();
    let err = call_err(
        &conn,
        &format!("SELECT backup_to_file({}, {options})", path_lit(&dest)),
    );
    assert!(err.contains("full"), "{err}");
    assert_eq!(list(&full.0), Vec::<String>::new(), "vacuum");
    assert!(!dest.exists());

    let backup = root.path().join("ok.db.gz");
    call_json(
        &conn,
        &format!("SELECT backup_to_file({})", path_lit(&backup)),
    );
    let err = call_err(
        &conn,
        &format!("SELECT verify_backup({}, {options})", path_lit(&backup)),
    );
    assert!(err.contains("cannot write a temp file"), "{err}");
    assert_eq!(list(&full.0), Vec::<String>::new(), "verify");

    // The destination's directory full: the backup (an unnamed file there) fails, and so
    // does a restore's temp database there.
    let err = call_err(
        &conn,
        &format!(
            "SELECT backup_to_file({})",
            path_lit(full.0.join("b.db.gz"))
        ),
    );
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(list(&full.0), Vec::<String>::new(), "backup into it");
    let err = call_err(
        &conn,
        &format!(
            "SELECT restore_backup({}, {})",
            path_lit(&backup),
            path_lit(full.0.join("r.db"))
        ),
    );
    assert!(err.contains("cannot write a temp file"), "{err}");
    assert_eq!(list(&full.0), Vec::<String>::new(), "restore into it");
    assert_no_temp_files(root.path());
}
