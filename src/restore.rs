//! Putting a backup back: into a file (atomically, never over an existing file unless asked,
//! only ever over a regular file, keeping its owner and mode) or into the calling connection
//! with the online backup API.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Kind, Result};
use crate::ffi::{Connection, OpenMode};
use crate::store::file::kind_of;
use crate::store::Store;
use crate::temp::{parent_dir, persist};
use crate::verify::{self, Report as VerifyReport};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub restored: String,
    #[serde(flatten)]
    pub verified: VerifyReport,
}

/// What restore_backup did: restored, or (`if_missing`, `missing_ok`) nothing, and why.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Outcome {
    Restored(Report),
    Skipped { restored: bool, reason: String },
}

impl Outcome {
    pub fn skipped(reason: impl Into<String>) -> Outcome {
        Outcome::Skipped {
            restored: false,
            reason: reason.into(),
        }
    }
}

/// Restores `name` to the file `dest`. The backup is checked before anything is replaced.
pub fn to_file(
    store: &dyn Store,
    name: &str,
    dest: &Path,
    overwrite: bool,
    quick: bool,
    caller: &Connection,
    identity: Option<&Path>,
) -> Result<Report> {
    let dir = parent_dir(dest);
    if !dir.is_dir() {
        return Err(Error::new(
            Kind::NotFound,
            format!(
                "directory {} does not exist: create it first",
                dir.display()
            ),
        ));
    }
    let replaced = destination(dest)?;
    if replaced.is_some() && !overwrite {
        return Err(exists(dest));
    }
    // A journal or WAL beside the destination belongs to the old database; SQLite would
    // replay it into the restored file and corrupt it.
    for suffix in ["-wal", "-journal"] {
        let side = Path::new(&format!("{}{suffix}", dest.display())).to_path_buf();
        if side.exists() {
            return Err(Error::usage(format!(
                "{} exists: a program may still have {} open. Stop it and remove the file, \
                 or restore into the open connection with restore_backup(location)",
                side.display(),
                dest.display()
            )));
        }
    }
    let checked = verify::fetch_checked(store, name, dir, quick, Some(caller), identity)?;
    set_owner_and_mode(checked.file.as_file(), replaced.as_ref(), dest)?;
    crate::interrupt::check()?;
    still_the_same(dest, replaced.as_ref())?;
    // Where there was no file, none is replaced: something that appeared meanwhile stays.
    persist(checked.file, dest, replaced.is_some()).map_err(|e| match e.kind {
        Kind::Exists if overwrite => changed(dest),
        Kind::Exists => exists(dest),
        _ => e,
    })?;
    Ok(Report {
        restored: dest.display().to_string(),
        verified: checked.report,
    })
}

fn exists(dest: &Path) -> Error {
    Error::new(
        Kind::Exists,
        format!(
            "{} already exists: pass '{{\"overwrite\": true}}' to replace it",
            dest.display()
        ),
    )
}

/// The regular file a restore replaces: its owner and mode, which the restored file gets, and
/// its identity, to make sure it is still the same file just before the rename.
#[derive(Debug)]
struct Replaced {
    id: FileId,
    // Read only where there is something to keep (Unix, `set_owner_and_mode`).
    #[cfg_attr(not(unix), allow(dead_code))]
    access: Access,
}

/// Tells a file from another put in its place: device and inode.
#[cfg(unix)]
#[derive(Debug, PartialEq)]
struct FileId {
    dev: u64,
    ino: u64,
}

#[cfg(unix)]
fn file_id(meta: &fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    }
}

/// Tells a file from another put in its place where std has no stable file index (Windows):
/// size and modification time, so a file replaced or written meanwhile shows; a copy with the
/// same size and time does not.
#[cfg(not(unix))]
#[derive(Debug, PartialEq)]
struct FileId {
    len: u64,
    modified: Option<std::time::SystemTime>,
}

#[cfg(not(unix))]
fn file_id(meta: &fs::Metadata) -> FileId {
    FileId {
        len: meta.len(),
        modified: meta.modified().ok(),
    }
}

/// The owner, group and mode a restored file keeps (Unix).
#[cfg(unix)]
#[derive(Debug)]
struct Access {
    uid: u32,
    gid: u32,
    mode: u32,
}

#[cfg(unix)]
fn access_of(meta: &fs::Metadata) -> Access {
    use std::os::unix::fs::MetadataExt;
    Access {
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode() & 0o7777,
    }
}

