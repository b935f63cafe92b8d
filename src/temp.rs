//! Every temp file the extension makes, and the removal of those a killed process left behind.
//!
//! A `kill -9` or `SIGTERM` runs no destructor, so "removed on drop" is not enough:
//! - Where nothing needs a name, the file has none. A backup written to a directory is an
//!   `O_TMPFILE` inode there that gets its name only at commit (`linkat`); S3 parks parts in an
//!   unnamed file too. A kill leaves nothing to clean.
//! - SQLite needs a name for the snapshot and for the database that verify and restore check.
//!   Those are named `.sqlite-backup-<pid>-<start>-<host>-<random>.<snapshot|db|tmp>`: the
//!   owner's pid and start time (field 22 of `/proc/<pid>/stat`, which tells a reused pid
//!   apart), and `<host>`, a hash of the boot id and the pid and time namespaces, so that a
//!   process only judges owners it can see (not another machine's on a shared disk, not
//!   another container's, not an earlier boot's). Before a call creates a temp file in a
//!   directory, it removes the files of that form there whose owner is gone, with their
//!   `-journal`, `-wal` and `-shm`: regular files of its own user only, never a running (or
//!   stopped) owner's.
//!
//! File systems without `O_TMPFILE` get a named `.tmp` file instead, swept the same way.
//! Outside Linux every backup takes that named path; without a /proc to judge owners by,
//! names carry no owner there and nothing is swept (only removed on drop).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tempfile::NamedTempFile;

use crate::error::{Error, Kind, Result};

/// Every temp file we create starts with this, so listings skip it and a human knows whose it is.
pub const PREFIX: &str = ".sqlite-backup-";
/// Files SQLite may create beside a database; they go with it.
const SIDECARS: [&str; 3] = ["-journal", "-wal", "-shm"];
const RAND_LEN: usize = 10;

/// What a named temp file holds; the extension of its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ext {
    /// The uncompressed snapshot a backup compresses.
    Snapshot,
    /// A decompressed backup that verify or restore checks.
    Db,
    /// A backup file about to be renamed into place.
    Upload,
}

impl Ext {
    fn as_str(self) -> &'static str {
        match self {
            Ext::Snapshot => "snapshot",
            Ext::Db => "db",
            Ext::Upload => "tmp",
        }
    }

    fn parse(text: &str) -> Option<Ext> {
        [Ext::Snapshot, Ext::Db, Ext::Upload]
            .into_iter()
            .find(|e| e.as_str() == text)
    }
}

/// A named temp file (mode 0600), removed with its `-journal`, `-wal` and `-shm` when dropped
/// unless persisted. After a kill, the next call in its directory removes it (module doc).
pub struct NamedTemp {
    // Dropped in this order: the file, then what SQLite left beside it.
    file: NamedTempFile,
    sidecars: Sidecars,
}

struct Sidecars(PathBuf);

impl Drop for Sidecars {
    fn drop(&mut self) {
        for suffix in SIDECARS {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = fs::remove_file(path);
        }
    }
}

/// Creates a named temp file in `dir`, after removing what dead owners left there.
pub fn named(dir: &Path, ext: Ext) -> Result<NamedTemp> {
    sweep(dir);
    create_named(dir, ext).map_err(|e| cannot_create(dir, e))
}

fn cannot_create(dir: &Path, e: io::Error) -> Error {
    Error::io(format!("cannot create a file in {}", dir.display()), e)
}

/// `.sqlite-backup-<pid>-<start>-<host>-`: what a temp name of this process starts with.
fn owner_prefix() -> String {
    // Without a readable /proc no later call could judge the owner: no owner in the name, and
    // such a file is never swept (only removed on drop).
    match Owner::current() {
        Some(me) => format!("{PREFIX}{}-{}-{}-", me.pid, me.start, me.host),
        None => PREFIX.to_string(),
    }
}

fn create_named(dir: &Path, ext: Ext) -> io::Result<NamedTemp> {
    let file = tempfile::Builder::new()
        .prefix(&owner_prefix())
        .rand_bytes(RAND_LEN)
        .suffix(&format!(".{}", ext.as_str()))
        .tempfile_in(dir)?;
    let sidecars = Sidecars(file.path().to_path_buf());
    Ok(NamedTemp { file, sidecars })
}

impl NamedTemp {
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn as_file(&self) -> &File {
        self.file.as_file()
    }

    /// A new handle on the same file (checked to be the same inode, not a replacement).
    pub fn reopen(&self) -> io::Result<File> {
        self.file.reopen()
    }
}

