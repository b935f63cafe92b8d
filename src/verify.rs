//! Checking a stored backup: download (streaming), decompress by magic bytes into a temp file,
//! hash, confirm it is a SQLite database, run integrity_check. Restore reuses all of it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::codec::{self, Codec};
use crate::error::{Error, Kind, Result};
use crate::ffi::{Connection, OpenMode};
use crate::snapshot;
use crate::store::Store;
use crate::temp::{self, NamedTemp};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub location: String,
    pub ok: bool,
    pub integrity: String,
    pub compression: &'static str,
    pub tables: u64,
    pub page_size: u32,
    pub page_count: u64,
    /// Size of the decompressed database.
    pub bytes: u64,
    pub stored_bytes: u64,
    pub sha256: String,
    pub elapsed_ms: u64,
}

/// A verified database in a temp file (removed on drop; by a later call after a kill), and
/// what was found.
pub struct Checked {
    pub file: NamedTemp,
    pub report: Report,
}

/// How many integrity errors to list in a failure message.
const ERRORS_SHOWN: usize = 5;

/// Downloads `name` from `store` into a temp file in `dir` and checks it. Any problem is an
/// error (a cron job's `sqlite3` must exit non-zero); the temp file never outlives a failure.
pub fn fetch_checked(store: &dyn Store, name: &str, dir: &Path, quick: bool) -> Result<Checked> {
    let started = Instant::now();
    let url = store.url(name);
    let entry = store
        .head(name)?
        .ok_or_else(|| Error::new(Kind::NotFound, format!("there is no backup at {url}")))?;

    let mut counted = CountingReader {
        inner: store.get(name)?,
        count: 0,
    };
    let (codec, mut reader) = codec::decoder(Box::new(&mut counted))?;
    let mut file = temp::named(dir, temp::Ext::Db)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) => return Err(read_error(&url, codec, e)),
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| Error::io(format!("cannot write a temp file in {}", dir.display()), e))?;
        bytes += n as u64;
    }
    drop(reader);
    let stored_bytes = counted.count;
    let sha256 = snapshot::hex(&hasher.finalize());
    file.as_file()
        .sync_all()
        .map_err(|e| Error::io("cannot sync the temp file", e))?;

    let page_size = check_header(file.as_file_mut(), &url, codec)?;
    if let Some(expected) = &entry.sha256 {
        if *expected != sha256 {
            return Err(Error::corrupt(format!(
                "{url} does not match its recorded sha256 (recorded {expected}, content {sha256})"
            )));
        }
    }

    let (integrity, tables) = check_database(file.path(), quick, &url)?;
    Ok(Checked {
        file,
        report: Report {
            location: url,
            ok: true,
            integrity,
            compression: codec.name(),
            tables,
            page_size,
            page_count: if page_size == 0 {
                0
            } else {
                bytes / page_size as u64
            },
            bytes,
            stored_bytes,
            sha256,
            elapsed_ms: started.elapsed().as_millis() as u64,
        },
    })
}

fn read_error(url: &str, codec: Codec, e: io::Error) -> Error {
    let err = Error::io(format!("cannot read {url}"), e);
    // A decoder failure means a damaged archive; transport errors keep their own kind.
    if codec != Codec::None && matches!(err.kind, Kind::Io) {
        Error::corrupt(format!(
            "{url} is not a readable {} archive (truncated or corrupt): {}",
            codec.name(),
            err.message
        ))
    } else {
        err
    }
}

/// The decompressed bytes must start with SQLite's header; returns the page size.
fn check_header(file: &mut File, url: &str, codec: Codec) -> Result<u32> {
    match snapshot::database_header(file).map_err(|e| Error::io("cannot read the temp file", e))? {
        Some(header) => Ok(snapshot::page_size(&header)),
        None => {
            let how = match codec {
                Codec::None => String::new(),
                c => format!(" (after {} decompression)", c.name()),
            };
            Err(Error::corrupt(format!(
                "{url} is not a SQLite database{how}"
            )))
        }
    }
}

/// Runs integrity_check (or quick_check) on a database file; returns ("ok", table count).
pub fn check_database(path: &Path, quick: bool, url: &str) -> Result<(String, u64)> {
    let conn = Connection::open(path, OpenMode::ReadWrite)?;
    let pragma = if quick {
        "quick_check"
    } else {
        "integrity_check"
    };
    let rows = conn
        .query(&format!("PRAGMA {pragma}({ERRORS_SHOWN})"))
        .map_err(|e| Error::corrupt(format!("{url}: {pragma} failed: {}", e.message)))?;
    let lines: Vec<String> = rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect();
    if lines != ["ok"] {
        return Err(Error::corrupt(format!(
            "{url} failed {pragma}: {}",
            lines.join("; ")
        )));
    }
    let tables = conn
        .query_value("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
        .map_err(|e| Error::corrupt(format!("{url}: cannot read the schema: {}", e.message)))?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok((String::from("ok"), tables))
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}
