//! restore_backup only ever replaces a regular file, and keeps its owner, group and mode; a new
//! file gets 0644 less the umask. verify_backup and restore_backup check the SQLite header on
//! the first bytes and stop at the size it declares: decompression bombs, foreign files and
//! concatenated backups fail after writing at most that much (issue #9, items 3 and 11).
//!
//! Most calls go through Debian's sqlite3 CLI as a cron job would, under `prlimit --fsize`:
//! a process that writes a file past the limit is killed (SIGXFSZ), so "nothing large was
//! written" is checked by the kernel, not by polling a directory.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The largest file the CLI may write in the bomb tests (the sample databases are ~150 KiB).
const FSIZE: u64 = 4 << 20;

struct Fixture {
    dir: tempfile::TempDir,
    src: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempdir();
        let src = dir.path().join("app.db");
        make_sample_db(&src, Journal::Rollback, 300);
        Fixture { dir, src }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// backup_to_file of the source to `name` in the fixture's directory.
    fn backup(&self, name: &str) -> PathBuf {
        let dest = self.path(name);
        let conn = open(&self.src);
        call_json(
            &conn,
            &format!("SELECT backup_to_file({})", path_lit(&dest)),
        );
        dest
    }
}

/// `sqlite3 -bail -cmd '.load EXT' :memory: SQL` under `prlimit --fsize=fsize`, after
/// `umask` when given, in `cwd`.
fn cli(cwd: &Path, umask: Option<&str>, fsize: u64, sql: &str) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "{}exec prlimit --fsize={fsize} \"$@\"",
            umask.map(|m| format!("umask {m}; ")).unwrap_or_default()
        ))
        .arg("sh")
        .args([SQLITE3, "-bail", "-cmd"])
        .arg(format!(".load {}", ext_load_name()))
        .arg(":memory:")
        .arg(sql)
        .current_dir(cwd);
    let out = cmd.output().expect("spawn sh");
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `sql`, which must fail (not be killed) with an error containing every one of `wants`.
#[track_caller]
fn cli_err(cwd: &Path, sql: &str, wants: &[&str]) -> String {
    let out = cli(cwd, None, FSIZE, sql);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{sql}: expected an SQL error, got {:?}\nstdout: {}\nstderr: {}",
        out.status,
        out.stdout,
        out.stderr
    );
    for want in wants {
        assert!(
            out.stderr.contains(want),
            "{sql}: wanted {want:?} in {}",
            out.stderr
        );
    }
    out.stderr
}

fn restore_sql(backup: &Path, dest: &Path, opts: &str) -> String {
    format!(
        "SELECT restore_backup({}, {}{opts})",
        path_lit(backup),
        path_lit(dest)
    )
}

fn verify_sql(backup: &Path, temp_dir: &Path) -> String {
    format!(
        "SELECT verify_backup({}, json_object('temp_dir', {}))",
        path_lit(backup),
        path_lit(temp_dir)
    )
}

