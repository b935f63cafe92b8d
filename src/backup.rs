//! One backup, start to end: snapshot → sha256 → (skip if unchanged) → compress → store.
//! The same pipeline serves every store; the store decides how bytes land atomically.

use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::codec::{self, Codec};
use crate::dbfile;
use crate::error::{Error, Kind, Result};
use crate::ffi::Connection;
use crate::snapshot::{self, Method};
use crate::store::{PutMeta, Sha256Cell, Store, Stored};
use crate::threads::spawn_scoped;

/// What to back up and how; resolved from the options in `request.rs`.
#[derive(Debug, Clone)]
pub struct Request {
    pub schema: String,
    pub method: Option<Method>,
    pub busy_timeout_ms: u64,
    pub level: Option<i64>,
    pub threads: usize,
    pub temp_dir: PathBuf,
    /// The backup's time: names it and is recorded with it.
    pub time: DateTime<Utc>,
    /// Skip storing when the newest backup in `series` has the same sha256.
    pub if_changed: bool,
    pub create_only: bool,
    /// The names that belong to this backup series (for `if_changed`).
    pub series: crate::naming::Series,
    /// age recipients: set exactly when the name ends in `.age`.
    pub recipients: Option<std::sync::Arc<crate::crypt::Recipients>>,
    /// Decrypts the newest backup for `if_changed` in an encrypted series.
    pub identity_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub destination: String,
    pub method: &'static str,
    /// Why method `pages` was used instead of the default `vacuum`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
    pub compression: &'static str,
    /// Encrypted with age (the name ends in `.age`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
    /// Size of the uncompressed snapshot.
    pub bytes: u64,
    /// Size as stored (0 when skipped).
    pub stored_bytes: u64,
    pub sha256: String,
    pub page_size: u32,
    pub page_count: u64,
    pub elapsed_ms: u64,
    /// Where the time went: snapshot, hash, compress (and upload, overlapped), commit.
    pub timings_ms: Timings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    pub parts: u32,
    pub skipped: bool,
    /// When skipped: the backup that already holds this exact snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub same_as: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub snapshot: u64,
    pub hash: u64,
    pub compress: u64,
    pub commit: u64,
}

