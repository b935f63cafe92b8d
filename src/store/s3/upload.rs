//! Streaming uploads of unknown length: buffer up to the threshold, then one PutObject if the
//! stream ended, else a multipart upload whose parts go out from a bounded pool of worker
//! threads. Memory stays within about (concurrency + 1) parts: the part being filled plus one
//! per worker (the channel is a rendezvous, so a full pool blocks the writer).
//!
//! The multipart upload is created with the snapshot's sha256 as metadata, and that hash is
//! still being computed beside compression. Until it is known, whole parts wait in an unnamed
//! temp file, so compression keeps every core busy instead of waiting for the hash, in no
//! more memory than the upload itself takes (if that file cannot be written, the writer waits).
//!
//! Part sizes: the total length is unknown up front, so the part size doubles every
//! `PARTS_PER_SIZE` parts, up to `max_part_size` (512 MiB, or less so that (concurrency + 1)
//! parts stay within 2 GiB of memory). Within each run of 1000 parts every part has the same
//! size. With the defaults (6 MiB, concurrency 4: parts grow to 409.6 MiB) 10,000 parts hold
//! 1,944 GiB of compressed backup. Every buffer is reserved fallibly: a part that cannot be
//! allocated is an error, never an abort of the host process.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use base64::Engine as _;
use md5::{Digest as _, Md5};
use rusty_s3::S3Action as _;

use super::client::{Client, Method, Request, SIGN_FOR};
use super::config::{MAX_PART_SIZE, MAX_UPLOAD_MEMORY};
use super::errors::Target;
use crate::error::{Error, Kind, Result};
use crate::store::{PutMeta, Stored, Upload};

/// S3's limit on the number of parts.
pub const MAX_PARTS: u32 = 10_000;
/// Parts per size step: the size doubles after each run of this many parts.
pub const PARTS_PER_SIZE: u32 = 1000;

/// The largest part an upload grows to: 512 MiB, or less so that the (concurrency + 1) parts
/// in memory stay within `MAX_UPLOAD_MEMORY`; never below the configured size.
pub fn max_part_size(base: u64, concurrency: u32) -> u64 {
    let per_part = MAX_UPLOAD_MEMORY / (u64::from(concurrency) + 1);
    per_part.min(MAX_PART_SIZE).max(base)
}

/// Size of part `number` (1-based) when the configured part size is `base` and parts grow to
/// at most `max`.
pub fn part_size_for(base: u64, number: u32, max: u64) -> u64 {
    let doublings = (number.saturating_sub(1) / PARTS_PER_SIZE).min(30);
    base.saturating_mul(1u64 << doublings).min(max)
}

/// Makes room for `additional` more bytes in `buf`, never past `limit` bytes of capacity:
/// amortized doubling like `Vec`, but a failed allocation is an error instead of an abort.
fn reserve(buf: &mut Vec<u8>, additional: usize, limit: usize) -> Result<()> {
    let needed = buf.len().saturating_add(additional);
    if needed <= buf.capacity() {
        return Ok(());
    }
    let target = needed
        .max(buf.capacity().saturating_mul(2))
        .min(limit.max(needed));
    buf.try_reserve_exact(target - buf.len())
        .map_err(|_| out_of_memory(target))
}

/// The error for a buffer that cannot be allocated (a process memory limit, or none left).
fn out_of_memory(bytes: usize) -> Error {
    Error::new(
        Kind::Io,
        format!(
            "cannot allocate {} MiB for an upload buffer (out of memory or above the process's \
             memory limit): lower part_size, multipart_threshold or concurrency",
            bytes.div_ceil(1 << 20)
        ),
    )
}

pub fn content_md5(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(body))
}

