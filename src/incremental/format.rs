//! The two on-disk shapes of an incremental series (README "Incremental backups: format"),
//! little-endian throughout:
//!
//! - the page list `<name>.pages`, beside every backup of a series, uncompressed (its bulk is
//!   hashes, which do not compress): header, then for a full backup one 16-byte hash per page
//!   in page order, for an incremental one (u32 page number, 16-byte hash) per changed page in
//!   page order, then the blake3 of everything before it (32 bytes);
//! - an incremental's object, compressed with the name's codec: header (with its own magic),
//!   then (u32 page number, page) per changed page in page order.
//!
//! The header: magic (16 bytes), format version (u32), kind (u8: 0 full, 1 incremental),
//! page size (u32), page count of the database this backup restores to (u64), that database's
//! sha256 (32 bytes), backup time (i64 Unix seconds), depth (u32: incrementals since the full),
//! the backup's own name, the base's name and the full's name (u16 length + UTF-8 each, relative
//! to the backup location: directory or S3 prefix; empty base for a full), and the number of
//! entries that follow (u64).

use std::io::{self, Read, Write};

use crate::error::{Error, Result};

/// First bytes of a page list.
pub const PAGES_MAGIC: &[u8; 16] = b"sqlite-backup-p\0";
/// First bytes of an incremental's object (after decompression).
pub const DELTA_MAGIC: &[u8; 16] = b"sqlite-backup-i\0";
pub const VERSION: u32 = 1;
/// Suffix of a backup's page list.
pub const PAGES_SUFFIX: &str = ".pages";
/// Bytes of a page hash: blake3 truncated to 128 bits (a collision costs ~2^64 work).
pub const HASH_LEN: usize = 16;
pub type Hash = [u8; HASH_LEN];
/// The most a header can take (two names of at most 64 KiB each): what listings read.
pub const MAX_HEADER: u64 = 16 + 4 + 1 + 4 + 8 + 32 + 8 + 4 + 3 * (2 + 65535) + 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Full,
    Incremental,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub page_size: u32,
    pub page_count: u64,
    pub sha256: [u8; 32],
    pub time: i64,
    pub depth: u32,
    /// This backup's own name when it was taken.
    pub name: String,
    /// The backup this one applies on (empty for a full).
    pub base: String,
    /// The full backup of the chain (itself for a full).
    pub full: String,
    /// Entries (page hashes, or page records) that follow.
    pub entries: u64,
}

pub fn page_hash(page: &[u8]) -> Hash {
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(&blake3::hash(page).as_bytes()[..HASH_LEN]);
    out
}

/// `name.pages`.
pub fn pages_name(name: &str) -> String {
    format!("{name}{PAGES_SUFFIX}")
}

/// The backup a page list belongs to.
pub fn owner_of(pages: &str) -> Option<&str> {
    pages.strip_suffix(PAGES_SUFFIX).filter(|n| !n.is_empty())
}

impl Header {
    pub fn write(&self, magic: &[u8; 16], out: &mut dyn Write) -> io::Result<()> {
        out.write_all(magic)?;
        out.write_all(&VERSION.to_le_bytes())?;
        out.write_all(&[match self.kind {
            Kind::Full => 0,
            Kind::Incremental => 1,
        }])?;
        out.write_all(&self.page_size.to_le_bytes())?;
        out.write_all(&self.page_count.to_le_bytes())?;
        out.write_all(&self.sha256)?;
        out.write_all(&self.time.to_le_bytes())?;
        out.write_all(&self.depth.to_le_bytes())?;
        for name in [&self.name, &self.base, &self.full] {
            let len = u16::try_from(name.len())
                .map_err(|_| io::Error::other("a backup name is over 65535 bytes"))?;
            out.write_all(&len.to_le_bytes())?;
            out.write_all(name.as_bytes())?;
        }
        out.write_all(&self.entries.to_le_bytes())
    }

