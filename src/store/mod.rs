//! Where backups live. One small interface, one module per storage; nothing here knows SQLite,
//! and nothing above it knows S3 or directories.

pub mod file;
pub mod s3;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use chrono::{DateTime, Utc};

use crate::error::{Error, Kind, Result};

/// One stored backup, as a listing sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Name relative to the store's location (a file name, or the key after the prefix).
    pub name: String,
    /// Full location of this backup (`/dir/name` or `s3://bucket/key`).
    pub url: String,
    /// Stored (compressed) size in bytes.
    pub size: u64,
    /// When the backup was taken: the recorded backup time when the store keeps one, else the
    /// modification time.
    pub modified: DateTime<Utc>,
    /// sha256 of the uncompressed snapshot, when the store recorded it.
    pub sha256: Option<String>,
}

/// The snapshot's sha256 (hex), possibly still being computed beside compression. A store that
/// records it before the upload ends (S3 metadata starts a multipart upload) waits for it;
/// a directory never asks.
#[derive(Debug, Clone, Default)]
pub struct Sha256Cell(Arc<(Mutex<HashSlot>, Condvar)>);

/// Empty until computed; then the hex digest, or why it could not be computed.
type HashSlot = Option<std::result::Result<String, String>>;

impl Sha256Cell {
    pub fn ready(hex: String) -> Sha256Cell {
        let cell = Sha256Cell::default();
        cell.set(Ok(hex));
        cell
    }

    pub fn set(&self, value: Result<String>) {
        let (slot, changed) = &*self.0;
        if let Ok(mut slot) = slot.lock() {
            *slot = Some(value.map_err(|e| e.message));
        }
        changed.notify_all();
    }

    pub fn is_ready(&self) -> bool {
        self.0 .0.lock().map(|s| s.is_some()).unwrap_or(true)
    }

    /// Blocks until the hash is known.
    pub fn wait(&self) -> Result<String> {
        let (slot, changed) = &*self.0;
        let mut guard = slot
            .lock()
            .map_err(|_| Error::new(Kind::Io, "the snapshot hash was lost"))?;
        loop {
            match guard.as_ref() {
                Some(Ok(hex)) => return Ok(hex.clone()),
                Some(Err(message)) => return Err(Error::new(Kind::Io, message.clone())),
                None => {
                    guard = changed
                        .wait(guard)
                        .map_err(|_| Error::new(Kind::Io, "the snapshot hash was lost"))?
                }
            }
        }
    }
}

/// What the pipeline knows about a backup before it stores it.
#[derive(Debug, Clone)]
pub struct PutMeta {
    /// sha256 of the uncompressed snapshot; empty when it is not to be recorded as metadata
    /// (an encrypted backup, or one whose trailer records it: see `trailer`).
    pub sha256: Sha256Cell,
    /// The backup's time (the clock used for its name).
    pub backup_time: DateTime<Utc>,
    /// Never replace an existing backup of the same name.
    pub create_only: bool,
    /// Where a store may spool data it cannot send yet (S3 parks parts here while the hash
    /// it must start the upload with is still being computed).
    pub temp_dir: PathBuf,
}

/// The result of a committed upload.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub url: String,
    pub etag: Option<String>,
    /// Number of requests the body went in: 1 for a single PUT or a file, N for multipart.
    pub parts: u32,
}

/// A backup being written. Bytes written are not visible under the name until `commit`;
/// `abort` (or dropping it) leaves any previous backup of that name untouched and nothing behind.
pub trait Upload: Write + Send {
    fn commit(self: Box<Self>) -> Result<Stored>;
    fn abort(self: Box<Self>);
}

