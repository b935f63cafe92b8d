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

    /// By the first bytes of a stored backup. A zstd stream may open with a skippable frame
    /// (magic 0x184D2A50..=0x184D2A5F, little-endian): `pzstd` starts every file with one.
    pub fn detect(head: &[u8]) -> Codec {
        match head {
            [0x1f, 0x8b, ..] => Codec::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Codec::Zstd,
            [0x50..=0x5f, 0x2a, 0x4d, 0x18, ..] => Codec::Zstd,
            _ => Codec::None,
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
        Codec::Gzip => Box::new(GzipMembers::new(buffered)),
        Codec::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(buffered)
                .map_err(|e| Error::io("cannot start zstd decompression", e))?,
        ),
        Codec::None => Box::new(buffered),
    };
    Ok((codec, reader))
}

/// The most bytes [`holds_sqlite`] reads: a zstd decoder outputs nothing before a whole block
/// (at most 128 KiB) is in, plus the frame and block headers; gzip needs far less.
pub const SNIFF_LIMIT: u64 = 132 * 1024;

/// Whether `input` is a backup as retention understands it: a SQLite database file, or a gzip
/// or zstd stream whose first 16 decompressed bytes are SQLite's magic. Reads at most
/// [`SNIFF_LIMIT`] bytes and decompresses at most 16, so a bomb costs nothing; anything that
/// cannot be read or decoded is "no".
pub fn holds_sqlite(input: &mut dyn Read) -> bool {
    let mut limited = BufReader::with_capacity(8192, input.take(SNIFF_LIMIT));
    let Ok(head) = limited.fill_buf() else {
        return false;
    };
    let mut magic = [0u8; 16];
    let read = match Codec::detect(head) {
        Codec::Gzip => flate2::bufread::MultiGzDecoder::new(limited).read_exact(&mut magic),
        Codec::Zstd => match zstd::stream::read::Decoder::with_buffer(limited) {
            Ok(mut decoder) => decoder.read_exact(&mut magic),
            Err(_) => return false,
        },
        Codec::None => limited.read_exact(&mut magic),
    };
    // An incremental backup's object is a backup too (its chain restores it).
    read.is_ok()
        && (&magic == crate::dbfile::SQLITE_MAGIC
            || &magic == crate::incremental::format::DELTA_MAGIC)
}

/// Every gzip member of a stream, then only zero bytes to the end (padding that tape and some
/// upload tools add): what `gzip -d` accepts with exit status 0. Any other byte after the
/// last member makes `gzip -d` warn "trailing garbage ignored" and exit 2; it is refused here,
/// since nothing vouches for it. (Zstd needs no such reader: libzstd already skips skippable
/// frames and refuses anything else, zeros included, as `zstd -d` does.)
struct GzipMembers<R: BufRead> {
    /// The member being read; `None` once the stream has ended or failed.
    member: Option<flate2::bufread::GzDecoder<R>>,
    failed: bool,
}

impl<R: BufRead> GzipMembers<R> {
    fn new(input: R) -> GzipMembers<R> {
        GzipMembers {
            member: Some(flate2::bufread::GzDecoder::new(input)),
            failed: false,
        }
    }
}

impl<R: BufRead> Read for GzipMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the gzip stream failed earlier",
            ));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(member) = self.member.as_mut() else {
                return Ok(0);
            };
            // 0 from a member means its trailer (CRC and length) checked out.
            match member.read(buf) {
                Ok(0) => {}
                Ok(n) => return Ok(n),
                Err(e) => {
                    self.failed = true;
                    self.member = None;
                    return Err(e);
                }
            }
            let Some(mut rest) = self.member.take().map(|m| m.into_inner()) else {
                return Ok(0);
            };
            match after_member(&mut rest) {
                Ok(true) => self.member = Some(flate2::bufread::GzDecoder::new(rest)),
                Ok(false) => return Ok(0),
                Err(e) => {
                    self.failed = true;
                    return Err(e);
                }
            }
        }
    }
}

