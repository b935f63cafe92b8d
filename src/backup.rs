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
    /// Method `stream` in rollback-journal mode: bytes compression had not taken yet when the
    /// copy made them, set aside in an unnamed temp file instead of holding the read lock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spilled_bytes: Option<u64>,
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

impl Report {
    /// A backup's report before anything is stored: what is backed up, and how.
    pub(crate) fn begin(
        destination: String,
        method: Method,
        codec: Codec,
        encrypted: bool,
        bytes: u64,
        page_size: u32,
        page_count: u64,
    ) -> Report {
        Report {
            destination,
            method: method.name(),
            fallback: None,
            spilled_bytes: None,
            compression: codec.name(),
            encrypted,
            bytes,
            stored_bytes: 0,
            sha256: String::new(),
            page_size,
            page_count,
            elapsed_ms: 0,
            timings_ms: Timings::default(),
            etag: None,
            parts: 0,
            skipped: false,
            same_as: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub snapshot: u64,
    pub hash: u64,
    pub compress: u64,
    pub commit: u64,
}

pub(crate) fn ms_since(t: Instant) -> u64 {
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

    let mut method = req.method;
    if method.is_none() && stream_by_default(conn, &req.schema) {
        method = Some(Method::Stream);
    }
    let mut stream_fallback = None;
    if method == Some(Method::Stream) {
        let job = StreamJob {
            conn,
            store,
            name,
            req,
            codec,
            level,
            recipients: recipients.clone(),
            started,
        };
        // Page 1 predicted from the source's (no first pass); if the copy commits another
        // page 1 than predicted, nothing was stored: again with the first pass.
        let streamed = match stream(&job, true) {
            Err(e) if e.message.contains(crate::stream::PAGE1_CHANGED) => stream(&job, false),
            other => other,
        };
        match streamed? {
            Streamed::Done(report) => return Ok(*report),
            Streamed::Instead(why) => {
                stream_fallback = Some(why);
                method = None;
            }
        }
    }

    let snap = snapshot::take(
        conn,
        &req.schema,
        method,
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
        fallback: stream_fallback.or_else(|| snap.fallback.clone()),
        ..Report::begin(
            store.url(name),
            snap.method,
            codec,
            recipients.is_some(),
            snap.bytes,
            snap.page_size,
            snap.page_count,
        )
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
    // A .gz/.zst backup records the hash in its trailer, at the end: the store gets none to
    // wait for (S3 would hold parts back until it is known), unless it is known already.
    let in_trailer = !req.if_changed && crate::trailer::carried_by(codec);
    let meta = PutMeta {
        // An encrypted backup's plaintext hash would let whoever reads the bucket test a
        // guess of its content: the store gets an empty one, which it does not record.
        sha256: if recipients.is_some() || in_trailer {
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
        let compressed = compress(
            &mut metered,
            &mut counted,
            codec,
            level,
            req.threads,
            recipients.as_deref(),
        );
        // The hash comes from the other thread; a trailer records it after the last block.
        let compressed = compressed.and_then(|read| {
            if recipients.is_some() || !crate::trailer::carried_by(codec) {
                return Ok(read);
            }
            append_trailer(&mut counted, codec, &sha256.wait()?, read).map(|_| read)
        });
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

/// Method `stream` is the default where the copy can wait for compression without holding
/// anyone up: WAL databases (readers never block writers) and databases that are not a file
/// of the default VFS (memory, temp, memdb). A rollback-journal file keeps `vacuum`: there the
/// stream would have to spill what compression has not taken yet (see README).
pub(crate) fn stream_by_default(conn: &Connection, schema: &str) -> bool {
    if !crate::ffi::page_sink::available() {
        return false;
    }
    let Ok(path) = conn.filename(schema) else {
        return false;
    };
    let Some(path) = path else {
        return true;
    };
    if !matches!(conn.custom_vfs(schema), Ok(None)) {
        return true;
    }
    // Header bytes 18-19 are 2 in WAL mode (what the file says, whoever opened it).
    std::fs::File::open(&path)
        .ok()
        .and_then(|mut f| dbfile::database_header(&mut f).ok().flatten())
        .is_some_and(|h| h.get(18) == Some(&2))
}

struct StreamJob<'a> {
    conn: &'a Connection,
    store: &'a dyn Store,
    name: &'a str,
    req: &'a Request,
    codec: Codec,
    level: u32,
    recipients: Option<std::sync::Arc<crate::crypt::Recipients>>,
    started: Instant,
}

enum Streamed {
    Done(Box<Report>),
    /// Streaming would keep something it must not (free pages): why, for the fallback.
    Instead(String),
}

/// Method `stream`: the pages go from the backup API through the page sink and a bounded
/// pipe to compression on another thread, while the calling thread copies (it holds the
/// caller's connection, and is the one that may ask about interrupts).
fn stream(job: &StreamJob, predict: bool) -> Result<Streamed> {
    let req = job.req;
    let source = crate::stream::Source::open(job.conn, &req.schema, req.busy_timeout_ms)?;
    let instead = if source.is_own_file() {
        "VACUUM INTO"
    } else {
        "the page copy"
    };
    let crate::stream::Prepared {
        page1,
        header,
        free,
        tails,
    } = match source.prepare(predict, instead)? {
        Ok(prepared) => prepared,
        Err(why) => return Ok(Streamed::Instead(why)),
    };
    let first_pass_ms = ms_since(job.started);
    let mut timings = Timings::default();
    let bytes = u64::from(header.page_count) * header.page_size as u64;
    let mut report = Report {
        spilled_bytes: Some(0),
        ..Report::begin(
            job.store.url(job.name),
            Method::Stream,
            job.codec,
            job.recipients.is_some(),
            bytes,
            header.page_size as u32,
            u64::from(header.page_count),
        )
    };
    // The hash is known only once everything went through. `if_changed` needs it first: a
    // hash-only pass (no compression, nothing written) comes first then, in the same read
    // transaction. So does a raw backup to S3, whose hash only the metadata can carry (sent
    // before the upload starts). A .gz/.zst backup records it in its trailer, at the end: one
    // pass, the upload starting at once. (An encrypted backup records no hash at all.)
    let hash_first = hash_first(
        req.if_changed,
        job.store,
        job.name,
        job.recipients.is_some(),
        job.codec,
    );
    let mut first = None;
    if hash_first {
        crate::progress::phase("hashing", Some(bytes));
        let step = Instant::now();
        let hex = hash_pass(&source, &page1, &free, &tails)?;
        timings.hash = ms_since(step);
        if req.if_changed {
            let identity = req.identity_file.as_deref();
            if let Some(same) = newest_with_same_content(job.store, &req.series, &hex, identity)? {
                report.sha256 = hex;
                report.skipped = true;
                report.same_as = Some(same);
                report.spilled_bytes = None;
                timings.snapshot = first_pass_ms;
                report.elapsed_ms = ms_since(job.started);
                report.timings_ms = timings;
                return Ok(Streamed::Done(Box::new(report)));
            }
        }
        first = Some(hex);
    }
    let meta = PutMeta {
        // Empty: not recorded as metadata (a store that would wait for it does not).
        sha256: Sha256Cell::ready(
            first
                .clone()
                .filter(|_| job.recipients.is_none())
                .unwrap_or_default(),
        ),
        backup_time: req.time,
        create_only: req.create_only,
        temp_dir: req.temp_dir.clone(),
    };
    // WAL and memory databases let writers go on while we read: the copy waits for
    // compression. In rollback-journal mode our read lock blocks every writer: the copy never
    // waits, what compression has not taken yet goes to an unnamed temp file.
    let spill_dir = (source.is_own_file() && !header.wal).then(|| req.temp_dir.clone());
    let pipe = crate::stream::Pipe::new(crate::stream::PIPE_BYTES, spill_dir);
    let step = Instant::now();
    let upload = job.store.put(job.name, &meta)?;
    let meter = crate::progress::phase("compressing and storing", Some(bytes));
    let (codec, level, threads) = (job.codec, job.level, req.threads);
    let recipients = job.recipients.clone();
    let (streamed, compressed) = std::thread::scope(|scope| -> Result<_> {
        let reader = crate::stream::PipeReader::new(&pipe);
        let worker = spawn_scoped(scope, "backup-stream", move || {
            let mut input = HashingReader {
                inner: Metered {
                    inner: reader,
                    meter,
                },
                hasher: <sha2::Sha256 as sha2::Digest>::new(),
            };
            let mut counted = CountingWriter {
                inner: upload,
                count: 0,
            };
            let result = compress(
                &mut input,
                &mut counted,
                codec,
                level,
                threads,
                recipients.as_deref(),
            );
            let hex = dbfile::hex(&sha2::Digest::finalize(input.hasher));
            let result = result.and_then(|read| {
                if recipients.is_none() {
                    append_trailer(&mut counted, codec, &hex, read)?;
                }
                Ok(read)
            });
            (result, counted, hex)
        })?;
        source.stream_to(&page1, &free, &tails, &pipe, worker)
    })?;
    let (compressed, counted, hex) = compressed;
    let CountingWriter {
        inner: upload,
        count,
    } = counted;
    let copy_ms = match (streamed, compressed) {
        (Err(e), _) | (Ok(_), Err(e)) => {
            upload.abort();
            return Err(e);
        }
        (Ok(ms), Ok(read)) if read == bytes => ms,
        (Ok(_), Ok(read)) => {
            upload.abort();
            return Err(stream_length(read, bytes));
        }
    };
    timings.snapshot = first_pass_ms + copy_ms;
    timings.compress = ms_since(step);
    if first.is_some_and(|first| first != hex) {
        upload.abort();
        return Err(Error::new(
            Kind::Io,
            "the database changed between the hash and the copy (this should not happen \
             within one read transaction): nothing was stored, try again",
        ));
    }
    if let Err(e) = crate::interrupt::check() {
        upload.abort();
        return Err(e);
    }
    let step = Instant::now();
    crate::progress::phase("committing", None);
    let stored = upload.commit()?;
    timings.commit = ms_since(step);
    report.spilled_bytes = Some(pipe.spilled().0);
    report.sha256 = hex;
    report.destination = stored.url;
    report.stored_bytes = count;
    report.etag = stored.etag;
    report.parts = stored.parts;
    report.elapsed_ms = ms_since(job.started);
    report.timings_ms = timings;
    Ok(Streamed::Done(Box::new(report)))
}

/// Compresses `input` into `out`, encrypted when there are recipients: codec inside, age
/// outside (`age -d | zstd -d` restores a backup). Returns the bytes read.
pub(crate) fn compress(
    input: &mut (dyn io::Read + Send),
    out: &mut dyn Write,
    codec: Codec,
    level: u32,
    threads: usize,
    recipients: Option<&crate::crypt::Recipients>,
) -> Result<u64> {
    match recipients {
        None => codec::compress(input, out, codec, level, threads),
        Some(r) => crate::crypt::encrypt(r, out).and_then(|mut sealed| {
            let read = codec::compress(input, &mut sealed, codec, level, threads)?;
            // The last chunk and its tag: without them the file does not decrypt.
            sealed
                .finish()
                .map_err(|e| Error::io("cannot finish encryption", e))?;
            Ok(read)
        }),
    }
}

/// Appends the trailer that records the database's sha256 and size after the last block (for
/// codecs that have one; see `trailer`).
pub(crate) fn append_trailer(
    out: &mut dyn Write,
    codec: Codec,
    sha256: &str,
    size: u64,
) -> Result<()> {
    match crate::trailer::encode(codec, sha256, size) {
        Some(bytes) => out
            .write_all(&bytes)
            .map_err(|e| Error::io("cannot write the backup", e)),
        None => Ok(()),
    }
}

/// Whether a stream hashes before it compresses: `if_changed` needs the hash first, and so
/// does a store that must send it before the upload (a raw backup to S3: metadata); a .gz/.zst
/// object's trailer records it after, and an encrypted backup records none.
pub(crate) fn hash_first(
    if_changed: bool,
    store: &dyn Store,
    name: &str,
    encrypted: bool,
    codec: Codec,
) -> bool {
    if_changed
        || (store.local_path(name).is_none() && !encrypted && !crate::trailer::carried_by(codec))
}

/// A stream that did not hand over as many bytes as the database has.
pub(crate) fn stream_length(got: u64, bytes: u64) -> Error {
    Error::new(
        Kind::Io,
        format!("the stream had {got} bytes where the database has {bytes}"),
    )
}

/// The stream's sha256 alone: the copy on this thread, the hashing on another (they overlap).
fn hash_pass(
    source: &crate::stream::Source,
    page1: &[u8],
    free: &crate::stream::FreeList,
    tails: &crate::stream::Tails,
) -> Result<String> {
    let pipe = crate::stream::Pipe::new(crate::stream::PIPE_BYTES, None);
    std::thread::scope(|scope| {
        let mut reader = HashingReader {
            inner: crate::stream::PipeReader::new(&pipe),
            hasher: <sha2::Sha256 as sha2::Digest>::new(),
        };
        let hasher = spawn_scoped(scope, "backup-sha256", move || -> io::Result<String> {
            let mut buf = vec![0u8; 1 << 20];
            while io::Read::read(&mut reader, &mut buf)? > 0 {}
            Ok(dbfile::hex(&sha2::Digest::finalize(reader.hasher)))
        })?;
        let streamed = source
            .emit(page1, free, tails, crate::stream::PipeWriter::new(&pipe))
            .map(|mut w| w.close(Ok(())));
        let hashed = hasher
            .join()
            .map_err(|_| Error::new(Kind::Io, "the hashing thread failed"))?;
        streamed?;
        hashed.map_err(|e| Error::io("cannot hash the database", e))
    })
}

/// Hashes what compression reads: the stream's sha256 without a second read.
struct HashingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
}

impl<R: io::Read> io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        sha2::Digest::update(&mut self.hasher, buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

/// The newest backup in the series, if its content equals `sha256`. Stores that record the
/// hash (S3 metadata) answer at once, a trailer with one short read; for the others (older or
/// encrypted backups) the newest backup is decompressed and hashed, which costs a read but
/// never a wrong skip.
pub(crate) fn newest_with_same_content(
    store: &dyn Store,
    series: &crate::naming::Series,
    sha256: &str,
    identity: Option<&std::path::Path>,
) -> Result<Option<String>> {
    let Some(newest) = crate::retention::newest(series.select(store.list()?)) else {
        return Ok(None);
    };
    // Metadata, else the trailer (a few bytes from the end), else the whole backup.
    let trailer = || crate::trailer::read(store, &newest.name, newest.size).map(|t| t.hex());
    let stored_sha = match newest.sha256.clone().or_else(trailer) {
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
pub(crate) struct Metered<R> {
    pub(crate) inner: R,
    pub(crate) meter: crate::progress::Meter,
}

impl<R: io::Read> io::Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.add(n as u64);
        Ok(n)
    }
}

/// Counts what is stored, and stops at an interrupt (asked from the writing thread).
pub(crate) struct CountingWriter<W> {
    pub(crate) inner: W,
    pub(crate) count: u64,
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