impl Write for NamedTemp {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// fsync a directory so a rename in it survives a power cut.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("cannot sync directory {}", dir.display()), e))
}

/// The directory holding `path` ("." for a bare file name, whose parent is "").
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Moves a finished temp file to `dest` atomically (fsync, rename, fsync the directory):
/// replaces `dest` only when `overwrite`, otherwise fails with `Kind::Exists` and leaves both
/// as they were (the temp file is removed).
pub fn persist(temp: NamedTemp, dest: &Path, overwrite: bool) -> Result<()> {
    let NamedTemp { file, sidecars } = temp;
    file.as_file()
        .sync_all()
        .map_err(|e| Error::io(format!("cannot sync {}", file.path().display()), e))?;
    let result = if overwrite {
        file.persist(dest)
    } else {
        file.persist_noclobber(dest)
    };
    drop(sidecars);
    result.map_err(|e| placing_error(dest, e.error))?;
    sync_dir(parent_dir(dest))
}

fn placing_error(dest: &Path, e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::AlreadyExists {
        return Error::new(Kind::Exists, format!("{} already exists", dest.display()));
    }
    Error::io(format!("cannot move the new file to {}", dest.display()), e)
}

/// A new file in a directory that appears under its final name only at `persist`: before
/// that it has no name at all (`O_TMPFILE`), so a kill leaves nothing. Falls back to a named
/// temp file where the file system lacks `O_TMPFILE` (some network and FUSE file systems)
/// and on systems other than Linux.
pub enum Staged {
    #[cfg(target_os = "linux")]
    Unnamed(File),
    Named(NamedTemp),
}

impl Staged {
    /// Creates the file in `dir`, after removing what dead owners left there.
    pub fn create(dir: &Path) -> Result<Staged> {
        sweep(dir);
        match open_unnamed(dir) {
            Ok(Some(staged)) => Ok(staged),
            Ok(None) => create_named(dir, Ext::Upload)
                .map(Staged::Named)
                .map_err(|e| cannot_create(dir, e)),
            Err(e) => Err(cannot_create(dir, e)),
        }
    }

    pub fn as_file(&self) -> &File {
        match self {
            #[cfg(target_os = "linux")]
            Staged::Unnamed(file) => file,
            Staged::Named(temp) => temp.as_file(),
        }
    }

    /// Gives the file its name `dest` (in the directory it was created in) atomically, as
    /// `persist` does for a named temp file.
    pub fn persist(self, dest: &Path, overwrite: bool) -> Result<()> {
        match self {
            Staged::Named(temp) => persist(temp, dest, overwrite),
            #[cfg(target_os = "linux")]
            Staged::Unnamed(file) => persist_unnamed(file, dest, overwrite),
        }
    }
}

/// `Staged::persist` for an `O_TMPFILE` file: linked into place through /proc/self/fd.
#[cfg(target_os = "linux")]
fn persist_unnamed(file: File, dest: &Path, overwrite: bool) -> Result<()> {
    use std::os::unix::io::AsRawFd;
    file.sync_all()
        .map_err(|e| Error::io(format!("cannot sync the new {}", dest.display()), e))?;
    let fd = format!("/proc/self/fd/{}", file.as_raw_fd());
    if overwrite {
        // linkat never replaces a name: link under a temp name beside `dest`, then rename
        // over it. That name lives for a moment only, and is swept like the others.
        let temp = link_to_temp_name(&fd, parent_dir(dest)).map_err(|e| placing_error(dest, e))?;
        if let Err(e) = fs::rename(&temp, dest) {
            let _ = fs::remove_file(&temp);
            return Err(placing_error(dest, e));
        }
    } else {
        // Fails when `dest` exists: never replaces a file created meanwhile.
        link(&fd, dest).map_err(|e| placing_error(dest, e))?;
    }
    sync_dir(parent_dir(dest))
}

impl Write for Staged {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            #[cfg(target_os = "linux")]
            Staged::Unnamed(file) => file.write(buf),
            Staged::Named(temp) => temp.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            #[cfg(target_os = "linux")]
            Staged::Unnamed(file) => file.flush(),
            Staged::Named(temp) => temp.flush(),
        }
    }
}

/// An `O_TMPFILE` file in `dir`, or `None` where that is not supported.
#[cfg(not(target_os = "linux"))]
fn open_unnamed(_dir: &Path) -> io::Result<Option<Staged>> {
    Ok(None)
}

