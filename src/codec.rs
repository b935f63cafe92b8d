//! Compression: gzip, zstd or none, chosen by the destination's suffix when writing and by
//! magic bytes when reading. Everything streams; memory is bounded by a few blocks.
//!
//! Both codecs write a series of independently compressed blocks, so every core compresses at
//! once with memory bounded by a few blocks: gzip members (RFC 1952 allows concatenated members;
//! `gunzip`, Python's `gzip` and `MultiGzDecoder` read them as one stream) and zstd frames
//! (concatenated frames are one stream to `zstd -d` and every decoder). zstd's own multithreaded
//! mode was slower on two cores and kept ~60 MiB of job buffers.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::thread;

use crate::error::{Error, Result};
use crate::threads::spawn_scoped;

/// Bytes per gzip member. 1 MiB keeps the lost cross-block context (32 KiB window) under 1%
/// of size while giving every core work.
const GZIP_BLOCK: usize = 1 << 20;
/// Bytes per zstd frame: 0.2% larger output than 2 MiB frames at level 3 (1 GiB benchmark
/// database), for about 7 MiB less memory with two workers (input, window and queue).
const ZSTD_BLOCK: usize = 1 << 20;
/// zstd's window: a frame is one 1 MiB block, so a larger window finds nothing more and only
/// costs memory (level 19 asks for 8 MiB, and its match tables grow with the window).
const ZSTD_WINDOW_LOG: u32 = 20;
/// Most compression threads one call may use: each holds a compressor and a few blocks, so
/// the cap bounds memory (see the README) and a typo cannot ask for millions.
pub const MAX_THREADS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Gzip,
    Zstd,
    None,
}

impl Codec {
    /// By the name's suffix: `.gz` gzip, `.zst` zstd, anything else stored raw.
    pub fn for_name(name: &str) -> Codec {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".gz") || lower.ends_with(".gzip") {
            Codec::Gzip
        } else if lower.ends_with(".zst") || lower.ends_with(".zstd") {
            Codec::Zstd
        } else {
            Codec::None
        }
    }

    /// By the first bytes of a stored backup.
    pub fn detect(head: &[u8]) -> Codec {
        if head.starts_with(&[0x1f, 0x8b]) {
            Codec::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Codec::Zstd
        } else {
            Codec::None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
            Codec::None => "none",
        }
    }

    /// Checks a user's level against the codec, or gives the default.
    pub fn level(self, requested: Option<i64>) -> Result<u32> {
        let (range, default) = match self {
            Codec::Gzip => (1..=9, 6),
            Codec::Zstd => (1..=19, 3),
            Codec::None => {
                return match requested {
                    None => Ok(0),
                    Some(_) => Err(Error::usage(
                        "option level applies only to .gz and .zst names; this name is stored uncompressed",
                    )),
                };
            }
        };
        match requested {
            None => Ok(default),
            Some(l) if range.contains(&l) => Ok(l as u32),
            Some(l) => Err(Error::usage(format!(
                "level {l} is out of range for {}: use {} to {}",
                self.name(),
                range.start(),
                range.end()
            ))),
        }
    }
}

/// Compresses all of `input` into `output`; returns the number of input bytes.
pub fn compress(
    input: &mut (dyn Read + Send),
    output: &mut dyn Write,
    codec: Codec,
    level: u32,
    threads: usize,
) -> Result<u64> {
    let threads = threads.clamp(1, MAX_THREADS);
    match codec {
        Codec::None => copy(input, output),
        Codec::Zstd => compress_zstd(input, output, level, threads),
        Codec::Gzip => compress_gzip(input, output, level, threads),
    }
}

fn compress_zstd(
    input: &mut (dyn Read + Send),
    output: &mut dyn Write,
    level: u32,
    threads: usize,
) -> Result<u64> {
    compress_blocks(input, output, threads, ZSTD_BLOCK, "zstd", || {
        // One compression context per worker, reused for every block it takes.
        let mut zstd = zstd::bulk::Compressor::new(level as i32)?;
        zstd.include_checksum(true)?;
        zstd.window_log(ZSTD_WINDOW_LOG)?;
        Ok(move |block: &[u8]| zstd.compress(block))
    })
}