/// Object metadata, sent on PutObject and CreateMultipartUpload and signed (AWS rejects unsigned
/// `x-amz-*` headers).
fn metadata(meta: &PutMeta) -> Result<Vec<(&'static str, String)>> {
    let sha256 = meta.sha256.wait()?;
    Ok(vec![
        (
            "x-amz-meta-backup-time",
            meta.backup_time
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ),
        ("x-amz-meta-sha256", sha256),
        (
            "x-amz-meta-sqlite-backup-version",
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ])
}

/// Adds each header to the action's signed headers (sorted, lowercase) and to the request.
fn signed<'a>(
    mut action: impl rusty_s3::S3Action<'a>,
    method: Method,
    headers: &'a [(&'static str, String)],
) -> Request<'static> {
    for (name, value) in headers {
        action.headers_mut().insert(*name, value.as_str());
    }
    let mut req = Request::new(method, action.sign(SIGN_FOR));
    for (name, value) in headers {
        req = req.header(name, value.clone());
    }
    req
}

fn etag_of(headers: &ureq::http::HeaderMap) -> Option<String> {
    super::client::header(headers, "etag").map(str::to_string)
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_string()
}

/// How an upload splits its stream (from the resolved options).
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub part_size: u64,
    pub threshold: u64,
    pub concurrency: u32,
}

pub struct S3Upload {
    client: Arc<Client>,
    key: String,
    target: Target,
    meta: PutMeta,
    part_size: u64,
    /// What parts grow to (`max_part_size`).
    max_part: u64,
    threshold: u64,
    concurrency: u32,
    buf: Vec<u8>,
    /// Whole parts held on disk before the multipart upload starts, while the sha256 it must
    /// be created with is still being computed.
    spool: Spool,
    multipart: Option<Multipart>,
    /// Set by commit/abort: Drop has nothing left to clean up.
    finished: bool,
}

/// A multipart upload in progress.
struct Multipart {
    upload_id: String,
    /// Parts sent so far; the next part is `sent + 1`.
    sent: u32,
    sender: Option<SyncSender<(u32, Vec<u8>)>>,
    /// AbortMultipartUpload was sent: never twice.
    aborted: bool,
    workers: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

/// What the workers report back.
struct Shared {
    etags: Mutex<Vec<Option<String>>>,
    error: Mutex<Option<Error>>,
    failed: AtomicBool,
}

impl Shared {
    fn fail(&self, err: Error) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(err);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    fn take_error(&self) -> Error {
        self.error
            .lock()
            .ok()
            .and_then(|mut e| e.take())
            .unwrap_or_else(|| Error::new(Kind::Remote, "a part upload failed"))
    }
}

impl S3Upload {
    pub fn new(
        client: Arc<Client>,
        key: String,
        target: Target,
        meta: PutMeta,
        sizes: Sizes,
    ) -> S3Upload {
        S3Upload {
            client,
            key,
            target,
            meta,
            part_size: sizes.part_size,
            max_part: max_part_size(sizes.part_size, sizes.concurrency),
            threshold: sizes.threshold,
            concurrency: sizes.concurrency,
            buf: Vec::new(),
            spool: Spool::default(),
            multipart: None,
            finished: false,
        }
    }

    /// Whole parts cut from the stream so far (sent or held).
    fn parts_cut(&self) -> u32 {
        match self.multipart.as_ref() {
            Some(m) => m.sent,
            None => self.spool.parts.len() as u32,
        }
    }

    fn current_part_size(&self) -> u64 {
        part_size_for(self.part_size, self.parts_cut() + 1, self.max_part)
    }

    /// Whether buffered data has passed the single-PUT threshold.
    fn past_threshold(&self) -> bool {
        !self.spool.parts.is_empty() || self.buf.len() as u64 > self.threshold
    }

