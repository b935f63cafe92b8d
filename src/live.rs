//! Files of live databases: what retention never deletes and a backup never replaces.
//!
//! Plain Rust over paths. The jobs (`job.rs`) list the calling connection's database files
//! (`PRAGMA database_list`, every schema) into a [`Protected`] set; retention and the
//! destination checks consult it, plus what the directory shows: a `-wal`, `-shm` or `-journal`
//! file is SQLite's own, and a file with one beside it is a database some program has open.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The files SQLite keeps beside a database while it is open or mid-transaction.
pub const SIDE_SUFFIXES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Whether `name` is a WAL, shared-memory or rollback journal name.
pub fn is_side_name(name: &str) -> bool {
    SIDE_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// `path` with `suffix` appended to its file name (`app.db` → `app.db-wal`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut text = path.as_os_str().to_owned();
    text.push(suffix);
    PathBuf::from(text)
}

/// The first side file that exists beside `path`, if any (a database in use).
pub fn side_file_beside(path: &Path) -> Option<PathBuf> {
    SIDE_SUFFIXES
        .iter()
        .map(|s| with_suffix(path, s))
        .find(|p| p.symlink_metadata().is_ok())
}

/// `path` with symbolic links and `..` resolved; for a file that does not exist yet, its
/// directory resolved and its name kept. `None` when even the directory cannot be resolved.
pub fn canonical(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = path.canonicalize() {
        return Some(p);
    }
    let name = path.file_name()?;
    let dir = crate::temp::parent_dir(path).canonicalize().ok()?;
    Some(dir.join(name))
}

/// The database files of one connection and their side files, canonical, each with what it is
/// (for messages and reports).
#[derive(Debug, Clone, Default)]
pub struct Protected {
    /// (canonical path, schema, side-file suffix or "" for the database itself)
    files: Vec<(PathBuf, String, &'static str)>,
    /// The schema being backed up, named as such in messages.
    source: Option<String>,
}

impl Protected {
    /// From `(schema, database file)` pairs, as `PRAGMA database_list` gives them; in-memory
    /// and temp databases (no file) are skipped by the caller.
    pub fn new<'a>(databases: impl IntoIterator<Item = (&'a str, &'a Path)>) -> Protected {
        let mut files = Vec::new();
        for (schema, file) in databases {
            let Some(db) = canonical(file) else { continue };
            for suffix in SIDE_SUFFIXES {
                files.push((with_suffix(&db, suffix), schema.to_string(), suffix));
            }
            files.push((db, schema.to_string(), ""));
        }
        Protected {
            files,
            source: None,
        }
    }

    /// Names `schema`'s file "the database being backed up" in messages.
    pub fn with_source(mut self, schema: &str) -> Protected {
        self.source = Some(schema.to_string());
        self
    }

    /// What `path` is, when it is one of the protected files.
    pub fn find(&self, path: &Path) -> Option<String> {
        let path = canonical(path)?;
        let (_, schema, suffix) = self.files.iter().find(|(p, _, _)| *p == path)?;
        Some(match *suffix {
            "" if self.source.as_ref() == Some(schema) => "the database being backed up".into(),
            "" => format!("database '{schema}' of this connection"),
            _ => format!("the {suffix} file of database '{schema}' of this connection"),
        })
    }
}

/// Refuses a destination that is one of the calling connection's database files or their side
/// files, or the side file of any existing database: writing there would corrupt a live one.
pub fn refuse_live_file(protected: &Protected, dest: &Path) -> Result<()> {
    if let Some(what) = protected.find(dest) {
        return Err(Error::usage(format!(
            "{} is {what}: choose another destination",
            dest.display()
        )));
    }
    let text = dest.as_os_str().to_string_lossy();
    for suffix in SIDE_SUFFIXES {
        let Some(base) = text.strip_suffix(suffix) else {
            continue;
        };
        if Path::new(base).symlink_metadata().is_ok() {
            return Err(Error::usage(format!(
                "{} is the {suffix} file of the database {base}: writing there would corrupt \
                 it; choose another destination",
                dest.display()
            )));
        }
    }
    Ok(())
}

/// Refuses to replace an existing file that has a `-wal`, `-shm` or `-journal` beside it: a
/// database that some program may have open.
pub fn refuse_in_use(dest: &Path) -> Result<()> {
    if dest.symlink_metadata().is_err() {
        return Ok(());
    }
    match side_file_beside(dest) {
        Some(side) => Err(Error::usage(format!(
            "{} is a database in use ({} exists beside it): choose another destination",
            dest.display(),
            side.display()
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn protects_every_file_of_the_connection_and_live_side_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let aux = dir.path().join("aux.db");
        fs::write(&db, b"x").unwrap();
        fs::write(&aux, b"x").unwrap();
        let protected = Protected::new([("main", db.as_path()), ("aux", aux.as_path())]);
        // Found through another spelling of the same path, side files whether or not they exist.
        let other = dir.path().join(".").join("aux.db-journal");
        assert!(protected
            .find(&other)
            .unwrap()
            .contains("-journal file of database 'aux'"));
        assert!(protected.find(&db).unwrap().contains("database 'main'"));
        let source = protected.clone().with_source("main").find(&db).unwrap();
        assert_eq!(source, "the database being backed up");
        assert!(protected.find(&dir.path().join("app.db.gz")).is_none());
        let err = refuse_live_file(&protected, &with_suffix(&db, "-wal")).unwrap_err();
        assert!(
            err.message.contains("choose another destination"),
            "{}",
            err.message
        );

        // Another program's database: its side file names are refused, and so is the file
        // itself while a side file exists.
        let other_db = dir.path().join("other.db");
        fs::write(&other_db, b"x").unwrap();
        assert!(refuse_live_file(&protected, &with_suffix(&other_db, "-shm")).is_err());
        assert!(refuse_live_file(&protected, &dir.path().join("none.db-wal")).is_ok());
        assert!(refuse_in_use(&other_db).is_ok());
        fs::write(with_suffix(&other_db, "-wal"), b"").unwrap();
        assert!(refuse_in_use(&other_db).is_err());
        assert!(refuse_in_use(&dir.path().join("new.db")).is_ok());
    }
}
