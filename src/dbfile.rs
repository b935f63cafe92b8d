//! Facts about SQLite database files, for everything that makes, checks or recognises one:
//! the database header (<https://www.sqlite.org/fileformat2.html#the_database_header>) and
//! the sha256 that names a backup's content.
//!
//! The header is what a decompressed backup must start with, and says how long it may be.
//! Verify checks the first 100 bytes as they stream in and stops at the size they declare, so a
//! decompression bomb or a foreign file costs 100 bytes of disk, not gigabytes.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

use crate::error::Error;

/// What every SQLite database file starts with.
pub const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// Bytes in the header; a database is never shorter.
pub const LEN: usize = 100;

/// When the header does not record the database's size (files last written by SQLite before
/// 3.7.0), the output may be at most this many times the stored size: DEFLATE's largest
/// possible ratio, so every gzip file passes and a zstd bomb stops where gzip's would.
pub const MAX_RATIO: u64 = 1032;

/// ... and at least this much, so a tiny stored file of a sparse old database still passes.
pub const MIN_UNDECLARED: u64 = 16 << 20;

/// What the header says about the whole file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub page_size: u32,
    /// page size × "in-header database size" (offset 28), when valid: non-zero and written by
    /// the same transaction as the change counter (offset 24 = "version-valid-for" at 92),
    /// which is always true for files SQLite 3.7.0+ writes, VACUUM INTO and backup API copies.
    pub declared: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// No byte at all.
    Empty,
    /// Fewer than [`LEN`] bytes.
    Short(usize),
    /// The magic string is missing.
    NotSqlite,
    /// The page size field is not a power of two from 512 to 65536.
    PageSize(u32),
}

/// Reads the first bytes of a database (all of them when shorter than [`LEN`]).
pub fn parse(head: &[u8]) -> Result<Header, Problem> {
    let Some(head) = head.get(..LEN) else {
        return Err(if head.is_empty() {
            Problem::Empty
        } else if !SQLITE_MAGIC.starts_with(head) && !head.starts_with(SQLITE_MAGIC) {
            Problem::NotSqlite
        } else {
            Problem::Short(head.len())
        });
    };
    if !head.starts_with(SQLITE_MAGIC) {
        return Err(Problem::NotSqlite);
    }
    let size = page_size(head);
    if !(512..=65536).contains(&size) || !size.is_power_of_two() {
        return Err(Problem::PageSize(size));
    }
    let be32 = |at: usize| {
        head.get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
    };
    let pages = be32(28).unwrap_or(0);
    let declared = (pages != 0 && be32(24) == be32(92)).then(|| u64::from(size) * u64::from(pages));
    Ok(Header {
        page_size: size,
        declared,
    })
}

impl Header {
    /// The most bytes the decompressed file may have; `stored` is its size as stored.
    pub fn limit(&self, stored: u64) -> u64 {
        self.declared
            .unwrap_or_else(|| stored.saturating_mul(MAX_RATIO).max(MIN_UNDECLARED))
    }
}

/// The page size a header records (bytes 16-17; the value 1 means 65536), 0 when `header`
/// is too short to hold it.
pub fn page_size(header: &[u8]) -> u32 {
    match header.get(16..18) {
        Some(&[hi, lo]) => match u16::from_be_bytes([hi, lo]) {
            1 => 65536,
            n => u32::from(n),
        },
        _ => 0,
    }
}

/// The first [`LEN`] bytes of `file` when they are a SQLite database header, else None.
pub fn database_header(file: &mut File) -> io::Result<Option<[u8; LEN]>> {
    let mut header = [0u8; LEN];
    file.seek(SeekFrom::Start(0))?;
    match file.read_exact(&mut header) {
        Ok(()) => Ok(header.starts_with(SQLITE_MAGIC).then_some(header)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// sha256 (hex) of everything `reader` yields; `what` names it in errors.
pub fn sha256_reader(reader: &mut dyn Read, what: &str) -> crate::error::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        // if_changed hashes before compressing; on the hashing thread this is a no-op.
        crate::interrupt::check()?;
        let n = reader
            .read(&mut buf)
            .map_err(|e| Error::io(format!("cannot read {what}"), e))?;
        if n == 0 {
            break;
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    Ok(hex(&hasher.finalize()))
}

/// Lower-case hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(page_field: u16, counter: u32, pages: u32, valid_for: u32) -> Vec<u8> {
        let mut h = vec![0u8; LEN];
        h[..16].copy_from_slice(SQLITE_MAGIC);
        h[16..18].copy_from_slice(&page_field.to_be_bytes());
        h[24..28].copy_from_slice(&counter.to_be_bytes());
        h[28..32].copy_from_slice(&pages.to_be_bytes());
        h[92..96].copy_from_slice(&valid_for.to_be_bytes());
        h
    }

    #[test]
    fn declared_size_only_when_valid() {
        let ok = parse(&header(4096, 7, 3, 7)).unwrap();
        assert_eq!(ok.page_size, 4096);
        assert_eq!(ok.declared, Some(3 * 4096));
        assert_eq!(ok.limit(10), 3 * 4096);
        // 1 means 65536; the largest declared size fits in u64.
        let big = parse(&header(1, 1, u32::MAX, 1)).unwrap();
        assert_eq!(big.declared, Some(65536 * u64::from(u32::MAX)));
        // Stale (counter moved on) or zero: unknown, bounded by the stored size.
        for h in [header(4096, 8, 3, 7), header(4096, 7, 0, 7)] {
            let parsed = parse(&h).unwrap();
            assert_eq!(parsed.declared, None);
            assert_eq!(parsed.limit(1 << 20), MAX_RATIO << 20);
            assert_eq!(parsed.limit(10), MIN_UNDECLARED);
            assert_eq!(parsed.limit(u64::MAX), u64::MAX);
        }
    }

    #[test]
    fn what_is_not_a_database() {
        assert_eq!(parse(b""), Err(Problem::Empty));
        assert_eq!(parse(&[0u8; 4096]), Err(Problem::NotSqlite));
        assert_eq!(parse(b"hello"), Err(Problem::NotSqlite));
        assert_eq!(parse(b"SQLite"), Err(Problem::Short(6)));
        assert_eq!(parse(&header(4096, 1, 1, 1)[..99]), Err(Problem::Short(99)));
        for bad in [0u16, 2, 256, 1000, 4097] {
            assert_eq!(
                parse(&header(bad, 1, 1, 1)),
                Err(Problem::PageSize(u32::from(bad)))
            );
        }
        assert!(parse(&header(512, 1, 1, 1)).is_ok());
        assert!(parse(&header(32768, 1, 1, 1)).is_ok());
    }

    #[test]
    fn page_size_of_short_input_is_zero_not_a_panic() {
        assert_eq!(page_size(&[]), 0);
        assert_eq!(page_size(&header(4096, 1, 1, 1)[..17]), 0);
        assert_eq!(page_size(&header(1, 1, 1, 1)), 65536);
    }

    #[test]
    fn database_header_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        for (bytes, is_db) in [
            (header(4096, 1, 1, 1), true),
            (header(4096, 1, 1, 1)[..99].to_vec(), false),
            (vec![0u8; 4096], false),
            (Vec::new(), false),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            let mut file = File::open(&path).unwrap();
            let found = database_header(&mut file).unwrap();
            assert_eq!(found.is_some(), is_db, "{} bytes", bytes.len());
        }
    }

    #[test]
    fn sha256_of_a_reader() {
        let mut empty: &[u8] = b"";
        assert_eq!(
            sha256_reader(&mut empty, "x").unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
