//! The SQLite database header (<https://www.sqlite.org/fileformat2.html#the_database_header>):
//! what a decompressed backup must start with, and how long it may be. Verify checks the
//! first 100 bytes as they stream in and stops at the size they declare, so a decompression
//! bomb or a foreign file costs 100 bytes of disk, not gigabytes.

use crate::snapshot::{page_size, SQLITE_MAGIC};

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
}
