//! Checking a stored backup: download (streaming), decompress by magic bytes into a temp file,
//! hash, confirm it is a SQLite database, run integrity_check. Restore reuses all of it.

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::codec::{self, Codec};
use crate::crypt;
use crate::dbfile;
use crate::error::{Error, Kind, Result};
use crate::ffi::Connection;
use crate::integrity;
use crate::store::Store;
use crate::temp::{self, NamedTemp};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub location: String,
    pub ok: bool,
    /// `ok`, or `partial` when the checking connection lacked a collation or function the
    /// schema uses: then `skipped` says what was not checked and why.
    pub integrity: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<integrity::Skipped>,
    /// `caller` (attached to the calling connection, with its definitions) or `separate`.
    pub checked_on: &'static str,
    pub compression: &'static str,
    /// Whether the backup was an age file, decrypted with identity_file.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
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

/// Downloads `name` from `store` into a temp file in `dir` and checks it. Any problem is an
/// error (a cron job's `sqlite3` must exit non-zero); the temp file never outlives a failure.
/// The check runs on `caller` (the connection the SQL function was called on) when it can, so
/// the application's own collations and functions are there (see `integrity`).
pub fn fetch_checked(
    store: &dyn Store,
    name: &str,
    dir: &Path,
    quick: bool,
    caller: Option<&Connection>,
    identity: Option<&Path>,
) -> Result<Checked> {
    let started = Instant::now();
    let url = store.url(name);
    let entry = store
        .head(name)?
        .ok_or_else(|| Error::new(Kind::NotFound, format!("there is no backup at {url}")))?;

    let mut counted = CountingReader {
        inner: store.get(name)?,
        count: 0,
        tail: Vec::new(),
    };
    let (encrypted, plain) = crypt::open(Box::new(&mut counted), identity, &url)?;
    let (codec, mut reader) = codec::decoder(plain)?;
    // The header first: a foreign file or a bomb of zeros stops here, before any real write.
    let head = read_head(&mut reader).map_err(|e| read_error(&url, codec, e))?;
    if crate::incremental::is_incremental(&head) {
        // An incremental backup: rebuilt from its chain, then checked like any other.
        drop(reader);
        let rebuilt = crate::incremental::rebuild(store, name, dir, identity)?;
        if let Some(expected) = entry.sha256.as_ref().filter(|e| **e != rebuilt.sha256) {
            return Err(Error::corrupt(format!(
                "{url} does not match its recorded sha256 (recorded {expected}, rebuilt {})",
                rebuilt.sha256
            )));
        }
        crate::progress::phase("checking integrity", None);
        let checked = integrity::check(rebuilt.file.path(), quick, &url, caller)?;
        return Ok(Checked {
            file: rebuilt.file,
            report: Report {
                location: url,
                ok: true,
                integrity: checked.integrity.to_string(),
                skipped: checked.skipped,
                checked_on: checked.checked_on,
                compression: rebuilt.codec.name(),
                encrypted,
                tables: checked.tables,
                page_size: rebuilt.page_size,
                page_count: rebuilt.bytes / u64::from(rebuilt.page_size.max(1)),
                bytes: rebuilt.bytes,
                stored_bytes: rebuilt.stored_bytes,
                sha256: rebuilt.sha256,
                elapsed_ms: started.elapsed().as_millis() as u64,
            },
        });
    }
    let header = dbfile::parse(&head).map_err(|p| not_a_database(&url, codec, p))?;
    let limit = header.limit(entry.size);
    let mut file = temp::named(dir, temp::Ext::Db)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    hasher.update(&head);
    file.write_all(&head)
        .map_err(|e| Error::io(format!("cannot write a temp file in {}", dir.display()), e))?;
    let mut bytes = head.len() as u64;
    let meter = crate::progress::phase("reading", header.declared);
    meter.add(bytes);
    loop {
        crate::interrupt::check()?;
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) => return Err(read_error(&url, codec, e)),
        };
        if n == 0 {
            break;
        }
        if bytes.saturating_add(n as u64) > limit {
            return Err(too_long(&url, codec, &header, limit));
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| Error::io(format!("cannot write a temp file in {}", dir.display()), e))?;
        bytes += n as u64;
        meter.add(n as u64);
    }
    drop(reader);
    let stored_bytes = counted.count;
    // The last bytes of the very body that was read (no second request, no other version).
    let trailer = crate::trailer::parse(&counted.tail);
    let sha256 = dbfile::hex(&hasher.finalize());
    file.as_file()
        .sync_all()
        .map_err(|e| Error::io("cannot sync the temp file", e))?;

    if let Some(declared) = header.declared.filter(|&d| bytes < d) {
        return Err(Error::corrupt(format!(
            "{url} is truncated: {bytes} bytes{}, but its header declares {declared}",
            decompressed(codec)
        )));
    }
    let page_size = header.page_size;
    if let Some(expected) = &entry.sha256 {
        if *expected != sha256 {
            return Err(Error::corrupt(format!(
                "{url} does not match its recorded sha256 (recorded {expected}, content {sha256})"
            )));
        }
    }
    // The trailer records the database the backup was made of: a backup that decompresses
    // but to something else (damaged, or spliced) is refused here, before it is restored.
    if let Some(trailer) = trailer {
        let expected = trailer.hex();
        if expected != sha256 || trailer.size != bytes {
            return Err(Error::corrupt(format!(
                "{url} does not match the sha256 its trailer records (recorded {expected} for \
                 {} bytes, content {sha256} for {bytes} bytes): the backup is damaged",
                trailer.size
            )));
        }
    }

    crate::progress::phase("checking integrity", None);
    let checked = integrity::check(file.path(), quick, &url, caller)?;
    Ok(Checked {
        file,
        report: Report {
            location: url,
            ok: true,
            integrity: checked.integrity.to_string(),
            skipped: checked.skipped,
            checked_on: checked.checked_on,
            compression: codec.name(),
            encrypted,
            tables: checked.tables,
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

/// Up to the first [`dbfile::LEN`] bytes (fewer only at the end of the stream).
fn read_head(reader: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(dbfile::LEN);
    reader.take(dbfile::LEN as u64).read_to_end(&mut head)?;
    Ok(head)
}

/// `" (after gzip decompression)"`, or nothing for an uncompressed backup.
fn after(codec: Codec) -> String {
    match codec {
        Codec::None => String::new(),
        c => format!(" (after {} decompression)", c.name()),
    }
}

/// `" after gzip decompression"`, or nothing for an uncompressed backup.
fn decompressed(codec: Codec) -> String {
    match codec {
        Codec::None => String::new(),
        c => format!(" after {} decompression", c.name()),
    }
}

fn not_a_database(url: &str, codec: Codec, problem: dbfile::Problem) -> Error {
    let how = after(codec);
    Error::corrupt(match problem {
        dbfile::Problem::NotSqlite => format!("{url} is not a SQLite database{how}"),
        dbfile::Problem::Empty => format!("{url} is not a SQLite database{how}: it is empty"),
        dbfile::Problem::Short(n) => format!(
            "{url} is not a SQLite database{how}: {n} bytes, shorter than a database header \
             ({} bytes)",
            dbfile::LEN
        ),
        dbfile::Problem::PageSize(size) => format!(
            "{url} is not a SQLite database{how}: its header gives an invalid page size ({size})"
        ),
    })
}

/// The stream went on past what the header allows: nothing past `limit` was written.
fn too_long(url: &str, codec: Codec, header: &dbfile::Header, limit: u64) -> Error {
    let via = decompressed(codec);
    Error::corrupt(match header.declared {
        Some(declared) => format!(
            "{url} has data after the database's end ({declared} bytes declared{}): two \
             backups concatenated?",
            if via.is_empty() {
                String::new()
            } else {
                format!(",{via}")
            }
        ),
        None => format!(
            "{url} is over {limit} bytes{via} (the bound when the header does not record the \
             database's size: {} times the stored size, at least {} MiB): refused as a \
             decompression bomb",
            dbfile::MAX_RATIO,
            dbfile::MIN_UNDECLARED >> 20
        ),
    })
}

/// Counts the stored bytes, and keeps the last of them: where a trailer would be.
struct CountingReader<R> {
    inner: R,
    count: u64,
    tail: Vec<u8>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        let read = buf.get(..n).unwrap_or_default();
        let keep = crate::trailer::TAIL_BYTES as usize;
        if read.len() >= keep {
            self.tail.clear();
            self.tail
                .extend_from_slice(read.get(read.len() - keep..).unwrap_or_default());
        } else {
            self.tail.extend_from_slice(read);
            let excess = self.tail.len().saturating_sub(keep);
            self.tail.drain(..excess);
        }
        Ok(n)
    }
}