    /// Moves every whole part out of the buffer, in order: to the workers once the multipart
    /// upload runs (it starts as soon as the hash is known), else into the hold.
    fn cut_parts(&mut self) -> Result<()> {
        while self.buf.len() as u64 >= self.current_part_size() {
            let size = self.current_part_size() as usize;
            let part = if self.buf.len() == size {
                std::mem::take(&mut self.buf)
            } else {
                let mut rest = Vec::new();
                rest.try_reserve_exact(self.buf.len() - size)
                    .map_err(|_| out_of_memory(self.buf.len() - size))?;
                rest.extend_from_slice(self.buf.get(size..).unwrap_or_default());
                self.buf.truncate(size);
                let mut part = std::mem::replace(&mut self.buf, rest);
                // The buffer may have grown past one part: keep memory at one part each.
                part.shrink_to_fit();
                part
            };
            if self.multipart.is_none() && self.meta.sha256.is_ready() {
                self.start_multipart()?;
            }
            if self.multipart.is_some() {
                self.send_part(part)?;
            } else {
                self.hold(part)?;
            }
        }
        Ok(())
    }

    /// Keeps a part on disk until the upload can start (memory stays what the upload workers
    /// will hold). A spool that cannot be written makes the writer wait for the hash here.
    fn hold(&mut self, part: Vec<u8>) -> Result<()> {
        if self.spool.push(&part, &self.meta.temp_dir).is_ok() {
            return Ok(());
        }
        self.start_multipart()?;
        self.send_part(part)
    }

    fn put_object(&self, body: &[u8]) -> Result<Stored> {
        let headers = metadata(&self.meta)?;
        let action = self
            .client
            .bucket
            .put_object(Some(&self.client.credentials), &self.key);
        let mut req = signed(action, Method::Put, &headers)
            .header("content-md5", content_md5(body))
            .body(body);
        if self.meta.create_only {
            req = req.header("if-none-match", "*");
        }
        let reply = self.client.call(&req, &self.target)?;
        Ok(Stored {
            url: self.target.url.clone(),
            etag: etag_of(&reply.headers).map(|e| unquote(&e)),
            parts: 1,
        })
    }