fn run(prog: &str, args: &[&str]) {
    let out = Command::new(prog).args(args).output().expect(prog);
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kind, device number, owner and mode of what is at `path` (not following a symlink).
fn identity(path: &Path) -> (String, u64, u32, u32, u32) {
    let m = fs::symlink_metadata(path).unwrap();
    let t = m.file_type();
    let kind = if t.is_char_device() {
        "char"
    } else if t.is_block_device() {
        "block"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "dir"
    } else {
        "file"
    };
    (kind.to_string(), m.rdev(), m.uid(), m.gid(), m.mode())
}

/// Issue #9 item 3: `restore_backup(x, 'fakenull', '{"overwrite": true}')` over a character
/// device replaced it with a regular file. Every kind of non-regular file is refused, with and
/// without overwrite, naming what it is; it stays what it was and nothing is left beside it.
#[test]
fn special_files_are_never_replaced() {
    let f = Fixture::new();
    let backup = f.backup("app.db.gz");
    let devnull = identity(Path::new("/dev/null"));
    let dir = f.path("dest");
    fs::create_dir(&dir).unwrap();

    let mut cases: Vec<(PathBuf, String)> = Vec::new();
    if is_root() {
        let fakenull = dir.join("fakenull");
        run("mknod", &[fakenull.to_str().unwrap(), "c", "1", "3"]);
        cases.push((
            fakenull,
            "is a character device, not a database file".into(),
        ));
        // Loop device 250: a node only, never opened.
        let fakeblock = dir.join("fakeblock");
        run("mknod", &[fakeblock.to_str().unwrap(), "b", "7", "250"]);
        cases.push((fakeblock, "is a block device, not a database file".into()));
    } else {
        eprintln!("not root: device nodes skipped (mknod needs root)");
    }
    let fifo = dir.join("fifo.db");
    run("mkfifo", &[fifo.to_str().unwrap()]);
    cases.push((fifo, "is a FIFO (named pipe), not a database file".into()));
    let socket = dir.join("app.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    cases.push((socket, "is a socket, not a database file".into()));
    cases.push((dir.join("sub"), "is a directory".into()));
    fs::create_dir(dir.join("sub")).unwrap();
    // A symlink would be replaced, not its target: refused, naming the target to use.
    let target = dir.join("real.db");
    fs::copy(&f.src, &target).unwrap();
    let link = dir.join("link.db");
    std::os::unix::fs::symlink("real.db", &link).unwrap();
    cases.push((
        link,
        format!(
            "is a symbolic link to {}: restore only replaces regular files",
            fs::canonicalize(&target).unwrap().display()
        ),
    ));
    let dangling = dir.join("dangling.db");
    std::os::unix::fs::symlink("/nonexistent/app.db", &dangling).unwrap();
    cases.push((dangling, "is a symbolic link to /nonexistent/app.db".into()));
    // And the real /dev/null itself (root could rename over it).
    cases.push((
        PathBuf::from("/dev/null"),
        "/dev/null is a character device, not a database file: restore only replaces regular \
         files"
            .into(),
    ));

    let target_before = fs::read(&target).unwrap();
    for (path, want) in &cases {
        let before = identity(path);
        for opts in [", '{\"overwrite\": true}'", ""] {
            let err = cli_err(
                f.dir.path(),
                &restore_sql(&backup, path, opts),
                &["restore_backup: ", want],
            );
            assert!(err.contains(path.to_str().unwrap()), "{err}");
            assert_eq!(identity(path), before, "{} changed", path.display());
        }
    }
    assert_eq!(identity(Path::new("/dev/null")), devnull);
    assert_eq!(fs::read(&target).unwrap(), target_before);
    assert_no_temp_files(&dir);
    assert_no_temp_files(f.dir.path());
    // The regular file behind the link is what to name; that works.
    let out = cli(
        f.dir.path(),
        None,
        FSIZE,
        &restore_sql(&backup, &target, ", '{\"overwrite\": true}'"),
    );
    out.assert_ok();
    assert_eq!(digest(&target), digest(&f.src));
}

/// A root cron job restoring over an application's 0640 database keeps its owner, group and
/// mode; the file is replaced (a new inode), not written in place.
#[test]
fn replaced_file_keeps_owner_group_and_mode() {
    if !is_root() {
        eprintln!("not root: chown to another uid needs root; skipped");
        return;
    }
    let f = Fixture::new();
    let backup = f.backup("app.db.zst");
    for (uid, gid, mode) in [
        (1234u32, 5678u32, 0o640u32),
        (0, 5678, 0o660),
        (4321, 0, 0o600),
    ] {
        let dest = f.path("prod.db");
        fs::write(&dest, b"old database").unwrap();
        std::os::unix::fs::chown(&dest, Some(uid), Some(gid)).unwrap();
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode)).unwrap();
        let ino = fs::metadata(&dest).unwrap().ino();
        cli(
            f.dir.path(),
            None,
            FSIZE,
            &restore_sql(&backup, &dest, ", '{\"overwrite\": true}'"),
        )
        .assert_ok();
        let m = fs::metadata(&dest).unwrap();
        assert_eq!((m.uid(), m.gid()), (uid, gid), "owner of the restored file");
        assert_eq!(m.mode() & 0o7777, mode, "mode {:o}", m.mode());
        assert_ne!(m.ino(), ino, "replaced by rename, not rewritten");
        assert_eq!(digest(&dest), digest(&f.src));
        fs::remove_file(&dest).unwrap();
    }
    assert_no_temp_files(f.dir.path());
}