fn compress_gzip(
    input: &mut (dyn Read + Send),
    output: &mut dyn Write,
    level: u32,
    threads: usize,
) -> Result<u64> {
    compress_blocks(input, output, threads, GZIP_BLOCK, "gzip", || {
        // libdeflate: whole-buffer compression, about twice zlib's speed at the same level
        // with output no larger; each block becomes one complete gzip member.
        let lvl = libdeflater::CompressionLvl::new(level as i32)
            .map_err(|_| io::Error::other(format!("unsupported gzip level {level}")))?;
        let mut deflater = libdeflater::Compressor::new(lvl);
        Ok(move |block: &[u8]| {
            let mut member = vec![0u8; deflater.gzip_compress_bound(block.len())];
            let n = deflater
                .gzip_compress(block, &mut member)
                .map_err(|e| io::Error::other(format!("{e:?}")))?;
            member.truncate(n);
            Ok(member)
        })
    })
}

/// The snapshot as it is, in 1 MiB writes (`io::copy` would make 8 KiB ones).
fn copy(input: &mut (dyn Read + Send), output: &mut dyn Write) -> Result<u64> {
    let mut total = 0u64;
    loop {
        let block =
            read_block(input, 1 << 20).map_err(|e| Error::io("cannot read the snapshot", e))?;
        if block.is_empty() {
            return Ok(total);
        }
        output
            .write_all(&block)
            .map_err(|e| Error::io("cannot write the backup", e))?;
        total += block.len() as u64;
    }
}

/// Reads up to one block; short only at the end of input.
fn read_block(input: &mut dyn Read, size: usize) -> io::Result<Vec<u8>> {
    let mut block = Vec::with_capacity(size);
    input.take(size as u64).read_to_end(&mut block)?;
    Ok(block)
}

/// A reader thread cuts `block`-sized pieces, `threads` workers compress them (each with the
/// compressor `make` gives it), and this thread writes them in order. Channels are bounded, so
/// at most about 2 × threads + 3 blocks are in memory. A thread that cannot be started (a
/// process or memory limit) is an error, never a panic.
fn compress_blocks<M, C>(
    input: &mut (dyn Read + Send),
    output: &mut dyn Write,
    threads: usize,
    block: usize,
    codec: &str,
    make: M,
) -> Result<u64>
where
    M: Fn() -> io::Result<C> + Sync,
    C: FnMut(&[u8]) -> io::Result<Vec<u8>>,
{
    thread::scope(|scope| {
        // One block waiting each way is enough: reading a block is far faster than compressing
        // it, and a slow writer (an upload) should hold back compression, not queue blocks.
        let (job_tx, job_rx) = sync_channel::<(u64, Vec<u8>)>(1);
        let (done_tx, done_rx) = sync_channel::<(u64, io::Result<Vec<u8>>)>(1);
        let job_rx = Arc::new(Mutex::new(job_rx));

        let reader = spawn_scoped(scope, "backup-read", move || -> io::Result<u64> {
            let mut total = 0u64;
            let mut seq = 0u64;
            loop {
                let data = read_block(input, block)?;
                // An empty input still gets one (empty) block: an empty .gz file is invalid.
                if data.is_empty() && seq > 0 {
                    return Ok(total);
                }
                let last = data.len() < block;
                total += data.len() as u64;
                if job_tx.send((seq, data)).is_err() {
                    return Ok(total); // the writer stopped; its error is reported
                }
                seq += 1;
                if last {
                    return Ok(total);
                }
            }
        })?;
        for _ in 0..threads {
            let job_rx = Arc::clone(&job_rx);
            let done_tx = done_tx.clone();
            let make = &make;
            // On an error here, returning drops the channels' ends: the threads already
            // started see them closed and stop, and the scope joins them.
            spawn_scoped(scope, "backup-compress", move || {
                let mut compress = match make() {
                    Ok(c) => Some(c),
                    Err(e) => {
                        let _ = done_tx.send((u64::MAX, Err(e)));
                        None
                    }
                };
                while let Some(compress) = compress.as_mut() {
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok((seq, data)) = job else { return };
                    if done_tx.send((seq, compress(&data))).is_err() {
                        return;
                    }
                }
            })?;
        }
        drop(done_tx);
        drop(job_rx);

        // Write blocks in sequence; a few may arrive early and wait here.
        let mut pending = BTreeMap::new();
        let mut next = 0u64;
        let written: Result<()> = (|| {
            for (seq, compressed) in done_rx.iter() {
                if let (u64::MAX, Err(e)) = (seq, &compressed) {
                    return Err(Error::new(
                        crate::error::Kind::Io,
                        format!("cannot start {codec} compression: {e}"),
                    ));
                }
                pending.insert(seq, compressed);
                while let Some(compressed) = pending.remove(&next) {
                    let compressed = compressed
                        .map_err(|e| Error::io(format!("{codec} compression failed"), e))?;
                    output
                        .write_all(&compressed)
                        .map_err(|e| Error::io("cannot write the backup", e))?;
                    next += 1;
                }
            }
            Ok(())
        })();
        // On a write error, dropping the receiver stops the workers and then the reader.
        drop(done_rx);
        let read = reader
            .join()
            .map_err(|_| Error::new(crate::error::Kind::Io, "the reader thread failed"))?;
        written?;
        read.map_err(|e| Error::io("cannot read the snapshot", e))
    })
}