    /// CreateMultipartUpload and the worker pool; then sends what the buffer already holds.
    fn start_multipart(&mut self) -> Result<()> {
        let headers = metadata(&self.meta)?;
        let action = self
            .client
            .bucket
            .create_multipart_upload(Some(&self.client.credentials), &self.key);
        let req = signed(action, Method::Post, &headers);
        let reply = self.client.call(&req, &self.target)?;
        let text = String::from_utf8_lossy(&reply.body);
        let created =
            rusty_s3::actions::CreateMultipartUpload::parse_response(&text).map_err(|_| {
                Error::new(
                    Kind::Remote,
                    format!(
                        "{}: unexpected answer to CreateMultipartUpload",
                        self.target.url
                    ),
                )
            })?;
        let upload_id = created.upload_id().to_string();

        let shared = Arc::new(Shared {
            etags: Mutex::new(Vec::new()),
            error: Mutex::new(None),
            failed: AtomicBool::new(false),
        });
        let (sender, receiver) = sync_channel::<(u32, Vec<u8>)>(0);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut workers = Vec::new();
        for _ in 0..self.concurrency {
            let client = Arc::clone(&self.client);
            let worker_shared = Arc::clone(&shared);
            let receiver = Arc::clone(&receiver);
            let key = self.key.clone();
            let upload_id = upload_id.clone();
            let target = self.target.clone();
            let spawned = std::thread::Builder::new()
                .name("s3-upload-part".into())
                .spawn(move || loop {
                    let shared = &worker_shared;
                    let next = match receiver.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((number, body)) = next else { return };
                    if shared.failed.load(Ordering::SeqCst) {
                        continue; // drain: the upload is being abandoned
                    }
                    match upload_part(&client, &key, &upload_id, number, &body, &target) {
                        Ok(etag) => {
                            if let Ok(mut etags) = shared.etags.lock() {
                                let index = (number - 1) as usize;
                                if etags.len() <= index {
                                    etags.resize(index + 1, None);
                                }
                                etags[index] = Some(etag);
                            }
                        }
                        Err(e) => shared.fail(e),
                    }
                });
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    shared.fail(crate::threads::error(e));
                    break;
                }
            }
        }
        self.multipart = Some(Multipart {
            upload_id,
            sent: 0,
            sender: Some(sender),
            aborted: false,
            workers,
            shared,
        });
        if self
            .multipart
            .as_ref()
            .is_some_and(|m| m.workers.is_empty())
        {
            return Err(self.fail_multipart());
        }
        loop {
            match self.spool.pop() {
                Ok(Some(part)) => self.send_part(part)?,
                Ok(None) => return Ok(()),
                Err(e) => {
                    let err = Error::io(
                        format!(
                            "cannot read back a part held in {}",
                            self.meta.temp_dir.display()
                        ),
                        e,
                    );
                    if let Some(m) = self.multipart.as_ref() {
                        m.shared.fail(err);
                    }
                    return Err(self.fail_multipart());
                }
            }
        }
    }

    /// Hands a part to the pool (blocks while every worker is busy).
    fn send_part(&mut self, part: Vec<u8>) -> Result<()> {
        let url = &self.target.url;
        // Held parts go out in one write: an interrupt must not wait for all of them.
        let interrupted = crate::interrupt::check();
        let sent = match self.multipart.as_mut() {
            None => Err(None),
            Some(_) if interrupted.is_err() => Err(interrupted.err()),
            Some(m) if m.sent >= MAX_PARTS => Err(Some(Error::usage(format!(
                "{url} needs more than {MAX_PARTS} parts: raise part_size"
            )))),
            Some(m) if m.shared.failed.load(Ordering::SeqCst) => Err(None),
            Some(m) => {
                m.sent += 1;
                match m.sender.as_ref().map(|s| s.send((m.sent, part))) {
                    Some(Ok(())) => Ok(()),
                    _ => Err(None),
                }
            }
        };
        match sent {
            Ok(()) => Ok(()),
            Err(Some(err)) => {
                if let Some(m) = self.multipart.as_ref() {
                    m.shared.fail(err);
                }
                Err(self.fail_multipart())
            }
            Err(None) => Err(self.fail_multipart()),
        }
    }

    /// Stops the workers, aborts the multipart upload, and returns the error that caused it.
    fn fail_multipart(&mut self) -> Error {
        self.cleanup();
        match self.multipart.as_ref() {
            Some(m) => m.shared.take_error(),
            None => Error::new(Kind::Remote, "internal error: no multipart upload"),
        }
    }

    /// Joins the workers and aborts the multipart upload (if any). Idempotent, never panics.
    fn cleanup(&mut self) {
        self.finished = true;
        let Some(m) = self.multipart.as_mut() else {
            return;
        };
        m.shared.failed.store(true, Ordering::SeqCst);
        m.sender = None;
        for worker in m.workers.drain(..) {
            let _ = worker.join();
        }
        if !m.aborted {
            m.aborted = true;
            let upload_id = m.upload_id.clone();
            abort_multipart(&self.client, &self.key, &upload_id, &self.target);
        }
    }

    fn complete(&mut self) -> Result<Stored> {
        if !self.buf.is_empty() || self.multipart.as_ref().is_some_and(|m| m.sent == 0) {
            let part = std::mem::take(&mut self.buf);
            self.send_part(part)?;
        }
        let Some(m) = self.multipart.as_mut() else {
            return Err(Error::new(
                Kind::Remote,
                "internal error: no multipart upload",
            ));
        };
        m.sender = None; // workers finish the queued parts, then see the channel closed
        for worker in m.workers.drain(..) {
            let _ = worker.join();
        }
        if m.shared.failed.load(Ordering::SeqCst) {
            return Err(self.fail_multipart());
        }
        let sent = m.sent;
        let etags: Vec<String> = match m.shared.etags.lock() {
            Ok(etags) => etags.iter().flatten().cloned().collect(),
            Err(_) => Vec::new(),
        };
        if etags.len() != sent as usize {
            m.shared.fail(Error::new(
                Kind::Remote,
                format!("{}: a part went missing", self.target.url),
            ));
            return Err(self.fail_multipart());
        }
        let upload_id = m.upload_id.clone();
        let action = self.client.bucket.complete_multipart_upload(
            Some(&self.client.credentials),
            &self.key,
            &upload_id,
            etags.iter().map(String::as_str),
        );
        let body = action.clone().body();
        let mut req = Request::new(Method::Post, action.sign(SIGN_FOR)).body(body.as_bytes());
        if self.meta.create_only {
            req = req.header("if-none-match", "*");
        }
        match self.client.call(&req, &self.target) {
            Ok(reply) => {
                let text = String::from_utf8_lossy(&reply.body);
                let etag = rusty_s3::actions::CompleteMultipartUploadResponse::parse(&text)
                    .ok()
                    .map(|r| unquote(r.etag()))
                    .or_else(|| etag_of(&reply.headers).map(|e| unquote(&e)));
                self.finished = true;
                Ok(Stored {
                    url: self.target.url.clone(),
                    etag,
                    parts: sent,
                })
            }
            Err(e) => {
                if let Some(m) = self.multipart.as_ref() {
                    m.shared.fail(e);
                }
                Err(self.fail_multipart())
            }
        }
    }
}