    /// Reads a header that must start with `magic`; `what` names the file in errors.
    pub fn read(magic: &[u8; 16], input: &mut dyn Read, what: &str) -> Result<Header> {
        let bad = |why: &str| Error::corrupt(format!("{what} is damaged: {why}"));
        let io = |e: io::Error| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                bad("it ends inside its header")
            } else {
                Error::io(format!("cannot read {what}"), e)
            }
        };
        let mut m = [0u8; 16];
        input.read_exact(&mut m).map_err(io)?;
        if &m != magic {
            return Err(bad("wrong magic bytes"));
        }
        let version = u32::from_le_bytes(array(input).map_err(io)?);
        if version != VERSION {
            return Err(Error::corrupt(format!(
                "{what} has format version {version}; this extension reads version {VERSION}: \
                 use a newer sqlite-backup"
            )));
        }
        let [kind] = array::<1>(input).map_err(io)?;
        let kind = match kind {
            0 => Kind::Full,
            1 => Kind::Incremental,
            _ => return Err(bad("unknown kind")),
        };
        let page_size = u32::from_le_bytes(array(input).map_err(io)?);
        let page_count = u64::from_le_bytes(array(input).map_err(io)?);
        // An empty database has no page size.
        let empty = page_size == 0 && page_count == 0;
        if !empty && (!(512..=65536).contains(&page_size) || !page_size.is_power_of_two()) {
            return Err(bad("invalid page size"));
        }
        let sha256 = array::<32>(input).map_err(io)?;
        let time = i64::from_le_bytes(array(input).map_err(io)?);
        let depth = u32::from_le_bytes(array(input).map_err(io)?);
        let mut names = [String::new(), String::new(), String::new()];
        for name in &mut names {
            let len = u16::from_le_bytes(array(input).map_err(io)?);
            let mut bytes = vec![0u8; usize::from(len)];
            input.read_exact(&mut bytes).map_err(io)?;
            *name = String::from_utf8(bytes).map_err(|_| bad("a name is not UTF-8"))?;
        }
        let [name, base, full] = names;
        let entries = u64::from_le_bytes(array(input).map_err(io)?);
        if (kind == Kind::Full) != base.is_empty() || full.is_empty() || name.is_empty() {
            return Err(bad("its base and full names do not fit its kind"));
        }
        if kind == Kind::Full && entries != page_count {
            return Err(bad("a full page list must hash every page"));
        }
        if entries > page_count {
            return Err(bad("more entries than pages"));
        }
        Ok(Header {
            kind,
            page_size,
            page_count,
            sha256,
            time,
            depth,
            name,
            base,
            full,
            entries,
        })
    }

    pub fn bytes(&self) -> u64 {
        self.page_count.saturating_mul(u64::from(self.page_size))
    }
}

pub fn array<const N: usize>(input: &mut dyn Read) -> io::Result<[u8; N]> {
    let mut a = [0u8; N];
    input.read_exact(&mut a)?;
    Ok(a)
}

/// A page list as a chain keeps it: its header (its entries went to a `Sink` as they were
/// read, so memory does not grow with them).
#[derive(Debug)]
pub struct PageList {
    pub header: Header,
}

/// Writes a page list: `entries` yields (page number, hash) in page order, or the error
/// that stopped it (they are read back from a temp file).
pub fn write_page_list(
    header: &Header,
    entries: impl Iterator<Item = io::Result<(u32, Hash)>>,
    out: &mut dyn Write,
) -> io::Result<()> {
    let mut hashing = Blake3Writer {
        inner: out,
        hasher: blake3::Hasher::new(),
    };
    let mut buf = io::BufWriter::with_capacity(1 << 16, &mut hashing);
    header.write(PAGES_MAGIC, &mut buf)?;
    for entry in entries {
        let (page, hash) = entry?;
        if header.kind == Kind::Incremental {
            buf.write_all(&page.to_le_bytes())?;
        }
        buf.write_all(&hash)?;
    }
    buf.flush()?;
    drop(buf);
    let sum = hashing.hasher.finalize();
    hashing.inner.write_all(sum.as_bytes())
}

/// Where the entries of a page list go as they are read (checked, in page order).
pub trait Sink {
    /// The header, before any entry.
    fn start(&mut self, header: &Header) -> Result<()>;
    fn entry(&mut self, page: u32, hash: &Hash) -> Result<()>;
}

/// Keeps the entries in memory (an incremental's page numbers, and the hashes): tests only.
#[cfg(test)]
#[derive(Default, Debug)]
struct Collect {
    header: Option<Header>,
    kind: Option<Kind>,
    pages: Vec<u32>,
    hashes: Vec<Hash>,
    what: String,
}

#[cfg(test)]
impl Sink for Collect {
    fn start(&mut self, header: &Header) -> Result<()> {
        self.kind = Some(header.kind);
        Ok(())
    }
    fn entry(&mut self, page: u32, hash: &Hash) -> Result<()> {
        let oom = || {
            Error::new(
                crate::error::Kind::Io,
                format!("out of memory reading {}", self.what),
            )
        };
        if self.kind == Some(Kind::Incremental) {
            self.pages.try_reserve(1).map_err(|_| oom())?;
            self.pages.push(page);
        }
        self.hashes.try_reserve(1).map_err(|_| oom())?;
        self.hashes.push(*hash);
        Ok(())
    }
}

/// Reads a page list whole (tests).
#[cfg(test)]
fn read_page_list(input: &mut dyn Read, what: &str, full_hashes: bool) -> Result<Collect> {
    let mut collect = Collect {
        what: what.to_string(),
        ..Collect::default()
    };
    let header = read_page_list_into(input, what, full_hashes, &mut collect)?;
    collect.header = Some(header);
    Ok(collect)
}