/// Wraps a stored backup in the decoder its magic bytes call for.
pub fn decoder<'a>(input: Box<dyn Read + Send + 'a>) -> Result<(Codec, Box<dyn Read + Send + 'a>)> {
    let mut buffered = BufReader::with_capacity(1 << 20, input);
    let head = buffered
        .fill_buf()
        .map_err(|e| Error::io("cannot read the backup", e))?;
    let codec = Codec::detect(head);
    let reader: Box<dyn Read + Send + 'a> = match codec {
        Codec::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        Codec::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .map_err(|e| Error::io("cannot start zstd decompression", e))?,
        ),
        Codec::None => Box::new(buffered),
    };
    Ok((codec, reader))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| ((i * 7919) % 251) as u8 ^ (i / 4096) as u8)
            .collect()
    }

    fn round_trip(codec: Codec, data: &[u8], threads: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let n = compress(
            &mut &data[..],
            &mut out,
            codec,
            codec.level(None).unwrap(),
            threads,
        )
        .unwrap();
        assert_eq!(n, data.len() as u64);
        let (found, mut dec) = decoder(Box::new(io::Cursor::new(out))).unwrap();
        assert_eq!(found, codec);
        let mut back = Vec::new();
        dec.read_to_end(&mut back).unwrap();
        back
    }

    #[test]
    fn gzip_and_zstd_round_trip_across_block_boundaries() {
        for size in [
            0,
            1,
            GZIP_BLOCK - 1,
            GZIP_BLOCK,
            3 * GZIP_BLOCK + 17,
            2 * ZSTD_BLOCK + 5,
        ] {
            let data = sample(size);
            assert_eq!(round_trip(Codec::Gzip, &data, 2), data, "gzip {size}");
            assert_eq!(round_trip(Codec::Zstd, &data, 2), data, "zstd {size}");
        }
    }

    #[test]
    fn suffixes_and_levels() {
        assert_eq!(Codec::for_name("a.db.GZ"), Codec::Gzip);
        assert_eq!(Codec::for_name("a.zst"), Codec::Zstd);
        assert_eq!(Codec::for_name("a.db"), Codec::None);
        assert_eq!(Codec::Gzip.level(None).unwrap(), 6);
        assert!(Codec::Gzip.level(Some(10)).is_err());
        assert!(Codec::None.level(Some(3)).is_err());
    }

    #[test]
    fn truncated_gzip_is_an_error() {
        let data = sample(200_000);
        let mut out = Vec::new();
        compress(&mut &data[..], &mut out, Codec::Gzip, 6, 1).unwrap();
        out.truncate(out.len() / 2);
        let (_, mut dec) = decoder(Box::new(io::Cursor::new(out))).unwrap();
        let mut back = Vec::new();
        assert!(dec.read_to_end(&mut back).is_err());
    }
}