/// An `O_TMPFILE` file in `dir`, or `None` where that is not supported.
#[cfg(target_os = "linux")]
fn open_unnamed(dir: &Path) -> io::Result<Option<Staged>> {
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;
    // The link at commit goes through /proc/self/fd (AT_EMPTY_PATH needs a capability).
    if !Path::new("/proc/self/fd").is_dir() {
        return Ok(None);
    }
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir);
    match opened {
        Ok(file) => Ok(Some(Staged::Unnamed(file))),
        // What kernels and file systems without O_TMPFILE answer (ENOENT: a missing directory,
        // which the named fallback reports in its own words).
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL | libc::ENOENT)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// linkat(2) following the /proc/self/fd link, which is how an `O_TMPFILE` file gets a name.
#[cfg(target_os = "linux")]
fn link(from: &str, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let invalid = |_| io::Error::from(io::ErrorKind::InvalidInput);
    let from = CString::new(from).map_err(invalid)?;
    let to = CString::new(to.as_os_str().as_bytes()).map_err(invalid)?;
    // SAFETY: two NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Links `fd` under a fresh temp name (our form, `.tmp`) in `dir`; returns that path.
#[cfg(target_os = "linux")]
fn link_to_temp_name(fd: &str, dir: &Path) -> io::Result<PathBuf> {
    let prefix = owner_prefix();
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..16 {
        let random: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(RAND_LEN)
            .collect();
        let path = dir.join(format!("{prefix}{random}.{}", Ext::Upload.as_str()));
        match link(fd, &path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// An unnamed file in `dir` for data that is read back and thrown away (S3 parts waiting
/// for the snapshot's hash): nothing to clean after a kill.
pub fn unnamed(dir: &Path) -> io::Result<File> {
    tempfile::tempfile_in(dir)
}

/// The process that created a temp file, as its name records it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    pid: u32,
    /// Start time in clock ticks after boot (`/proc/<pid>/stat` field 22).
    start: u64,
    /// 8 hex digits: hash of the boot id and the pid and time namespaces.
    host: String,
}

impl Owner {
    /// This process; None without a readable /proc of our own pid namespace. Read at each
    /// call, not cached: a forked child is another owner.
    fn current() -> Option<Owner> {
        let stat = parse_stat(&fs::read_to_string("/proc/self/stat").ok()?)?;
        // A /proc mounted from another pid namespace would make every judgement wrong.
        if stat.pid != std::process::id() {
            return None;
        }
        Some(Owner {
            pid: stat.pid,
            start: stat.start,
            host: host_tag()?,
        })
    }

    /// True only when the owner has certainly exited: no such process, or the pid now
    /// belongs to a process started at another time, or a zombie with no thread left.
    /// Anything unclear (no permission, unreadable) counts as alive.
    fn is_gone(&self) -> bool {
        let proc_dir = PathBuf::from(format!("/proc/{}", self.pid));
        match fs::read_to_string(proc_dir.join("stat")) {
            Err(e) => e.kind() == io::ErrorKind::NotFound,
            Ok(text) => match parse_stat(&text) {
                None => false,
                Some(stat) if stat.start != self.start => true,
                // A zombie leader whose other threads still run is alive.
                Some(stat) if stat.state == 'Z' => fs::read_dir(proc_dir.join("task"))
                    .map(|tasks| tasks.take(2).count() <= 1)
                    .unwrap_or(false),
                Some(_) => false,
            },
        }
    }
}

struct Stat {
    pid: u32,
    state: char,
    start: u64,
}

/// `pid (comm) state ppid … starttime …`; `comm` may hold spaces and parentheses.
fn parse_stat(text: &str) -> Option<Stat> {
    let pid = text.split_once(" (")?.0.parse().ok()?;
    let close = text.rfind(')')?;
    let mut fields = text.get(close + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3), field 22 is the 19th.
    let start = fields.nth(18)?.parse().ok()?;
    Some(Stat { pid, state, start })
}

/// 8 hex digits naming this boot of this machine, this pid namespace (pids mean other
/// processes elsewhere) and this time namespace (start times are shifted in another).
fn host_tag() -> Option<String> {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let pids = fs::read_link("/proc/self/ns/pid").ok()?;
    // Kernels before 5.6 have no time namespaces, and so no link.
    let time = fs::read_link("/proc/self/ns/time").unwrap_or_default();
    let digest = Sha256::new()
        .chain_update(boot.trim().as_bytes())
        .chain_update([0u8])
        .chain_update(pids.as_os_str().as_encoded_bytes())
        .chain_update([0u8])
        .chain_update(time.as_os_str().as_encoded_bytes())
        .finalize();
    Some(crate::dbfile::hex(digest.get(..4).unwrap_or_default()))
}

/// The owner recorded in `name` when it is exactly one of our temp names (or its
/// `-journal`, `-wal`, `-shm`), else None.
fn parse_name(name: &str) -> Option<Owner> {
    let rest = name.strip_prefix(PREFIX)?;
    let rest = SIDECARS
        .iter()
        .find_map(|s| rest.strip_suffix(s))
        .unwrap_or(rest);
    let (stem, ext) = rest.rsplit_once('.')?;
    Ext::parse(ext)?;
    let mut parts = stem.split('-');
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    let (pid, start, host, random) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let well_formed = parts.next().is_none()
        && digits(pid)
        && digits(start)
        && host.len() == 8
        && host.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && random.len() == RAND_LEN
        && random.bytes().all(|b| b.is_ascii_alphanumeric());
    if !well_formed {
        return None;
    }
    Some(Owner {
        pid: pid.parse().ok()?,
        start: start.parse().ok()?,
        host: host.to_string(),
    })
}

/// Removes from `dir` the temp files (and their sidecars) whose owner has exited; returns how
/// many. Quiet: anything it cannot read or remove is left for a later call.
pub fn sweep(dir: &Path) -> usize {
    let Some(me) = Owner::current() else {
        return 0;
    };
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let Some(owner) = entry.file_name().to_str().and_then(parse_name) else {
            continue;
        };
        if owner.host != me.host || (owner.pid == me.pid && owner.start == me.start) {
            continue;
        }
        let path = entry.path();
        let ours = fs::symlink_metadata(&path)
            .map(|m| m.file_type().is_file() && owned_by_me(&m))
            .unwrap_or(false);
        if ours && owner.is_gone() && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Whether the file is of our own user: the sweep never removes another user's files.
#[cfg(unix)]
fn owned_by_me(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid cannot fail and has no preconditions.
    meta.uid() == unsafe { libc::geteuid() }
}

/// No owner to compare (and no /proc, so `sweep` stops before asking): never ours to remove.
#[cfg(not(unix))]
fn owned_by_me(_meta: &fs::Metadata) -> bool {
    false
}

/// Positioned I/O on a temp file (the S3 spool, the stream's spill).
#[cfg(unix)]
pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(unix)]
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

/// Seek, then write: each temp file these serve has one user at a time, so nothing else moves
/// the position.
#[cfg(not(unix))]
pub fn write_all_at(mut file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(buf)
}

/// Seek, then read (see `write_all_at`).
#[cfg(not(unix))]
pub fn read_exact_at(mut file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn me() -> Owner {
        Owner::current().expect("tests run with /proc")
    }

    fn name(owner: &Owner, ext: &str) -> String {
        format!(
            "{PREFIX}{}-{}-{}-abcDEF1234.{ext}",
            owner.pid, owner.start, owner.host
        )
    }

    #[test]
    fn stat_with_parentheses_and_spaces_in_the_command() {
        let text = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 120 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 2138112 200 18446744073709551615";
        let stat = parse_stat(text).unwrap();
        assert_eq!((stat.pid, stat.state, stat.start), (4242, 'S', 987654));
        assert!(parse_stat("4242 (x) S 1 2").is_none());
        assert!(parse_stat("").is_none());
    }

    #[test]
    fn our_own_names_parse_and_others_do_not() {
        let me = me();
        assert_eq!(me.pid, std::process::id());
        for ext in [
            "snapshot",
            "db",
            "tmp",
            "db-journal",
            "db-wal",
            "snapshot-shm",
        ] {
            assert_eq!(parse_name(&name(&me, ext)), Some(me.clone()), "{ext}");
        }
        let h = &me.host;
        for other in [
            ".sqlite-backup-abcDEF.snapshot".to_string(), // names before owners were recorded
            format!(".sqlite-backup-1-2-{h}-abcDEF1234.gz"),
            format!(".sqlite-backup-1-2-{h}-abcDEF1234.db-journal2"),
            format!(".sqlite-backup-1-2-{h}-abc.db"),
            format!(".sqlite-backup-1-2-{h}-abcDEF1234-x.db"),
            format!(".sqlite-backup-1-x-{h}-abcDEF1234.db"),
            format!(".sqlite-backup--2-{h}-abcDEF1234.db"),
            ".sqlite-backup-1-2-ABCDEF12-abcDEF1234.db".to_string(),
            format!("sqlite-backup-1-2-{h}-abcDEF1234.db"),
            format!(".sqlite-backup-99999999999999999999999-2-{h}-abcDEF1234.db"),
            "app.db".to_string(),
        ] {
            assert_eq!(parse_name(&other), None, "{other}");
        }
    }

    #[test]
    fn created_names_record_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let temp = named(dir.path(), Ext::Snapshot).unwrap();
        let file_name = temp.path().file_name().unwrap().to_str().unwrap();
        assert_eq!(parse_name(file_name), Some(me()), "{file_name}");
        let mode = temp.as_file().metadata().unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn dropping_removes_the_file_and_what_sqlite_left_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let temp = named(dir.path(), Ext::Db).unwrap();
        for suffix in SIDECARS {
            fs::write(format!("{}{suffix}", temp.path().display()), b"x").unwrap();
        }
        drop(temp);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// The sweep removes exactly the files of dead owners: never a live one's, never a name
    /// of another form, another machine's, a symlink, a directory or another user's file.
    #[test]
    fn sweep_removes_only_what_dead_owners_left() {
        let dir = tempfile::tempdir().unwrap();
        let me = me();
        let dead_pid = Owner {
            pid: 4_000_000_000, // above any pid_max
            ..me.clone()
        };
        let reused_pid = Owner {
            start: me.start + 1,
            ..me.clone()
        };
        let elsewhere = Owner {
            host: if me.host == "00000000" {
                "11111111"
            } else {
                "00000000"
            }
            .into(),
            ..dead_pid.clone()
        };
        let gone = [
            name(&dead_pid, "snapshot"),
            name(&dead_pid, "snapshot-journal"),
            name(&reused_pid, "db"),
            name(&reused_pid, "db-wal"),
            name(&reused_pid, "db-shm"),
            name(&dead_pid, "tmp"),
        ];
        let mut kept = vec![
            name(&me, "snapshot"),
            name(&me, "snapshot-journal"),
            name(&elsewhere, "db"),
            ".sqlite-backup-abcDEF.snapshot".to_string(),
            "app.db".to_string(),
        ];
        for n in gone.iter().chain(&kept) {
            fs::write(dir.path().join(n), b"x").unwrap();
        }
        let link = name(&dead_pid, "db");
        std::os::unix::fs::symlink(dir.path().join("app.db"), dir.path().join(&link)).unwrap();
        let subdir = name(&dead_pid, "db-journal");
        fs::create_dir(dir.path().join(&subdir)).unwrap();
        kept.extend([link, subdir]);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let foreign = dir.path().join(name(&reused_pid, "snapshot"));
            fs::write(&foreign, b"x").unwrap();
            std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
            kept.push(name(&reused_pid, "snapshot"));
        }

        assert_eq!(sweep(dir.path()), gone.len());
        let mut left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        kept.sort();
        assert_eq!(left, kept);
        assert_eq!(sweep(dir.path()), 0);
        assert_eq!(sweep(Path::new("/nonexistent/dir")), 0);
    }

    #[test]
    fn staged_file_has_no_name_until_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("b.gz");
        let mut staged = Staged::create(dir.path()).unwrap();
        // Where the file system has O_TMPFILE (not overlayfs before Linux 6.7, say).
        if matches!(staged, Staged::Unnamed(_)) {
            assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        }
        staged.write_all(b"new").unwrap();
        staged.persist(&dest, false).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new");
        let mode = fs::metadata(&dest).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);

        // No overwrite: the existing file stays, nothing else appears.
        let mut staged = Staged::create(dir.path()).unwrap();
        staged.write_all(b"newer").unwrap();
        let err = staged.persist(&dest, false).unwrap_err();
        assert_eq!(err.kind, Kind::Exists);
        assert_eq!(fs::read(&dest).unwrap(), b"new");

        // Overwrite: replaced, and the temp name used for the rename is gone.
        let mut staged = Staged::create(dir.path()).unwrap();
        staged.write_all(b"newest").unwrap();
        staged.persist(&dest, true).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"newest");

        // Dropped: nothing left.
        let mut staged = Staged::create(dir.path()).unwrap();
        staged.write_all(b"lost").unwrap();
        drop(staged);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn named_fallback_persists_the_same_way() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("b.gz");
        fs::write(&dest, b"old").unwrap();
        let mut staged = Staged::Named(named(dir.path(), Ext::Upload).unwrap());
        staged.write_all(b"new").unwrap();
        assert_eq!(staged.persist(&dest, false).unwrap_err().kind, Kind::Exists);
        let mut staged = Staged::Named(named(dir.path(), Ext::Upload).unwrap());
        staged.write_all(b"new").unwrap();
        staged.persist(&dest, true).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
