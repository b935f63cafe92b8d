//! Putting a backup back: into a file (atomically, never over an existing file unless asked)
//! or into the calling connection with the online backup API.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Kind, Result};
use crate::ffi::{Connection, OpenMode};
use crate::store::file::parent_dir;
use crate::store::Store;
use crate::temp::persist;
use crate::verify::{self, Report as VerifyReport};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub restored: String,
    #[serde(flatten)]
    pub verified: VerifyReport,
}

/// Restores `name` to the file `dest`. The backup is checked before anything is replaced.
pub fn to_file(
    store: &dyn Store,
    name: &str,
    dest: &Path,
    overwrite: bool,
    quick: bool,
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
    if dest.is_dir() {
        return Err(Error::usage(format!(
            "{} is a directory: give the path of the database file to create",
            dest.display()
        )));
    }
    if dest.exists() && !overwrite {
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
    let checked = verify::fetch_checked(store, name, dir, quick)?;
    // Temp files are private (0600); a restored database gets the mode of the file it
    // replaces, or the usual 0644, so the application that opens it still can.
    let mode = fs::metadata(dest)
        .map(|m| m.permissions())
        .unwrap_or_else(|_| fs::Permissions::from_mode(0o644));
    fs::set_permissions(checked.file.path(), mode)
        .map_err(|e| Error::io("cannot set the restored file's permissions", e))?;
    persist(checked.file, dest, overwrite).map_err(|e| {
        if e.kind == Kind::Exists {
            exists(dest)
        } else {
            e
        }
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

/// Restores `name` over `schema` of the calling connection, page by page.
pub fn into_connection(
    conn: &Connection,
    schema: &str,
    store: &dyn Store,
    name: &str,
    busy_ms: u64,
    temp_dir: &Path,
    quick: bool,
) -> Result<Report> {
    if !conn.autocommit()? {
        return Err(Error::usage(
            "a transaction is open on this connection: COMMIT or ROLLBACK first",
        ));
    }
    // Fails early, before any download, when the schema does not exist.
    conn.filename(schema)?;
    let checked = verify::fetch_checked(store, name, temp_dir, quick)?;
    let source = Connection::open(checked.file.path(), OpenMode::ReadWrite)?;
    conn.backup_from(schema, &source, "main", busy_ms)
        .map_err(|e| e.context(format!("cannot restore into '{schema}'")))?;
    Ok(Report {
        restored: schema.to_string(),
        verified: checked.report,
    })
}
