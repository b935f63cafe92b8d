//! Backups in a local directory. Writes are atomic: a file with no name yet in the destination
//! directory (`temp::Staged`), fsync, then its name (over the destination only when allowed),
//! fsync the directory. An error, a crash or a kill at any point leaves the previous backup
//! whole and no temp file behind.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};

use super::{Entry, PutMeta, Store, Stored, Upload};
use crate::error::{Error, Kind, Result};
use crate::temp::Staged;

pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// A store over an existing directory. A missing directory is an error, not created: a typo
    /// in a cron line should fail loudly rather than back up somewhere unexpected.
    pub fn open(dir: &Path) -> Result<FileStore> {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        match fs::metadata(dir) {
            Ok(m) if m.is_dir() => Ok(FileStore {
                dir: dir.to_path_buf(),
            }),
            Ok(_) => Err(Error::usage(format!(
                "{} is not a directory",
                dir.display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::new(
                Kind::NotFound,
                format!(
                    "directory {} does not exist: create it first",
                    dir.display()
                ),
            )),
            Err(e) => Err(Error::io(format!("cannot open {}", dir.display()), e)),
        }
    }

    /// The path of `name`: bare (`app.db.gz`, not `./app.db.gz`) in the current directory,
    /// so results show the path the user wrote.
    pub fn path(&self, name: &str) -> PathBuf {
        if self.dir == Path::new(".") {
            PathBuf::from(name)
        } else {
            self.dir.join(name)
        }
    }

    fn entry(&self, name: &str, meta: &fs::Metadata) -> Entry {
        let modified: DateTime<Utc> = meta
            .modified()
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(|_| DateTime::<Utc>::UNIX_EPOCH);
        Entry {
            name: name.to_string(),
            url: self.url(name),
            size: meta.len(),
            modified,
            sha256: None,
        }
    }
}

/// What a non-regular file is, for messages ("a directory", "a FIFO", ...).
pub fn kind_of(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if let Some(special) = unix_kind(&t) {
        special
    } else if t.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// The file types only Unix has in its file system.
#[cfg(unix)]
fn unix_kind(t: &fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        None
    }
}

#[cfg(not(unix))]
fn unix_kind(_t: &fs::FileType) -> Option<&'static str> {
    None
}

/// Opens `path` to read, non-blocking on Unix so that a FIFO put in a backup's place cannot
/// hang the caller (a plain file reads as usual).
#[cfg(unix)]
fn open_to_read(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// Opens `path` to read (Windows has no FIFOs among files: named pipes live in `\\.\pipe\`).
#[cfg(not(unix))]
fn open_to_read(path: &Path) -> io::Result<File> {
    File::open(path)
}

struct FileUpload {
    temp: Staged,
    dest: PathBuf,
    url: String,
    meta: PutMeta,
}

impl Write for FileUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.temp.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.temp.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.temp.flush()
    }
}

impl Upload for FileUpload {
    fn commit(self: Box<Self>) -> Result<Stored> {
        let FileUpload {
            temp,
            dest,
            url,
            meta,
        } = *self;
        // The file's mtime is the backup's time, so retention by age works on the same clock
        // that named it (and an injected clock in tests gives made-up ages).
        let _ = temp
            .as_file()
            .set_modified(std::time::SystemTime::from(meta.backup_time));
        temp.persist(&dest, !meta.create_only)?;
        Ok(Stored {
            url,
            etag: None,
            parts: 1,
        })
    }

    fn abort(self: Box<Self>) {
        // Dropping the unnamed file frees it (a named fallback is removed).
    }
}