fn ms_since(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

pub fn run(conn: &Connection, store: &dyn Store, name: &str, req: &Request) -> Result<Report> {
    let started = Instant::now();
    let codec = Codec::for_name(crate::crypt::inner_name(name));
    let level = codec.level(req.level)?;
    let recipients = match (&req.recipients, crate::crypt::wanted(name)) {
        (Some(r), true) => Some(r.clone()),
        (None, false) => None,
        // request.rs pairs them; a mismatch must never store plaintext under `.age`.
        _ => {
            return Err(Error::usage(
                "recipients and a name ending in .age go together",
            ))
        }
    };
    // Everything that can be refused is refused before the snapshot, not after it.
    store.check_put(name, req.create_only)?;

    let snap = snapshot::take(
        conn,
        &req.schema,
        req.method,
        req.busy_timeout_ms,
        &req.temp_dir,
    )?;
    let mut timings = Timings {
        snapshot: ms_since(started),
        ..Timings::default()
    };
    let reopen = || {
        snap.file
            .reopen()
            .map_err(|e| Error::io("cannot read the snapshot", e))
    };
    let mut report = Report {
        destination: store.url(name),
        method: snap.method.name(),
        fallback: snap.fallback.clone(),
        compression: codec.name(),
        encrypted: recipients.is_some(),
        bytes: snap.bytes,
        stored_bytes: 0,
        sha256: String::new(),
        page_size: snap.page_size,
        page_count: snap.page_count,
        elapsed_ms: 0,
        timings_ms: Timings::default(),
        etag: None,
        parts: 0,
        skipped: false,
        same_as: None,
    };

    // With if_changed the hash comes first: an unchanged database is skipped without
    // compressing anything. Otherwise it is computed on another thread beside compression,
    // and only a store that needs it early (S3 metadata) waits for it.
    let sha256 = Sha256Cell::default();
    if req.if_changed {
        crate::progress::phase("hashing", None);
        let step = Instant::now();
        let hex = dbfile::sha256_reader(&mut reopen()?, "the snapshot")?;
        timings.hash = ms_since(step);
        let identity = req.identity_file.as_deref();
        if let Some(same) = newest_with_same_content(store, &req.series, &hex, identity)? {
            report.sha256 = hex;
            report.skipped = true;
            report.same_as = Some(same);
            report.elapsed_ms = ms_since(started);
            report.timings_ms = timings;
            return Ok(report);
        }
        sha256.set(Ok(hex));
    }
    let meta = PutMeta {
        // An encrypted backup's plaintext hash would let whoever reads the bucket test a
        // guess of its content: the store gets an empty one, which it does not record.
        sha256: if recipients.is_some() {
            crate::store::Sha256Cell::ready(String::new())
        } else {
            sha256.clone()
        },
        backup_time: req.time,
        create_only: req.create_only,
        temp_dir: req.temp_dir.clone(),
    };

    let step = Instant::now();
    let mut file = reopen()?;
    let hash_file = reopen()?;
    let snapshot_file = snap.file;
    // Set when compression fails (or is interrupted): the hash is then not needed, and the
    // call should not wait for the rest of the file to be read.
    let stop_hashing = std::sync::atomic::AtomicBool::new(false);
    let (stored, count) = std::thread::scope(|scope| -> Result<(Stored, u64)> {
        let hasher = (!sha256.is_ready()).then(|| {
            let cell = sha256.clone();
            let stop = &stop_hashing;
            let mut hash_file = StopReader {
                inner: hash_file,
                stop,
            };
            spawn_scoped(scope, "backup-sha256", move || {
                let started = Instant::now();
                // Whatever happens, the cell gets a value: an upload may be waiting on it.
                let hashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    dbfile::sha256_reader(&mut hash_file, "the snapshot")
                }))
                .unwrap_or_else(|_| Err(Error::new(Kind::Io, "hashing the snapshot failed")));
                cell.set(hashed);
                ms_since(started)
            })
        });
        // Nothing is stored yet: a hasher that cannot start is a plain error.
        let hasher = hasher.transpose()?;
        let upload = store.put(name, &meta)?;
        let mut counted = CountingWriter {
            inner: upload,
            count: 0,
        };
        let mut metered = Metered {
            inner: &mut file,
            meter: crate::progress::phase("compressing and storing", Some(snap.bytes)),
        };
        let compressed = match &recipients {
            None => codec::compress(&mut metered, &mut counted, codec, level, req.threads),
            Some(r) => crate::crypt::encrypt(r, &mut counted).and_then(|mut sealed| {
                let read = codec::compress(&mut metered, &mut sealed, codec, level, req.threads)?;
                // The last chunk and its tag: without them the file does not decrypt.
                sealed
                    .finish()
                    .map_err(|e| Error::io("cannot finish encryption", e))?;
                Ok(read)
            }),
        };
        let CountingWriter {
            inner: upload,
            count,
        } = counted;
        if let Err(e) = compressed {
            stop_hashing.store(true, std::sync::atomic::Ordering::SeqCst);
            upload.abort();
            return Err(e);
        }
        // The snapshot is read: remove it while the store commits (freeing a big file's pages
        // takes a moment). The scope joins this thread, so it is gone when we return. If no
        // thread can start, the closure is dropped at once, and the files with it.
        let _ = spawn_scoped(scope, "backup-unlink", move || drop((snapshot_file, file)));
        timings.compress = ms_since(step);
        // The last moment an interrupt can still leave nothing behind.
        if let Err(e) = crate::interrupt::check() {
            stop_hashing.store(true, std::sync::atomic::Ordering::SeqCst);
            upload.abort();
            return Err(e);
        }
        let step = Instant::now();
        crate::progress::phase("committing", None);
        let stored = upload.commit()?;
        timings.commit = ms_since(step);
        if let Some(ms) = hasher.and_then(|h| h.join().ok()) {
            timings.hash = ms;
        }
        Ok((stored, count))
    })?;
    report.sha256 = sha256.wait()?;
    report.destination = stored.url;
    report.stored_bytes = count;
    report.etag = stored.etag;
    report.parts = stored.parts;
    report.elapsed_ms = ms_since(started);
    report.timings_ms = timings;
    Ok(report)
}

/// The newest backup in the series, if its content equals `sha256`. Stores that record the
/// hash (S3 metadata) answer at once; for the others the newest backup is decompressed and
/// hashed, which costs a read but never a wrong skip.
pub(crate) fn newest_with_same_content(
    store: &dyn Store,
    series: &crate::naming::Series,
    sha256: &str,
    identity: Option<&std::path::Path>,
) -> Result<Option<String>> {
    let Some(newest) = crate::retention::newest(series.select(store.list()?)) else {
        return Ok(None);
    };
    let stored_sha = match newest.sha256.clone() {
        Some(s) => s,
        None => match content_sha256(store, &newest.name, identity) {
            Ok(s) => s,
            // An unreadable previous backup is no reason to skip this one.
            Err(_) => return Ok(None),
        },
    };
    Ok((stored_sha == sha256).then_some(newest.url))
}

/// sha256 of a stored backup's decompressed content.
pub fn content_sha256(
    store: &dyn Store,
    name: &str,
    identity: Option<&std::path::Path>,
) -> Result<String> {
    let url = store.url(name);
    let (_, plain) = crate::crypt::open(store.get(name)?, identity, &url)?;
    let (_, mut reader) = codec::decoder(plain)?;
    dbfile::sha256_reader(&mut reader, &store.url(name))
}

/// A reader that fails once `stop` is set.
struct StopReader<'a, R> {
    inner: R,
    stop: &'a std::sync::atomic::AtomicBool,
}

impl<R: io::Read> io::Read for StopReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(io::Error::other("the backup stopped"));
        }
        self.inner.read(buf)
    }
}

/// Counts what compression reads (on its reader thread) for the progress line.
struct Metered<R> {
    inner: R,
    meter: crate::progress::Meter,
}

impl<R: io::Read> io::Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.add(n as u64);
        Ok(n)
    }
}

struct CountingWriter<W> {
    inner: W,
    count: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Compression writes from the calling thread: the one that may ask about interrupts.
        crate::interrupt::check().map_err(Error::into_io)?;
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