/// A place that holds backups: a directory or an S3 prefix.
pub trait Store: Send + Sync {
    /// Full location of `name`, for results and messages (never carries credentials).
    fn url(&self, name: &str) -> String;
    /// Refuses, before any work, a backup that could not be stored under `name`: a name the
    /// store cannot hold, something that is not a backup in the way, or with `create_only`
    /// an existing backup. The commit still guards against a writer that gets there between.
    fn check_put(&self, name: &str, create_only: bool) -> Result<()>;
    fn put(&self, name: &str, meta: &PutMeta) -> Result<Box<dyn Upload + '_>>;
    /// Streams the stored bytes of `name`; memory stays bounded whatever its size.
    fn get(&self, name: &str) -> Result<Box<dyn Read + Send + '_>>;
    /// The entry for `name`, or `None` when it does not exist.
    fn head(&self, name: &str) -> Result<Option<Entry>>;
    /// Every backup below the location, in no particular order.
    fn list(&self) -> Result<Vec<Entry>>;
    fn delete(&self, name: &str) -> Result<()>;
    /// The first `limit` bytes of `name` at most, to tell a backup from a foreign file.
    fn read_head(&self, name: &str, limit: u64) -> Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(self.get(name)?.take(limit)))
    }
    /// The last `limit` bytes of `name` at most (`size`: its stored size, from a listing or
    /// `head`), for the trailer a backup ends with: one ranged read, not a download.
    fn read_tail(&self, name: &str, size: u64, limit: u64) -> Result<Vec<u8>> {
        // Stores without ranged reads: streamed through, keeping the last bytes only.
        let _ = size;
        let keep = limit as usize;
        let mut input = self.get(name)?;
        let mut tail = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = input
                .read(&mut buf)
                .map_err(|e| Error::io(format!("cannot read {}", self.url(name)), e))?;
            if n == 0 {
                return Ok(tail);
            }
            tail.extend_from_slice(buf.get(..n).unwrap_or_default());
            let excess = tail.len().saturating_sub(keep);
            tail.drain(..excess);
        }
    }
    /// The local file behind `name`, for stores that are directories.
    fn local_path(&self, _name: &str) -> Option<PathBuf> {
        None
    }
}

/// A location given by the user: a local path or an `s3://bucket/key` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File(std::path::PathBuf),
    S3 { bucket: String, key: String },
}

impl Location {
    pub fn parse(text: &str) -> Result<Location> {
        if text.is_empty() {
            return Err(Error::usage("the location is empty"));
        }
        if let Some(rest) = strip_prefix_ignore_case(text, "s3://") {
            let (bucket, key) = match rest.split_once('/') {
                Some((b, k)) => (b, k),
                None => (rest, ""),
            };
            check_bucket_name(bucket)?;
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
            });
        }
        if text.contains("://") {
            return Err(Error::usage(format!(
                "unsupported location '{text}': use a local path or s3://bucket/key"
            )));
        }
        Ok(Location::File(std::path::PathBuf::from(text)))
    }

    pub fn is_s3(&self) -> bool {
        matches!(self, Location::S3 { .. })
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// S3 bucket naming rules, checked up front so a typo is a clear error and not a 400 from the
/// server (or, worse, a request to a different host in virtual-hosted style).
pub fn check_bucket_name(bucket: &str) -> Result<()> {
    let ok_chars = bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let ok_ends = bucket
        .chars()
        .next()
        .zip(bucket.chars().last())
        .is_some_and(|(a, b)| a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric());
    if (3..=63).contains(&bucket.len()) && ok_chars && ok_ends {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "invalid bucket name '{bucket}': 3 to 63 lowercase letters, digits, '-' or '.', \
             starting and ending with a letter or digit"
        )))
    }
}

/// The store holding one backup (`/dir/name` or `s3://bucket/key`), and its name there.
pub fn open_backup(location: &str, s3: &s3::S3Options) -> Result<(Box<dyn Store>, String)> {
    match Location::parse(location)? {
        Location::File(path) => {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .filter(|_| !location.ends_with('/'))
                .ok_or_else(|| Error::usage(format!("'{location}' names no file")))?
                .to_string();
            Ok((
                Box::new(file::FileStore::open(crate::temp::parent_dir(&path))?),
                name,
            ))
        }
        Location::S3 { bucket, key } => {
            if key.is_empty() || key.ends_with('/') {
                return Err(Error::usage(format!(
                    "'{location}' names no object: use s3://bucket/path/to/backup.gz"
                )));
            }
            Ok((Box::new(s3::S3Store::open(&bucket, "", s3)?), key))
        }
    }
}

/// The store for a directory or an S3 prefix (`s3://bucket/prefix`), for listing and pruning.
pub fn open_location(location: &str, s3: &s3::S3Options) -> Result<Box<dyn Store>> {
    match Location::parse(location)? {
        Location::File(path) => Ok(Box::new(file::FileStore::open(&path)?)),
        Location::S3 { bucket, key } => Ok(Box::new(s3::S3Store::open(&bucket, &key, s3)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        assert_eq!(
            Location::parse("s3://my-bucket/a/b.gz").unwrap(),
            Location::S3 {
                bucket: "my-bucket".into(),
                key: "a/b.gz".into()
            }
        );
        assert_eq!(
            Location::parse("S3://bkt").unwrap(),
            Location::S3 {
                bucket: "bkt".into(),
                key: "".into()
            }
        );
        assert_eq!(
            Location::parse("/var/b.gz").unwrap(),
            Location::File("/var/b.gz".into())
        );
        assert!(Location::parse("http://x/y").is_err());
        assert!(Location::parse("s3://Bad_Bucket/x").is_err());
        assert!(Location::parse("").is_err());
    }
}