/// What follows a gzip member: `true` for another member (its header is checked when it is
/// read), `false` for the end of the stream, after any zero padding, which is consumed.
fn after_member(rest: &mut impl BufRead) -> io::Result<bool> {
    let mut padding = false;
    loop {
        let buf = rest.fill_buf()?;
        let Some(&first) = buf.first() else {
            return Ok(false);
        };
        if first == 0x1f && !padding {
            return Ok(true);
        }
        let zeros = buf.iter().take_while(|&&b| b == 0).count();
        if zeros == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "trailing garbage after the last gzip member (only zero padding may follow it)",
            ));
        }
        padding = true;
        rest.consume(zeros);
    }
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

    #[test]
    fn sniffs_sqlite_in_every_codec_and_nothing_else() {
        let mut db = crate::dbfile::SQLITE_MAGIC.to_vec();
        db.extend(sample(300_000));
        let packed = |codec: Codec, data: &[u8]| {
            let mut out = Vec::new();
            compress(
                &mut &data[..],
                &mut out,
                codec,
                codec.level(None).unwrap(),
                1,
            )
            .unwrap();
            out
        };
        for codec in [Codec::None, Codec::Gzip, Codec::Zstd] {
            assert!(holds_sqlite(&mut &packed(codec, &db)[..]), "{codec:?}");
            let other = packed(codec, &sample(300_000));
            assert!(!holds_sqlite(&mut &other[..]), "{codec:?} of other bytes");
        }
        // zstd at its highest level: one 128 KiB block before any output.
        let mut noisy = crate::dbfile::SQLITE_MAGIC.to_vec();
        noisy.extend((0..400_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8));
        let high = zstd::bulk::compress(&noisy, 19).unwrap();
        assert!(holds_sqlite(&mut &high[..]));
        for junk in [
            &b""[..],
            b"SQLite format",
            b"\x1f\x8b",
            b"\x28\xb5\x2f\xfd",
            b"text file\n",
        ] {
            assert!(!holds_sqlite(&mut &junk[..]), "{junk:?}");
        }
        // A gzip bomb followed by an endless stream: read up to the limit at most.
        let bomb = packed(Codec::Gzip, &vec![0u8; 4 << 20]);
        let mut endless = Counting(0, (&bomb[..]).chain(io::repeat(0)));
        assert!(!holds_sqlite(&mut endless));
        assert!(endless.0 <= SNIFF_LIMIT, "read {}", endless.0);
    }

    struct Counting<R>(u64, R);

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.read(buf)?;
            self.0 += n as u64;
            Ok(n)
        }
    }

    fn compressed(codec: Codec, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        compress(&mut &data[..], &mut out, codec, 1, 1).unwrap();
        out
    }

    /// Decodes `stored` as a backup would be read: the codec found and everything or the error.
    fn decode(stored: Vec<u8>) -> (Codec, io::Result<Vec<u8>>) {
        let (codec, mut dec) = decoder(Box::new(io::Cursor::new(stored))).unwrap();
        let mut back = Vec::new();
        let result = dec.read_to_end(&mut back).map(|_| back);
        (codec, result)
    }

    fn skippable(nibble: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x50 | nibble, 0x2a, 0x4d, 0x18];
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn gzip_accepts_zero_padding_and_refuses_other_trailing_bytes() {
        // As `gzip -d`: zeros to the end are padding (exit 0); anything else after the last
        // member is "trailing garbage" (exit 2), refused here.
        let data = sample(300_000);
        let gz = compressed(Codec::Gzip, &data);
        let with = |tail: &[u8]| [gz.as_slice(), tail].concat();
        for tail in [&[0u8][..], &[0; 4], &vec![0; 3 << 20]] {
            assert_eq!(decode(with(tail)).1.unwrap(), data, "{} zeros", tail.len());
        }
        // Another member after the first is data.
        let two = decode([gz.clone(), gz.clone(), vec![0; 512]].concat())
            .1
            .unwrap();
        assert_eq!(two, [data.clone(), data.clone()].concat());
        for tail in [
            &b"x"[..],
            b"\0\0\0x",
            b"\x1f",
            b"\x1f\x8b",
            b"\x1f\x8b\x08\0\0\0\0\0\0\x03garbage",
            b"\0\x1f\x8b",
        ] {
            let err = decode(with(tail)).1.unwrap_err();
            assert!(!err.to_string().is_empty(), "{tail:?}");
        }
        // A member after zero padding is garbage to gzip too.
        assert!(decode([gz.clone(), vec![0; 8], gz.clone()].concat())
            .1
            .is_err());
        // Reading again after a failure fails again, never ends quietly.
        let (_, mut dec) = decoder(Box::new(io::Cursor::new(with(b"x")))).unwrap();
        let mut sink = Vec::new();
        assert!(dec.read_to_end(&mut sink).is_err());
        assert!(dec.read(&mut [0u8; 16]).is_err());
    }

    #[test]
    fn zstd_accepts_skippable_frames_and_refuses_trailing_zeros() {
        // As `zstd -d`: skippable frames anywhere are skipped; zeros or garbage after the last
        // frame, and a cut-off skippable frame, are errors.
        let data = sample(300_000);
        let zst = compressed(Codec::Zstd, &data);
        let skip = skippable(0, b"pzstd puts the frame size here");
        let twice = [data.clone(), data.clone()].concat();
        for (stored, want) in [
            ([skip.clone(), zst.clone()].concat(), &data),
            ([zst.clone(), skippable(0xf, b"")].concat(), &data),
            (
                [&skip, &zst, &skip, &zst, &skip]
                    .map(|v| v.as_slice())
                    .concat(),
                &twice,
            ),
        ] {
            let (codec, back) = decode(stored);
            assert_eq!(codec, Codec::Zstd);
            assert_eq!(back.unwrap(), *want);
        }
        let cut = skippable(3, b"0123456789");
        for stored in [
            [zst.clone(), vec![0]].concat(),
            [zst.clone(), vec![0; 4096]].concat(),
            [zst.clone(), b"garbage".to_vec()].concat(),
            [zst.clone(), cut[..cut.len() - 1].to_vec()].concat(),
            zst[..zst.len() - 1].to_vec(),
        ] {
            assert!(decode(stored).1.is_err());
        }
        // Only the skippable-frame magics count as zstd.
        assert_eq!(Codec::detect(&[0x4f, 0x2a, 0x4d, 0x18]), Codec::None);
        assert_eq!(Codec::detect(&[0x60, 0x2a, 0x4d, 0x18]), Codec::None);
        assert_eq!(Codec::detect(b"SQLite format 3\0"), Codec::None);
    }
}