/// Parts waiting on disk, read back in the order they were written. The file has no name
/// (`temp::unnamed`), so nothing is left behind whatever happens.
#[derive(Default)]
struct Spool {
    file: Option<File>,
    written: u64,
    read: u64,
    /// Lengths of the parts not yet read back.
    parts: VecDeque<usize>,
}

impl Spool {
    fn push(&mut self, part: &[u8], dir: &std::path::Path) -> io::Result<()> {
        let file = match self.file.as_mut() {
            Some(file) => file,
            None => self.file.insert(crate::temp::unnamed(dir)?),
        };
        file.write_all_at(part, self.written)?;
        self.written += part.len() as u64;
        self.parts.push_back(part.len());
        Ok(())
    }

    fn pop(&mut self) -> io::Result<Option<Vec<u8>>> {
        let (Some(len), Some(file)) = (self.parts.pop_front(), self.file.as_ref()) else {
            return Ok(None);
        };
        let mut part = Vec::new();
        part.try_reserve_exact(len)
            .map_err(|_| out_of_memory(len).into_io())?;
        part.resize(len, 0);
        file.read_exact_at(&mut part, self.read)?;
        self.read += len as u64;
        if self.parts.is_empty() {
            *self = Spool::default(); // frees the disk space at once
        }
        Ok(Some(part))
    }
}

fn upload_part(
    client: &Client,
    key: &str,
    upload_id: &str,
    number: u32,
    body: &[u8],
    target: &Target,
) -> Result<String> {
    let number16 = u16::try_from(number)
        .map_err(|_| Error::usage(format!("{}: too many parts", target.url)))?;
    let action = client
        .bucket
        .upload_part(Some(&client.credentials), key, number16, upload_id);
    let req = Request::new(Method::Put, action.sign(SIGN_FOR))
        .header("content-md5", content_md5(body))
        .body(body);
    let reply = client.call(&req, target)?;
    etag_of(&reply.headers).ok_or_else(|| {
        Error::new(
            Kind::Remote,
            format!("{}: the server sent no ETag for part {number}", target.url),
        )
    })
}

/// Best effort: a failed abort leaves an incomplete upload that a bucket lifecycle rule
/// (AbortIncompleteMultipartUpload) removes; there is nothing better to do with the error.
fn abort_multipart(client: &Client, key: &str, upload_id: &str, target: &Target) {
    let action = client
        .bucket
        .abort_multipart_upload(Some(&client.credentials), key, upload_id);
    let req = Request::new(Method::Delete, action.sign(SIGN_FOR));
    let _ = client.call(&req, target);
}

