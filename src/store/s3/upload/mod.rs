//! Streaming uploads of unknown length: buffer up to the threshold, then one PutObject if the
//! stream ended, else a multipart upload whose parts go out from a bounded pool of worker
//! threads. Memory stays within about (concurrency + 1) parts: the part being filled plus one
//! per worker (the channel is a rendezvous, so a full pool blocks the writer: `pool`).
//!
//! The multipart upload is created with the snapshot's sha256 as metadata, and that hash is
//! still being computed beside compression. Until it is known, whole parts wait in an unnamed
//! temp file, so compression keeps every core busy instead of waiting for the hash, in no
//! more memory than the upload itself takes (if that file cannot be written, the writer waits):
//! `spool`.
//!
//! Part sizes: the total length is unknown up front, so the part size doubles every
//! `PARTS_PER_SIZE` parts, up to `max_part_size` (512 MiB, or less so that (concurrency + 1)
//! parts stay within 2 GiB of memory). Within each run of 1000 parts every part has the same
//! size. With the defaults (6 MiB, concurrency 4: parts grow to 409.6 MiB) 10,000 parts hold
//! 1,944 GiB of compressed backup. Every buffer is reserved fallibly: a part that cannot be
//! allocated is an error, never an abort of the host process.

mod pool;
mod spool;

use std::io::{self, Write};
use std::sync::Arc;

use super::client::Client;
use super::config::{MAX_PART_SIZE, MAX_UPLOAD_MEMORY};
use super::errors::Target;
use super::request::Header;
use crate::error::{Error, Kind, Result};
use crate::store::{PutMeta, Stored, Upload};
use pool::Pool;
use spool::Spool;

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

/// Object metadata, sent on PutObject and CreateMultipartUpload and signed (AWS rejects unsigned
/// `x-amz-*` headers).
fn metadata(meta: &PutMeta) -> Result<Vec<Header>> {
    let sha256 = meta.sha256.wait()?;
    let mut headers = vec![
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
    ];
    // Empty for an encrypted backup: its plaintext hash is not stored in the clear.
    headers.retain(|(name, value)| *name != "x-amz-meta-sha256" || !value.is_empty());
    Ok(headers)
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
    /// AbortMultipartUpload was sent: never twice.
    aborted: bool,
    pool: Pool,
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
            None => self.spool.len() as u32,
        }
    }

    fn current_part_size(&self) -> u64 {
        part_size_for(self.part_size, self.parts_cut() + 1, self.max_part)
    }

    /// Whether buffered data has passed the single-PUT threshold.
    fn past_threshold(&self) -> bool {
        !self.spool.is_empty() || self.buf.len() as u64 > self.threshold
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
        let etag = self.client.put_object(
            &self.key,
            &metadata(&self.meta)?,
            body,
            self.meta.create_only,
            &self.target,
        )?;
        Ok(Stored {
            url: self.target.url.clone(),
            etag,
            parts: 1,
        })
    }

    /// CreateMultipartUpload and the worker pool; then sends what the buffer already holds.
    fn start_multipart(&mut self) -> Result<()> {
        let upload_id =
            self.client
                .create_multipart(&self.key, &metadata(&self.meta)?, &self.target)?;
        let pool = Pool::start(
            &self.client,
            &self.key,
            &upload_id,
            &self.target,
            self.concurrency,
        );
        let no_workers = pool.is_empty();
        self.multipart = Some(Multipart {
            upload_id,
            sent: 0,
            aborted: false,
            pool,
        });
        if no_workers {
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
                        m.pool.fail(err);
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
            Some(m) if m.pool.failed() => Err(None),
            Some(m) => {
                m.sent += 1;
                if m.pool.send(m.sent, part) {
                    Ok(())
                } else {
                    Err(None)
                }
            }
        };
        match sent {
            Ok(()) => Ok(()),
            Err(Some(err)) => {
                if let Some(m) = self.multipart.as_ref() {
                    m.pool.fail(err);
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
            Some(m) => m.pool.take_error(),
            None => Error::new(Kind::Remote, "internal error: no multipart upload"),
        }
    }

    /// Joins the workers and aborts the multipart upload (if any). Idempotent, never panics.
    fn cleanup(&mut self) {
        self.finished = true;
        let Some(m) = self.multipart.as_mut() else {
            return;
        };
        m.pool.stop();
        if !m.aborted {
            m.aborted = true;
            self.client
                .abort_multipart(&self.key, &m.upload_id, &self.target);
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
        m.pool.finish();
        if m.pool.failed() {
            return Err(self.fail_multipart());
        }
        let sent = m.sent;
        let etags = m.pool.etags();
        if etags.len() != sent as usize {
            m.pool.fail(Error::new(
                Kind::Remote,
                format!("{}: a part went missing", self.target.url),
            ));
            return Err(self.fail_multipart());
        }
        let upload_id = m.upload_id.clone();
        match self.client.complete_multipart(
            &self.key,
            &upload_id,
            &etags,
            self.meta.create_only,
            &self.target,
        ) {
            Ok(etag) => {
                self.finished = true;
                Ok(Stored {
                    url: self.target.url.clone(),
                    etag,
                    parts: sent,
                })
            }
            Err(e) => {
                if let Some(m) = self.multipart.as_ref() {
                    m.pool.fail(e);
                }
                Err(self.fail_multipart())
            }
        }
    }
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
}