/// Someone who cannot give the file its owner back (not root, the file another user's) gets
/// an error and the old file stays as it was.
#[test]
fn owner_that_cannot_be_kept_is_an_error() {
    if !is_root() || Command::new("setpriv").arg("--help").output().is_err() {
        eprintln!("needs root and setpriv to act as another user; skipped");
        return;
    }
    let f = Fixture::new();
    let backup = f.backup("app.db.gz");
    let dir = f.path("shared");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(&backup, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(f.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let dest = dir.join("bob.db");
    fs::write(&dest, b"bob's database").unwrap();
    std::os::unix::fs::chown(&dest, Some(2002), Some(2002)).unwrap();
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o666)).unwrap();
    // The extension's directory may not be readable by others: give uid 2001 its own copy.
    let ext = dir.join("sqlite_backup.so");
    fs::copy(common::ext(), &ext).unwrap();
    fs::set_permissions(&ext, fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args([
            "--reuid=2001",
            "--regid=2001",
            "--clear-groups",
            SQLITE3,
            "-bail",
            "-cmd",
        ])
        .arg(format!(".load {}", ext.with_extension("").display()))
        .arg(":memory:")
        .arg(restore_sql(&backup, &dest, ", '{\"overwrite\": true}'"))
        .current_dir(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "restore_backup: cannot give the restored file the owner of {} (uid 2002, gid 2002): \
             permission denied: restore as root or as that user",
            dest.display()
        )),
        "{stderr}"
    );
    assert_eq!(fs::read(&dest).unwrap(), b"bob's database");
    assert_eq!(fs::metadata(&dest).unwrap().uid(), 2002);
    fs::remove_file(&ext).unwrap();
    assert_no_temp_files(&dir);
}

/// A new file gets SQLite's 0644 less the caller's umask (the temp file it was is 0600).
#[test]
fn new_file_mode_follows_the_umask() {
    let f = Fixture::new();
    let backup = f.backup("app.db.gz");
    for (umask, mode) in [
        ("027", 0o640),
        ("022", 0o644),
        ("077", 0o600),
        ("002", 0o644),
    ] {
        let dest = f.path(&format!("new-{umask}.db"));
        cli(
            f.dir.path(),
            Some(umask),
            FSIZE,
            &restore_sql(&backup, &dest, ""),
        )
        .assert_ok();
        let m = fs::metadata(&dest).unwrap();
        assert_eq!(m.mode() & 0o7777, mode, "umask {umask}: {:o}", m.mode());
        assert_eq!(digest(&dest), digest(&f.src));
    }
}

/// `n` zeros through a zstd or gzip encoder, streamed (memory stays one block).
fn compressed_zeros(prefix: &[u8], n: u64, codec: &str) -> Vec<u8> {
    let block = vec![0u8; 1 << 20];
    let feed = |w: &mut dyn Write| {
        w.write_all(prefix).unwrap();
        let mut left = n;
        while left > 0 {
            let take = left.min(block.len() as u64) as usize;
            w.write_all(&block[..take]).unwrap();
            left -= take as u64;
        }
    };
    match codec {
        "zst" => {
            let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).unwrap();
            feed(&mut enc);
            enc.finish().unwrap()
        }
        "gz" => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            feed(&mut enc);
            enc.finish().unwrap()
        }
        other => panic!("codec {other}"),
    }
}