/// Nothing to keep elsewhere: Windows has ACLs, not owner and mode bits (see
/// `set_owner_and_mode`).
#[cfg(not(unix))]
#[derive(Debug)]
struct Access;

#[cfg(not(unix))]
fn access_of(_meta: &fs::Metadata) -> Access {
    Access
}

/// What `dest` is now: nothing (a new file is created) or a regular file to replace. Anything
/// else is refused, overwrite or not: a database renamed over /dev/null, a FIFO or a socket
/// breaks whatever uses it, and a symlink would be replaced rather than its target.
fn destination(dest: &Path) -> Result<Option<Replaced>> {
    let meta = match fs::symlink_metadata(dest) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot read {}", dest.display()), e)),
    };
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(Some(Replaced {
            id: file_id(&meta),
            access: access_of(&meta),
        }));
    }
    if kind.is_dir() {
        return Err(Error::usage(format!(
            "{} is a directory: give the path of the database file to create",
            dest.display()
        )));
    }
    if kind.is_symlink() {
        // Name the file it leads to, so the user can pass that path if it is what they meant.
        let target = fs::canonicalize(dest)
            .or_else(|_| fs::read_link(dest).map(|link| parent_dir(dest).join(link)));
        let target = match target {
            Ok(target) => format!(" to {}", target.display()),
            Err(_) => String::new(),
        };
        return Err(Error::usage(format!(
            "{} is a symbolic link{target}: restore only replaces regular files; give the \
             path of the file itself",
            dest.display()
        )));
    }
    let what = kind_of(&meta);
    Err(Error::usage(format!(
        "{} is {what}, not a database file: restore only replaces regular files",
        dest.display()
    )))
}

/// A restored file keeps the owner, group and mode of the file it replaces (a root cron job
/// must not leave an application's database owned by root); a new file gets SQLite's 0644
/// less the umask. The temp file it is set on is private (0600) until then.
#[cfg(unix)]
fn set_owner_and_mode(file: &File, replaced: Option<&Replaced>, dest: &Path) -> Result<()> {
    use std::os::unix::fs::{fchown, MetadataExt, PermissionsExt};
    let mode = match replaced.map(|r| &r.access) {
        Some(old) => {
            let meta = file
                .metadata()
                .map_err(|e| Error::io("cannot read the restored file's owner", e))?;
            if (meta.uid(), meta.gid()) != (old.uid, old.gid) {
                fchown(file, Some(old.uid), Some(old.gid)).map_err(|e| {
                    let err = Error::io(
                        format!(
                            "cannot give the restored file the owner of {} (uid {}, gid {})",
                            dest.display(),
                            old.uid,
                            old.gid
                        ),
                        e,
                    );
                    Error::new(
                        err.kind,
                        format!("{}: restore as root or as that user", err.message),
                    )
                })?;
            }
            // After the chown, which clears set-user-ID and set-group-ID bits.
            old.mode
        }
        None => 0o644 & !umask(),
    };
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io("cannot set the restored file's permissions", e))
}

/// Windows: the restored file gets the ACL the directory gives new files, as a new file
/// does; owner and mode keeping is Unix only (README, restore_backup).
#[cfg(not(unix))]
fn set_owner_and_mode(_file: &File, _replaced: Option<&Replaced>, _dest: &Path) -> Result<()> {
    Ok(())
}

/// The process's umask, read without changing it (umask(2) only reads by setting, which would
/// race with other threads creating files); 022 where /proc does not say (Linux before 4.7).
#[cfg(unix)]
fn umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Umask:"))
                .and_then(|value| u32::from_str_radix(value.trim(), 8).ok())
        })
        .unwrap_or(0o022)
        & 0o777
}

/// Just before the rename: `dest` is still the regular file found at the start (or still
/// nothing), not a file swapped in while the backup was being checked.
fn still_the_same(dest: &Path, replaced: Option<&Replaced>) -> Result<()> {
    let now = match fs::symlink_metadata(dest) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(format!("cannot read {}", dest.display()), e)),
    };
    let same = match (replaced, &now) {
        (None, None) => true,
        (Some(old), Some(meta)) => meta.file_type().is_file() && file_id(meta) == old.id,
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(changed(dest))
    }
}

fn changed(dest: &Path) -> Error {
    Error::new(
        Kind::Exists,
        format!(
            "{} changed while the backup was being checked (replaced, removed or created by \
             someone else): nothing was restored; find out what changed it, then try again",
            dest.display()
        ),
    )
}

