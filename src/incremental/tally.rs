//! Page hashes of a stream (method `stream`): the snapshot's bytes go through a `Tally` as
//! they arrive, in page order, and nothing of them is kept but each page's hash, the pages
//! that differ from the base (their hashes, and with `keep` their bytes), and the whole's
//! sha256 — all in unnamed temp files, so memory does not grow with the database.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::format::{self, HASH_LEN};

/// What a pass tallied.
pub struct Tallied {
    pub sha256: [u8; 32],
    /// Every page's hash in page order, 16 bytes each.
    pub map: File,
    /// Pages that differ from the base: (u32 page number, hash) records.
    pub changed: File,
    pub changed_count: u64,
    /// With `keep`: the changed pages as an incremental's object records them (u32 page
    /// number, page), in page order.
    pub bodies: Option<File>,
    /// Bytes that went through.
    pub bytes: u64,
}

pub struct Tally<'a> {
    page_size: usize,
    sha: Sha256,
    base: Option<BufReader<&'a File>>,
    /// Pages in the base (its hashes past this are none).
    had: u64,
    map: BufWriter<File>,
    changed: BufWriter<File>,
    changed_count: u64,
    bodies: Option<BufWriter<File>>,
    /// Bytes of the page being gathered.
    partial: Vec<u8>,
    /// Pages tallied so far.
    pages: u64,
}

impl<'a> Tally<'a> {
    /// `base`: the previous backup's page hashes (16 bytes a page, in page order) and its
    /// page count. `keep`: also keep the bytes of changed pages.
    pub fn new(
        page_size: usize,
        base: Option<(&'a File, u64)>,
        keep: bool,
        dir: &Path,
    ) -> io::Result<Tally<'a>> {
        let (base, had) = match base {
            Some((file, had)) => {
                let mut f = file;
                f.seek(SeekFrom::Start(0))?;
                (Some(BufReader::with_capacity(1 << 16, file)), had)
            }
            None => (None, 0),
        };
        let mut partial = Vec::new();
        partial
            .try_reserve_exact(page_size)
            .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        let file = || crate::temp::unnamed(dir).map(|f| BufWriter::with_capacity(1 << 16, f));
        Ok(Tally {
            page_size,
            sha: Sha256::new(),
            base,
            had,
            map: file()?,
            changed: file()?,
            changed_count: 0,
            bodies: if keep { Some(file()?) } else { None },
            partial,
            pages: 0,
        })
    }

    fn page(&mut self, page: &[u8]) -> io::Result<()> {
        let h = format::page_hash(page);
        let i = self.pages;
        let same = match &mut self.base {
            Some(b) if i < self.had => format::array::<HASH_LEN>(b)? == h,
            _ => false,
        };
        if !same {
            let number = u32::try_from(i + 1)
                .map_err(|_| io::Error::other("the database has too many pages"))?;
            self.changed.write_all(&number.to_le_bytes())?;
            self.changed.write_all(&h)?;
            if let Some(bodies) = &mut self.bodies {
                bodies.write_all(&number.to_le_bytes())?;
                bodies.write_all(page)?;
            }
            self.changed_count += 1;
        }
        self.map.write_all(&h)?;
        self.pages += 1;
        Ok(())
    }

    /// The sha256 of what went through so far.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha.clone().finalize().into()
    }

    pub fn finish(self) -> io::Result<Tallied> {
        if !self.partial.is_empty() {
            return Err(io::Error::other("the stream ended inside a page"));
        }
        let done = |w: BufWriter<File>| w.into_inner().map_err(|e| e.into_error());
        Ok(Tallied {
            sha256: self.sha.finalize().into(),
            map: done(self.map)?,
            changed: done(self.changed)?,
            changed_count: self.changed_count,
            bodies: self.bodies.map(done).transpose()?,
            bytes: self.pages * self.page_size as u64,
        })
    }
}

impl Write for Tally<'_> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        self.sha.update(buf);
        while !buf.is_empty() {
            if self.partial.is_empty() && buf.len() >= self.page_size {
                let (page, rest) = buf.split_at(self.page_size);
                self.page(page)?;
                buf = rest;
                continue;
            }
            let take = (self.page_size - self.partial.len()).min(buf.len());
            let (head, rest) = buf.split_at(take);
            self.partial.extend_from_slice(head);
            buf = rest;
            if self.partial.len() == self.page_size {
                let page = std::mem::take(&mut self.partial);
                let kept = self.page(&page);
                self.partial = page;
                self.partial.clear();
                kept?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Tallies what it reads (compression's input, in the one-pass full backup).
pub struct TallyReader<'t, 'a, R> {
    pub inner: R,
    pub tally: &'t mut Tally<'a>,
}

impl<R: Read> Read for TallyReader<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.tally.write_all(buf.get(..n).unwrap_or_default())?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(mut f: &File) -> Vec<u8> {
        let mut v = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    }

    #[test]
    fn pages_split_across_writes_are_hashed_whole_and_compared_with_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let ps = 512;
        let pages: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; ps]).collect();
        // Base: pages 1-3 as now, page 2 different; page 4 and 5 are new.
        let mut base = crate::temp::unnamed(dir.path()).unwrap();
        for (i, p) in pages.iter().take(3).enumerate() {
            let h = if i == 1 {
                format::page_hash(&[9; 512])
            } else {
                format::page_hash(p)
            };
            base.write_all(&h).unwrap();
        }
        let mut tally = Tally::new(ps, Some((&base, 3)), true, dir.path()).unwrap();
        let all: Vec<u8> = pages.concat();
        // Odd-sized writes: pages arrive in pieces.
        for chunk in all.chunks(300) {
            tally.write_all(chunk).unwrap();
        }
        let t = tally.finish().unwrap();
        assert_eq!(t.bytes, 5 * ps as u64);
        assert_eq!(t.sha256, <[u8; 32]>::from(Sha256::digest(&all)));
        assert_eq!(t.changed_count, 3);
        let changed = read_all(&t.changed);
        let numbers: Vec<u32> = changed
            .chunks(20)
            .map(|r| u32::from_le_bytes(r[..4].try_into().unwrap()))
            .collect();
        assert_eq!(numbers, [2, 4, 5]);
        let bodies = read_all(t.bodies.as_ref().unwrap());
        assert_eq!(bodies.len(), 3 * (4 + ps));
        assert_eq!(&bodies[4..4 + ps], &pages[1][..]);
        assert_eq!(read_all(&t.map).len(), 5 * HASH_LEN);
        // A stream that stops inside a page is not a database.
        let mut short = Tally::new(ps, None, false, dir.path()).unwrap();
        short.write_all(&all[..700]).unwrap();
        assert!(short.finish().is_err());
    }
}