/// Issue #9 item 11: a small archive of zeros used to be decompressed whole before anything
/// looked at it (2 GiB from 72 KB). Now the first 100 bytes decide: the process never writes
/// more than FSIZE (prlimit would kill it), verify and restore say what it is, the production
/// database beside the restore is untouched and no temp file is left.
#[test]
fn zero_bombs_stop_at_the_header() {
    let f = Fixture::new();
    let prod = f.path("prod.db");
    fs::copy(&f.src, &prod).unwrap();
    let prod_before = fs::read(&prod).unwrap();
    let conn = open(&prod);
    let prod_digest = digest_conn(&conn, "main");
    let tmp = f.path("tmp");
    fs::create_dir(&tmp).unwrap();
    for (codec, name) in [("zst", "zstd"), ("gz", "gzip")] {
        let bomb = f.path(&format!("bomb.db.{codec}"));
        let started = Instant::now();
        fs::write(&bomb, compressed_zeros(b"", 256 << 20, codec)).unwrap();
        eprintln!(
            "{name} bomb: {} bytes in {:?}",
            fs::metadata(&bomb).unwrap().len(),
            started.elapsed()
        );
        let want = format!(
            "{} is not a SQLite database (after {name} decompression)",
            bomb.display()
        );
        cli_err(
            f.dir.path(),
            &verify_sql(&bomb, &tmp),
            &["verify_backup: ", &want],
        );
        cli_err(
            f.dir.path(),
            &restore_sql(&bomb, &prod, ", '{\"overwrite\": true}'"),
            &["restore_backup: ", &want],
        );
        // Into an open connection: refused before the database is touched.
        let err = call_err(
            &conn,
            &format!(
                "SELECT restore_backup({}, NULL, json_object('temp_dir', {}))",
                path_lit(&bomb),
                path_lit(&tmp)
            ),
        );
        assert!(err.contains(&want), "{err}");
        assert_eq!(fs::read(&prod).unwrap(), prod_before);
        assert_eq!(digest_conn(&conn, "main"), prod_digest);
        assert_no_temp_files(&tmp);
        assert_no_temp_files(f.dir.path());
    }
}

/// A real database followed by more data: the stream stops where the header says the
/// database ends; the rest is corruption. Two backups concatenated (`cat a b > c`) in every
/// format passed verify before, because SQLite ignores what lies past the declared size.
#[test]
fn data_after_the_declared_end_is_corruption() {
    let f = Fixture::new();
    let tmp = f.path("tmp");
    fs::create_dir(&tmp).unwrap();
    let raw = f.backup("a.db");
    let declared = fs::metadata(&raw).unwrap().len();
    for (suffix, how) in [
        ("", ""),
        (".gz", ", after gzip decompression"),
        (".zst", ", after zstd decompression"),
    ] {
        let a = f.backup(&format!("a.db{suffix}"));
        let b = f.backup(&format!("b.db{suffix}"));
        let joined = f.path(&format!("joined.db{suffix}"));
        let mut bytes = fs::read(&a).unwrap();
        bytes.extend(fs::read(&b).unwrap());
        fs::write(&joined, bytes).unwrap();
        let want = format!(
            "{} has data after the database's end ({declared} bytes declared{how}): two \
             backups concatenated?",
            joined.display()
        );
        cli_err(
            f.dir.path(),
            &verify_sql(&joined, &tmp),
            &["verify_backup: ", &want],
        );
        let dest = f.path("restored.db");
        cli_err(
            f.dir.path(),
            &restore_sql(&joined, &dest, ""),
            &["restore_backup: ", &want],
        );
        assert!(!dest.exists());
        // Each alone is fine.
        cli(f.dir.path(), None, FSIZE, &verify_sql(&a, &tmp)).assert_ok();
    }
    // A database followed by a bomb: stops at the declared end, not at the disk's.
    let db = fs::read(&raw).unwrap();
    for codec in ["zst", "gz"] {
        let padded = f.path(&format!("padded.db.{codec}"));
        fs::write(&padded, compressed_zeros(&db, 256 << 20, codec)).unwrap();
        cli_err(
            f.dir.path(),
            &verify_sql(&padded, &tmp),
            &[
                "has data after the database's end",
                &format!("({declared} bytes declared, after"),
            ],
        );
    }
    assert_no_temp_files(&tmp);
    assert_no_temp_files(f.dir.path());
}