impl Store for FileStore {
    fn url(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn check_put(&self, name: &str, create_only: bool) -> Result<()> {
        let dest = self.path(name);
        match fs::symlink_metadata(&dest) {
            Ok(_) if create_only => Err(Error::new(
                Kind::Exists,
                format!("{} already exists and create_only is set", dest.display()),
            )),
            // A backup replaces only a file (or a link, not what it points to).
            Ok(m) if m.is_file() || m.file_type().is_symlink() => Ok(()),
            Ok(m) => Err(Error::usage(format!(
                "{} is {}: give the name of a backup file",
                dest.display(),
                kind_of(&m)
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidFilename => Err(Error::usage(format!(
                "the name '{name}' is too long for the file system of {} ({} bytes): \
                 use a shorter pattern",
                self.dir.display(),
                name.len()
            ))),
            Err(e) => Err(Error::io(format!("cannot write {}", dest.display()), e)),
        }
    }

    fn put(&self, name: &str, meta: &PutMeta) -> Result<Box<dyn Upload + '_>> {
        let dest = self.path(name);
        let temp = Staged::create(&self.dir)?;
        Ok(Box::new(FileUpload {
            temp,
            url: self.url(name),
            dest,
            meta: meta.clone(),
        }))
    }

    fn get(&self, name: &str) -> Result<Box<dyn Read + Send + '_>> {
        let path = self.path(name);
        let file = File::open(&path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
            return Err(Error::usage(format!("{} is a directory", path.display())));
        }
        Ok(Box::new(io::BufReader::with_capacity(1 << 20, file)))
    }

    fn read_tail(&self, name: &str, _size: u64, limit: u64) -> Result<Vec<u8>> {
        let path = self.path(name);
        let context = || format!("cannot read {}", path.display());
        let mut file = File::open(&path).map_err(|e| Error::io(context(), e))?;
        let len = file.metadata().map_err(|e| Error::io(context(), e))?.len();
        io::Seek::seek(&mut file, io::SeekFrom::Start(len.saturating_sub(limit)))
            .map_err(|e| Error::io(context(), e))?;
        let mut tail = Vec::new();
        file.take(limit)
            .read_to_end(&mut tail)
            .map_err(|e| Error::io(context(), e))?;
        Ok(tail)
    }

    fn head(&self, name: &str) -> Result<Option<Entry>> {
        match fs::metadata(self.path(name)) {
            Ok(m) if m.is_file() => Ok(Some(self.entry(name, &m))),
            // Reading a FIFO or a device would hang or never end; a directory holds backups.
            Ok(m) => Err(Error::usage(format!(
                "{} is {}, not a backup file",
                self.url(name),
                kind_of(&m)
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("cannot read {}", self.url(name)), e)),
        }
    }

    fn list(&self) -> Result<Vec<Entry>> {
        let context = || format!("cannot list {}", self.dir.display());
        let mut entries = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(|e| Error::io(context(), e))? {
            let item = item.map_err(|e| Error::io(context(), e))?;
            let Some(name) = item.file_name().to_str().map(str::to_string) else {
                continue; // not UTF-8: not a name we could have written
            };
            // Hidden files include our own temp files and in-progress writes.
            if name.starts_with('.') {
                continue;
            }
            let meta = item.metadata().map_err(|e| Error::io(context(), e))?;
            if meta.is_file() {
                entries.push(self.entry(&name, &meta));
            }
        }
        Ok(entries)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        fs::remove_file(&path)
            .map_err(|e| Error::io(format!("cannot delete {}", path.display()), e))
    }

    fn read_head(&self, name: &str, limit: u64) -> Result<Box<dyn Read + Send + '_>> {
        let path = self.path(name);
        let file = open_to_read(&path)
            .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
        if !file.metadata().is_ok_and(|m| m.is_file()) {
            return Err(Error::usage(format!("{} is not a file", path.display())));
        }
        Ok(Box::new(file.take(limit)))
    }

    fn local_path(&self, name: &str) -> Option<PathBuf> {
        Some(self.path(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(create_only: bool) -> PutMeta {
        PutMeta {
            sha256: crate::store::Sha256Cell::ready("00".into()),
            backup_time: Utc::now(),
            create_only,
            temp_dir: std::env::temp_dir(),
        }
    }

    #[test]
    fn upload_is_invisible_until_commit_and_abort_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("b.gz"), b"old").unwrap();

        let mut up = store.put("b.gz", &meta(false)).unwrap();
        up.write_all(b"new").unwrap();
        assert_eq!(fs::read(dir.path().join("b.gz")).unwrap(), b"old");
        up.abort();
        assert_eq!(fs::read(dir.path().join("b.gz")).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let mut up = store.put("b.gz", &meta(false)).unwrap();
        up.write_all(b"new").unwrap();
        let stored = up.commit().unwrap();
        assert_eq!(stored.parts, 1);
        assert_eq!(fs::read(dir.path().join("b.gz")).unwrap(), b"new");
        assert_eq!(store.list().unwrap().len(), 1);
    }

    #[test]
    fn create_only_refuses_existing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        fs::write(dir.path().join("b.gz"), b"old").unwrap();
        let err = store.check_put("b.gz", true).err().unwrap();
        assert_eq!(err.kind, Kind::Exists);
        store.check_put("b.gz", false).unwrap();
        store.check_put("new.gz", true).unwrap();
    }

    #[test]
    fn missing_directory_is_not_found() {
        let err = FileStore::open(Path::new("/nonexistent/dir"))
            .err()
            .unwrap();
        assert_eq!(err.kind, Kind::NotFound);
        assert!(err.message.contains("create it first"));
    }

    #[test]
    fn reading_the_head_of_a_fifo_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("db-01.gz");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let store = FileStore::open(dir.path()).unwrap();
        // No writer ever opens it: a blocking open would hang here.
        let err = store.read_head("db-01.gz", 16).err().unwrap();
        assert!(err.message.contains("is not a file"), "{}", err.message);
    }
}