impl Write for S3Upload {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.finished {
            return Err(Error::usage("write after commit or abort").into_io());
        }
        if data.is_empty() {
            return Ok(0);
        }
        if self.multipart.is_none() && !self.past_threshold() {
            // Buffer one byte past the threshold: reaching it exactly still fits one PUT.
            let limit = usize::try_from(self.threshold + 1).unwrap_or(usize::MAX);
            let n = data.len().min(limit.saturating_sub(self.buf.len()));
            reserve(&mut self.buf, n, limit).map_err(Error::into_io)?;
            self.buf.extend_from_slice(&data[..n]);
            if self.buf.len() as u64 > self.threshold {
                self.cut_parts().map_err(Error::into_io)?;
            }
            return Ok(n);
        }
        let size = usize::try_from(self.current_part_size()).unwrap_or(usize::MAX);
        if self.buf.capacity() < size {
            // The whole part at once: parts are filled to the end.
            let more = size.saturating_sub(self.buf.len());
            self.buf
                .try_reserve_exact(more)
                .map_err(|_| out_of_memory(size).into_io())?;
        }
        let n = data.len().min(size.saturating_sub(self.buf.len()));
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= size {
            self.cut_parts().map_err(Error::into_io)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Upload for S3Upload {
    fn commit(mut self: Box<Self>) -> Result<Stored> {
        if self.finished {
            return Err(Error::usage("commit after commit or abort"));
        }
        if self.multipart.is_none() && !self.past_threshold() {
            self.finished = true;
            let body = std::mem::take(&mut self.buf);
            return self.put_object(&body);
        }
        if self.multipart.is_none() {
            self.start_multipart()?;
        }
        self.complete()
    }

    fn abort(mut self: Box<Self>) {
        self.cleanup();
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        if !self.finished {
            self.cleanup();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_cover_5_tib_within_10000_parts() {
        let base = super::super::config::DEFAULT_PART_SIZE;
        let max = max_part_size(base, 4);
        assert_eq!(max, MAX_UPLOAD_MEMORY / 5, "409.6 MiB with the defaults");
        let total: u64 = (1..=MAX_PARTS).map(|n| part_size_for(base, n, max)).sum();
        // The README's figure: 1,944 GiB of compressed backup with the defaults.
        assert_eq!(total >> 30, 1944, "{total}");
        // Same size within a run, doubling between runs, never above the ceiling.
        assert_eq!(part_size_for(base, 1, max), base);
        assert_eq!(part_size_for(base, 1000, max), base);
        assert_eq!(part_size_for(base, 1001, max), 2 * base);
        assert!((1..=MAX_PARTS).all(|n| part_size_for(base, n, max) <= max));
        assert!(part_size_for(u64::MAX / 2, 9999, max) <= max);
        // Memory stays within the budget for every concurrency; a part never shrinks.
        for c in 1..=64u32 {
            let max = max_part_size(base, c);
            assert!((u64::from(c) + 1) * max <= MAX_UPLOAD_MEMORY, "{c}");
            assert!(max >= base);
        }
        assert_eq!(max_part_size(MAX_PART_SIZE, 1), MAX_PART_SIZE);
    }

    #[test]
    fn buffers_grow_fallibly_and_within_the_limit() {
        let mut buf = Vec::new();
        reserve(&mut buf, 10, 100).unwrap();
        assert!(buf.capacity() >= 10 && buf.capacity() <= 100);
        buf.resize(90, 0);
        reserve(&mut buf, 10, 100).unwrap();
        assert_eq!(buf.capacity(), 100, "never past the limit");
        // An impossible size is an error (a Rust abort before).
        let err = reserve(&mut Vec::new(), usize::MAX / 2, usize::MAX).unwrap_err();
        assert!(err.message.contains("cannot allocate"), "{}", err.message);
    }

    #[test]
    fn md5_is_base64() {
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
    }
}