/// A header that does not record the database's size (SQLite before 3.7.0 wrote such files;
/// SQLite then uses the file's size): still verified when it is a real database, but its
/// output is bounded by 1032 times the stored size, at least 16 MiB.
#[test]
fn undeclared_size_is_bounded_by_the_stored_size() {
    let f = Fixture::new();
    let tmp = f.path("tmp");
    fs::create_dir(&tmp).unwrap();
    let raw = f.backup("a.db");
    let mut db = fs::read(&raw).unwrap();
    // "version-valid-for" no longer equal to the change counter: the size field is stale.
    db[95] ^= 0xff;
    let old_style = f.path("old-style.db");
    fs::write(&old_style, &db).unwrap();
    let r = cli(f.dir.path(), None, FSIZE, &verify_sql(&old_style, &tmp));
    r.assert_ok();
    assert!(r.stdout.contains("\"ok\":true"), "{}", r.stdout);

    // The same with 64 MiB of zeros after it, as zstd (a few KB): stopped at 16 MiB.
    let small_db = {
        let p = f.path("small.db");
        let c = rusqlite::Connection::open(&p).unwrap();
        c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(c);
        let mut b = fs::read(&p).unwrap();
        b[95] ^= 0xff;
        b
    };
    let bomb = f.path("old-style-bomb.db.zst");
    fs::write(&bomb, compressed_zeros(&small_db, 64 << 20, "zst")).unwrap();
    let out = cli(f.dir.path(), None, 20 << 20, &verify_sql(&bomb, &tmp));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{:?}: {}",
        out.status,
        out.stderr
    );
    assert!(
        out.stderr.contains(&format!(
            "{} is over 16777216 bytes after zstd decompression (the bound when the header \
             does not record the database's size: 1032 times the stored size, at least 16 MiB): \
             refused as a decompression bomb",
            bomb.display()
        )),
        "{}",
        out.stderr
    );
    assert_no_temp_files(&tmp);
}

/// Empty, short and truncated files: a clear error saying which.
#[test]
fn empty_short_and_truncated_files() {
    let f = Fixture::new();
    let tmp = f.path("tmp");
    fs::create_dir(&tmp).unwrap();
    let raw = f.backup("a.db");
    let db = fs::read(&raw).unwrap();
    let declared = db.len();

    let empty = f.path("empty.db");
    fs::write(&empty, b"").unwrap();
    let empty_gz = f.path("empty.db.gz");
    fs::write(&empty_gz, compressed_zeros(b"", 0, "gz")).unwrap();
    let short = f.path("short.db");
    fs::write(&short, &db[..60]).unwrap();
    let truncated = f.path("truncated.db");
    fs::write(&truncated, &db[..declared / 2]).unwrap();
    let truncated_zst = f.path("truncated.db.zst");
    fs::write(&truncated_zst, compressed_zeros(&db[..4096], 0, "zst")).unwrap();

    for (path, want) in [
        (&empty, "is not a SQLite database: it is empty".to_string()),
        (
            &empty_gz,
            "is not a SQLite database (after gzip decompression): it is empty".into(),
        ),
        (
            &short,
            "is not a SQLite database: 60 bytes, shorter than a database header (100 bytes)".into(),
        ),
        (
            &truncated,
            format!(
                "is truncated: {} bytes, but its header declares {declared}",
                declared / 2
            ),
        ),
        (
            &truncated_zst,
            format!(
                "is truncated: 4096 bytes after zstd decompression, but its header declares \
                 {declared}"
            ),
        ),
    ] {
        let want = format!("{} {want}", path.display());
        cli_err(
            f.dir.path(),
            &verify_sql(path, &tmp),
            &["verify_backup: ", &want],
        );
        let dest = f.path("restored.db");
        cli_err(
            f.dir.path(),
            &restore_sql(path, &dest, ""),
            &["restore_backup: ", &want],
        );
        assert!(!dest.exists());
    }
    assert_no_temp_files(&tmp);
    assert_no_temp_files(f.dir.path());
}

/// verify/restore of a location that is a FIFO or a device return at once with an error:
/// nothing waits for a writer or reads an endless device.
#[test]
fn special_sources_do_not_hang() {
    let f = Fixture::new();
    let tmp = f.path("tmp");
    fs::create_dir(&tmp).unwrap();
    let fifo = f.path("pipe.db.gz");
    run("mkfifo", &[fifo.to_str().unwrap()]);
    let zero = f.path("zero.db.zst");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    for source in [&fifo, &zero, &PathBuf::from("/dev/urandom")] {
        let started = Instant::now();
        let out = Command::new("timeout")
            .args(["20", SQLITE3, "-bail", "-cmd"])
            .arg(format!(".load {}", ext_load_name()))
            .arg(":memory:")
            .arg(verify_sql(source, &tmp))
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: {:?}",
            source.display(),
            out.status
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(source.to_str().unwrap()), "{stderr}");
    }
    assert_no_temp_files(&tmp);
}