/// Reads a page list, handing its entries to `sink` as they come (memory independent of their
/// number); a full's entries only when `full_hashes`. The checksum is checked at the end: a
/// sink must not trust what it got until this returns Ok.
pub fn read_page_list_into(
    input: &mut dyn Read,
    what: &str,
    full_hashes: bool,
    sink: &mut dyn Sink,
) -> Result<Header> {
    let mut buffered = io::BufReader::with_capacity(1 << 16, input);
    let header = Header::read(PAGES_MAGIC, &mut buffered, what)?;
    sink.start(&header)?;
    if header.kind == Kind::Full && !full_hashes {
        return Ok(header);
    }
    let bad = |why: &str| Error::corrupt(format!("{what} is damaged: {why}"));
    let io = |e: io::Error| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            bad("it is truncated")
        } else {
            Error::io(format!("cannot read {what}"), e)
        }
    };
    // The checksum, over the header and entries as encoded.
    let mut check = blake3::Hasher::new();
    let mut head = Vec::new();
    header
        .write(PAGES_MAGIC, &mut head)
        .map_err(|e| Error::io("cannot encode a header", e))?;
    check.update(&head);
    let mut previous = 0u32;
    for i in 0..header.entries {
        let page = match header.kind {
            Kind::Full => u32::try_from(i + 1).map_err(|_| bad("too many pages"))?,
            Kind::Incremental => {
                let n = array(&mut buffered).map_err(io)?;
                check.update(&n);
                u32::from_le_bytes(n)
            }
        };
        if page <= previous || u64::from(page) > header.page_count {
            return Err(bad("its page numbers are out of order or out of range"));
        }
        previous = page;
        let hash: Hash = array(&mut buffered).map_err(io)?;
        check.update(&hash);
        sink.entry(page, &hash)?;
    }
    // The checksum, and nothing after it.
    let mut rest = Vec::new();
    buffered
        .take(64)
        .read_to_end(&mut rest)
        .map_err(|e| Error::io(format!("cannot read {what}"), e))?;
    if rest.as_slice() != check.finalize().as_bytes() {
        return Err(bad("its checksum does not match (changed or truncated)"));
    }
    Ok(header)
}

/// Reads only a page list's header (listings, retention).
pub fn read_page_list_header(input: &mut dyn Read, what: &str) -> Result<Header> {
    Header::read(PAGES_MAGIC, &mut io::BufReader::new(input), what)
}

struct Blake3Writer<'a> {
    inner: &'a mut dyn Write,
    hasher: blake3::Hasher,
}

impl Write for Blake3Writer<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: Kind, entries: u64) -> Header {
        Header {
            kind,
            page_size: 4096,
            page_count: 3,
            sha256: [7; 32],
            time: 1_700_000_000,
            depth: u32::from(kind == Kind::Incremental),
            name: "b.zst".into(),
            base: if kind == Kind::Full { "" } else { "a.zst" }.into(),
            full: "a.zst".into(),
            entries,
        }
    }

    #[test]
    fn page_lists_round_trip_and_detect_damage() {
        for (kind, entries) in [
            (Kind::Full, vec![(1, [1; 16]), (2, [2; 16]), (3, [3; 16])]),
            (Kind::Incremental, vec![(2, [9; 16])]),
        ] {
            let h = header(kind, entries.len() as u64);
            let mut bytes = Vec::new();
            write_page_list(&h, entries.clone().into_iter().map(Ok), &mut bytes).unwrap();
            let list = read_page_list(&mut &bytes[..], "x", true).unwrap();
            assert_eq!(list.header, Some(h.clone()));
            let hashes: Vec<Hash> = entries.iter().map(|e| e.1).collect();
            assert_eq!(list.hashes, hashes);
            if kind == Kind::Incremental {
                assert_eq!(list.pages, [2]);
            }
            assert_eq!(read_page_list_header(&mut &bytes[..], "x").unwrap(), h);
            // Any flipped byte or a cut is found.
            for at in [0, 20, bytes.len() - 40, bytes.len() - 1] {
                let mut bad = bytes.clone();
                bad[at] ^= 1;
                let err = read_page_list(&mut &bad[..], "x", true).unwrap_err();
                assert_eq!(err.kind, crate::error::Kind::Corrupt, "{at}: {err:?}");
            }
            let cut = &bytes[..bytes.len() - 5];
            assert!(read_page_list(&mut &cut[..], "x", true).is_err());
        }
    }

    #[test]
    fn a_huge_entry_count_allocates_only_what_is_read() {
        let mut h = header(Kind::Incremental, 1);
        h.page_count = u64::MAX;
        h.entries = u64::MAX / 2;
        let mut bytes = Vec::new();
        write_page_list(&h, std::iter::empty(), &mut bytes).unwrap();
        let err = read_page_list(&mut &bytes[..], "x", true).unwrap_err();
        assert_eq!(err.kind, crate::error::Kind::Corrupt, "{err:?}");
    }
}