/// Restores `name` over `schema` of the calling connection, page by page.
#[allow(clippy::too_many_arguments)]
pub fn into_connection(
    conn: &Connection,
    schema: &str,
    store: &dyn Store,
    name: &str,
    busy_ms: u64,
    temp_dir: &Path,
    quick: bool,
    identity: Option<&Path>,
) -> Result<Report> {
    if !conn.autocommit()? {
        return Err(Error::usage(
            "a transaction is open on this connection: COMMIT or ROLLBACK first",
        ));
    }
    // Fails early, before any download, when the schema does not exist.
    conn.filename(schema)?;
    let checked = verify::fetch_checked(store, name, temp_dir, quick, Some(conn), identity)?;
    check_wal_page_size(conn, schema, checked.report.page_size)?;
    let source = Connection::open(checked.file.path(), OpenMode::ReadWrite)?;
    crate::progress::phase("restoring", None);
    conn.backup_from(schema, &source, "main", busy_ms)
        .map_err(|e| e.context(format!("cannot restore into '{schema}'")))?;
    Ok(Report {
        restored: schema.to_string(),
        verified: checked.report,
    })
}

/// The backup API cannot change the page size of a WAL database (SQLite then reports "attempt
/// to write a readonly database"): say what is wrong and how to get past it.
fn check_wal_page_size(conn: &Connection, schema: &str, backup_page_size: u32) -> Result<()> {
    let quoted = crate::ffi::quote_identifier(schema);
    // A locked database cannot answer yet: the copy below waits for it (busy_timeout_ms).
    let Ok(mode) = conn.query_value(&format!("PRAGMA {quoted}.journal_mode")) else {
        return Ok(());
    };
    let size: Option<u32> = conn
        .query_value(&format!("PRAGMA {quoted}.page_size"))
        .ok()
        .flatten()
        .and_then(|v| v.parse().ok());
    match (mode.as_deref(), size) {
        (Some(m), Some(size)) if m.eq_ignore_ascii_case("wal") && size != backup_page_size => {
            Err(Error::usage(format!(
                "cannot restore into '{schema}': it is a WAL database with page size {size} and \
                 the backup's page size is {backup_page_size}, which SQLite cannot change in WAL \
                 mode: run PRAGMA {schema}.journal_mode = DELETE first (and back to WAL after), \
                 or restore to a file with dest_path"
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("app.db");
        assert!(destination(&file).unwrap().is_none());
        fs::write(&file, b"x").unwrap();
        assert!(destination(&file).unwrap().is_some());

        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink("app.db", &link).unwrap();
        let err = destination(&link).unwrap_err();
        assert_eq!(err.kind, Kind::Usage);
        assert!(
            err.message.contains(&format!(
                "is a symbolic link to {}",
                fs::canonicalize(&file).unwrap().display()
            )),
            "{}",
            err.message
        );
        let dangling = dir.path().join("dangling.db");
        std::os::unix::fs::symlink("nowhere.db", &dangling).unwrap();
        let err = destination(&dangling).unwrap_err();
        assert!(err.message.contains("nowhere.db"), "{}", err.message);

        let socket = dir.path().join("app.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let err = destination(&socket).unwrap_err();
        assert!(err.message.contains("is a socket, not a database file"));
        let err = destination(dir.path()).unwrap_err();
        assert!(err.message.contains("is a directory"));
        let err = destination(Path::new("/dev/null")).unwrap_err();
        assert_eq!(
            err.message,
            "/dev/null is a character device, not a database file: restore only replaces \
             regular files"
        );
    }

    #[test]
    fn a_file_swapped_before_the_rename_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("app.db");
        fs::write(&dest, b"old").unwrap();
        let found = destination(&dest).unwrap();
        still_the_same(&dest, found.as_ref()).unwrap();
        // Another file renamed into its place (the inode changes).
        let other = dir.path().join("other");
        fs::write(&other, b"other").unwrap();
        fs::rename(&other, &dest).unwrap();
        let err = still_the_same(&dest, found.as_ref()).unwrap_err();
        assert!(err
            .message
            .contains("changed while the backup was being checked"));
        // Removed, or created where there was nothing.
        fs::remove_file(&dest).unwrap();
        assert!(still_the_same(&dest, found.as_ref()).is_err());
        still_the_same(&dest, None).unwrap();
        fs::write(&dest, b"new").unwrap();
        assert!(still_the_same(&dest, None).is_err());
    }

    #[test]
    fn umask_is_read_from_proc() {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("Umask:")).unwrap();
        let expected = u32::from_str_radix(line[6..].trim(), 8).unwrap();
        assert_eq!(umask(), expected);
    }
}
