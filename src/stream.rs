//! The streaming snapshot (method `stream`): the online backup API copies the source's pages
//! into a destination on the page sink VFS (`ffi::page_sink`), whose pages go, in order,
//! through a bounded pipe to compression. No copy of the database is written anywhere.
//!
//! Page 1 must be the stream's first bytes, but the destination pager writes it last (it
//! holds page 1 for the whole transaction, and the backup rewrites it at commit). For a
//! database file, our reader notes page 1 as it reads it (`ffi::page1_watch`) and the copy's
//! page 1 is predicted from it (`predicted_page1`). Otherwise a first pass (`capture`) copies
//! the database and keeps page 1 as committed, and the free list. Either way the pass that
//! streams checks that its own committed page 1 is the bytes it began with. All passes run in
//! one read transaction on a second connection (file databases), so they see one database.
//!
//! Free space: in every b-tree page the gap between the cell pointers and the cell content
//! and the bodies of freeblocks are zeroed (a page copy would keep deleted rows there when
//! `secure_delete` is off), and so are fragments; free-list leaves are zeros, trunks keep only
//! their list. The free list is read in the first pass (its trunk pages may come after their
//! leaves). The unused end of an overflow chain's last page is known only from the cell that
//! starts the chain, on a page that may come before or after it, through a chain of pointers
//! in any order: one pass in page order cannot know it without holding pages back (unbounded),
//! so `dbstat` lists those pages first (`Tails`: sorted, bounded, in the same transaction).

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{Error, Kind, Result};
use crate::ffi::page_sink::{self, PageSink};
use crate::ffi::{self, Connection, OpenMode};
use crate::temp::{read_exact_at, write_all_at};

/// Bytes of the pipe held in memory before the writer waits (WAL, memory) or spills
/// (rollback journal).
pub const PIPE_BYTES: usize = 4 << 20;
/// Pages written ahead of their turn (cache order) held until their turn comes.
const PENDING_BYTES: usize = 16 << 20;
/// What the pipe's writer gathers before handing on.
const CHUNK: usize = 256 << 10;
/// The lock-byte page holds byte 0x40000000; SQLite never writes it.
const PENDING_BYTE: u64 = 0x4000_0000;

/// The copy committed another page 1 than the stream began with.
pub const PAGE1_CHANGED: &str = "the database changed between the two passes of the copy";

/// Facts from page 1's header.
#[derive(Debug, Clone)]
pub struct Header {
    pub page_size: usize,
    pub usable: usize,
    pub page_count: u32,
    pub freelist: u32,
    pub autovacuum: bool,
    pub wal: bool,
}

impl Header {
    pub fn parse(page1: &[u8]) -> std::result::Result<Header, String> {
        let bad = || "page 1 is not a SQLite header".to_string();
        if page1.len() < 512 || page1.get(..16) != Some(b"SQLite format 3\0".as_slice()) {
            return Err(bad());
        }
        let be32 = |i: usize| -> u32 {
            page1
                .get(i..i + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0)
        };
        let page_size = crate::dbfile::page_size(page1) as usize;
        if page_size != page1.len() {
            return Err(bad());
        }
        let reserved = page1.get(20).copied().unwrap_or(0) as usize;
        Ok(Header {
            page_size,
            usable: page_size.saturating_sub(reserved),
            page_count: be32(28),
            freelist: be32(36),
            autovacuum: be32(52) != 0,
            wal: page1.get(18) == Some(&2),
        })
    }

    /// The page holding the lock byte, never written by SQLite.
    pub fn lock_page(&self) -> u64 {
        PENDING_BYTE / self.page_size as u64 + 1
    }

    /// Whether `pgno` is a pointer-map page of an auto-vacuum database (not a b-tree page,
    /// though its first byte may read like one).
    fn is_ptrmap(&self, pgno: u32) -> bool {
        if !self.autovacuum || pgno < 2 {
            return false;
        }
        let per_map = (self.usable / 5 + 1) as u64;
        let mut map = (u64::from(pgno) - 2) / per_map * per_map + 2;
        if map == self.lock_page() {
            map += 1;
        }
        map == u64::from(pgno)
    }
}

/// Zeroes the free space of a b-tree page: the gap between the cell pointer array and the
/// cell content, and each freeblock's body (its 4-byte header stays). `hdr` is 100 for page 1.
/// A page that does not hold together as a b-tree page is left as it is.
pub fn zero_free_space(page: &mut [u8], hdr: usize, usable: usize) {
    if let Some((gap, blocks)) = free_space(page, hdr, usable) {
        let frags = fragments(page, hdr, usable, gap.end, &blocks).unwrap_or_default();
        let mut zero = |r: std::ops::Range<usize>| {
            if let Some(b) = page.get_mut(r) {
                b.fill(0)
            }
        };
        zero(gap);
        for b in blocks {
            zero(b);
        }
        for f in frags {
            zero(f);
        }
    }
}

/// A SQLite varint at `at`: its value and length.
fn varint(page: &[u8], at: usize) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for i in 0..9 {
        let b = *page.get(at + i)?;
        if i == 8 {
            return Some(((value << 8) | u64::from(b), 9));
        }
        value = (value << 7) | u64::from(b & 0x7f);
        if b < 0x80 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The bytes the cell at `at` takes on a b-tree page of type `kind`, as SQLite allocates it
/// (`cellSizePtr`).
fn cell_size(page: &[u8], at: usize, kind: u8, usable: usize) -> Option<usize> {
    let mut p = at;
    if kind == 2 || kind == 5 {
        p += 4; // left child
    }
    if kind == 5 {
        let (_, n) = varint(page, p)?;
        return Some(p + n - at);
    }
    let (payload, n) = varint(page, p)?;
    p += n;
    if kind == 13 {
        let (_, n) = varint(page, p)?;
        p += n;
    }
    let u = usable as u64;
    let max_local = if kind == 13 {
        u.checked_sub(35)?
    } else {
        ((u.checked_sub(12)?) * 64 / 255).checked_sub(23)?
    };
    let min_local = ((u - 12) * 32 / 255).checked_sub(23)?;
    if payload > u32::MAX as u64 {
        return None;
    }
    if payload <= max_local {
        return Some((p - at + payload as usize).max(4));
    }
    let k = min_local + (payload - min_local) % (u - 4);
    let local = if k <= max_local { k } else { min_local };
    // The local part, then the first overflow page's number.
    Some(p + local as usize + 4 - at)
}

/// The 1-3-byte fragments of a b-tree page: the bytes of its cell content area in no cell
/// and no freeblock. Only when every cell parses, none overlaps another, and their total is
/// the page header's fragment count (as `PRAGMA integrity_check` checks): never a live byte.
/// `content` and `blocks` (freeblock bodies) are what `free_space` found and checked.
fn fragments(
    page: &[u8],
    hdr: usize,
    usable: usize,
    content: usize,
    blocks: &[std::ops::Range<usize>],
) -> Option<Vec<std::ops::Range<usize>>> {
    let kind = *page.get(hdr)?;
    let reported = *page.get(hdr + 7)? as usize;
    if reported == 0 {
        return Some(Vec::new());
    }
    let u16at = |i: usize| {
        page.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    };
    let header_len = if kind == 2 || kind == 5 { 12 } else { 8 };
    let cells = u16at(hdr + 3)?;
    let mut used = Vec::new();
    used.try_reserve_exact(cells + blocks.len()).ok()?;
    for i in 0..cells {
        let at = u16at(hdr + header_len + 2 * i)?;
        let size = cell_size(page, at, kind, usable)?;
        used.push(at..at + size);
    }
    // Freeblocks whole: their 4-byte headers are not fragments either.
    used.extend(blocks.iter().map(|b| b.start - 4..b.end));
    used.sort_unstable_by_key(|r| r.start);
    let mut out = Vec::new();
    let mut at = content;
    for r in used {
        if r.start < at || r.end > usable {
            return None; // overlaps, or outside the content area
        }
        if r.start > at {
            out.push(at..r.start);
        }
        at = r.end;
    }
    if at < usable {
        out.push(at..usable);
    }
    let total: usize = out.iter().map(|r| r.len()).sum();
    (total == reported).then_some(out)
}

fn free_space(
    page: &[u8],
    hdr: usize,
    usable: usize,
) -> Option<(std::ops::Range<usize>, Vec<std::ops::Range<usize>>)> {
    let u16at = |i: usize| {
        page.get(i..i + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    };
    let header_len = match page.get(hdr)? {
        2 | 5 => 12,
        10 | 13 => 8,
        _ => return None,
    };
    if usable > page.len() {
        return None;
    }
    let cells = u16at(hdr + 3)?;
    let content = match u16at(hdr + 5)? {
        0 => 65536,
        n => n,
    };
    let pointers_end = hdr + header_len + 2 * cells;
    if pointers_end > content || content > usable {
        return None;
    }
    for i in 0..cells {
        let at = u16at(hdr + header_len + 2 * i)?;
        if at < content || at >= usable {
            return None;
        }
    }
    let mut blocks = Vec::new();
    let mut at = u16at(hdr + 1)?;
    let mut floor = content;
    while at != 0 {
        let size = u16at(at + 2)?;
        if at < floor || size < 4 || at + size > usable || blocks.len() > usable / 4 {
            return None;
        }
        blocks.push(at + 4..at + size);
        floor = at + size;
        at = u16at(at)?;
    }
    Some((pointers_end..content, blocks))
}

/// Memory for the pages of the first pass that could be free-list trunk pages.
const CANDIDATE_BYTES: usize = 32 << 20;
/// Free-list leaves known at once (4 bytes each).
const MAX_FREE_PAGES: usize = 8 << 20;

/// First pass: keeps page 1 as the destination commits it, and every page that could be a
/// free-list trunk page (page 1, which names the first trunk, comes last).
pub struct Capture {
    pub page1: Vec<u8>,
    /// The source's page count: a trunk page's numbers are all at most this.
    page_count: u32,
    /// Trunk-like pages: next trunk and leaf numbers.
    candidates: BTreeMap<u32, (u32, Vec<u32>)>,
    candidate_bytes: usize,
    /// More trunk-like pages than `CANDIDATE_BYTES` holds: the free list cannot be known.
    overflowed: bool,
}

impl Capture {
    pub fn new(page_count: u32) -> Capture {
        Capture {
            page1: Vec::new(),
            page_count,
            candidates: BTreeMap::new(),
            candidate_bytes: 0,
            overflowed: false,
        }
    }

    /// A trunk page: the next trunk (or 0), a count that fits the page, leaf numbers in range.
    /// A b-tree page never reads as one (its type byte makes the first number at least 2^25,
    /// and streamed databases have fewer pages); an overflow page rarely does, and a false
    /// candidate is only kept, never used unless the chain from page 1 leads to it.
    fn remember_if_trunk(&mut self, pgno: u32, page: &[u8]) {
        let be32 = |i: usize| {
            page.get(i..i + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let (Some(next), Some(count)) = (be32(0), be32(4)) else {
            return;
        };
        if next > self.page_count || count as usize > page.len() / 4 - 2 || self.overflowed {
            return;
        }
        let mut leaves = Vec::new();
        if leaves.try_reserve_exact(count as usize).is_err() {
            self.overflowed = true;
            return;
        }
        for i in 0..count as usize {
            match be32(8 + 4 * i) {
                Some(leaf) if (2..=self.page_count).contains(&leaf) => leaves.push(leaf),
                _ => return,
            }
        }
        self.candidate_bytes += 64 + 4 * leaves.len();
        if self.candidate_bytes > CANDIDATE_BYTES {
            self.overflowed = true;
            self.candidates.clear();
            return;
        }
        self.candidates.insert(pgno, (next, leaves));
    }

    /// The free list page 1 names, walked through the remembered trunk pages.
    pub fn free_list(&self) -> std::result::Result<FreeList, String> {
        let header = Header::parse(&self.page1)?;
        let mut list = FreeList::default();
        if header.freelist == 0 {
            return Ok(list);
        }
        if self.overflowed || header.freelist as usize > MAX_FREE_PAGES {
            return Err(format!(
                "{} free pages are too many to track",
                header.freelist
            ));
        }
        let be32 = |i: usize| {
            self.page1
                .get(i..i + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0)
        };
        let mut trunk = be32(32);
        let max_leaves = header.usable / 4 - 2;
        while trunk != 0 {
            if list.trunks.len() > header.freelist as usize {
                return Err("the free list loops".into());
            }
            let Some((next, leaves)) = self.candidates.get(&trunk) else {
                return Err(format!("free-list trunk page {trunk} was not recognised"));
            };
            if leaves.len() > max_leaves {
                return Err(format!(
                    "free-list trunk page {trunk} holds too many leaves"
                ));
            }
            list.trunks.insert(trunk, leaves.len() as u32);
            list.leaves.extend_from_slice(leaves);
            trunk = *next;
        }
        list.leaves.sort_unstable();
        let distinct = list.leaves.windows(2).all(|w| w[0] != w[1]);
        if !distinct || list.trunks.len() + list.leaves.len() != header.freelist as usize {
            return Err("the free list does not add up to the header's count".into());
        }
        Ok(list)
    }
}

/// What `Source::prepare` found for a streamed pass.
pub struct Prepared {
    pub page1: Vec<u8>,
    pub header: Header,
    pub free: FreeList,
    pub tails: Tails,
}

/// Free pages: trunk pages (how many leaf numbers each holds) and leaf pages, zeroed in the
/// stream (a trunk keeps its numbers).
#[derive(Debug, Default, Clone)]
pub struct FreeList {
    trunks: BTreeMap<u32, u32>,
    leaves: Vec<u32>,
}

/// Most overflow chains whose last page's unused end is tracked (8 bytes each in memory).
const MAX_TAILS: usize = 2 << 20;

/// The last page of each overflow chain whose end is unused, and how many bytes at its end
/// are (`dbstat`'s `unused`), in page order: zeroed in the stream (they keep whatever the page
/// held before, a deleted row's bytes when `secure_delete` is off).
/// Shared: each pass of a backup holds it (up to 16 MiB), none copies it.
#[derive(Debug, Default, Clone)]
pub struct Tails {
    pages: Arc<[(u32, u16)]>,
}

impl Tails {
    /// The unused bytes at the end of `pgno`, if it ends a chain (calls come in page order).
    fn unused(&self, at: &mut usize, pgno: u32) -> Option<usize> {
        while self.pages.get(*at).is_some_and(|&(p, _)| p < pgno) {
            *at += 1;
        }
        match self.pages.get(*at) {
            Some(&(p, unused)) if p == pgno => Some(unused as usize),
            _ => None,
        }
    }
}

impl PageSink for Capture {
    fn write_page(&mut self, pgno: u32, page: &[u8]) -> std::result::Result<(), String> {
        self.remember_if_trunk(pgno, page);
        if pgno == 1 {
            self.page1.clear();
            self.page1
                .try_reserve_exact(page.len())
                .map_err(|_| "out of memory".to_string())?;
            self.page1.extend_from_slice(page);
        }
        Ok(())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> bool {
        read_page1(&self.page1, offset, buf)
    }
}

fn read_page1(page1: &[u8], offset: u64, buf: &mut [u8]) -> bool {
    let Ok(from) = usize::try_from(offset) else {
        return false;
    };
    match page1.get(from..from + buf.len()) {
        Some(bytes) => {
            buf.copy_from_slice(bytes);
            true
        }
        None => false,
    }
}

/// Where an emitting sink puts the stream's bytes.
pub trait Out: Send {
    fn put(&mut self, bytes: &[u8]) -> std::result::Result<(), String>;
}

/// Second pass: the stream, page 1 first and then every page in order. Pages that come
/// ahead of their turn wait (bounded); a page that comes again after it was handed on is an
/// error, never a silently different stream.
pub struct Emit<O> {
    page1: Vec<u8>,
    header: Header,
    next: u32,
    pending: BTreeMap<u32, Vec<u8>>,
    pending_bytes: usize,
    max_pending: usize,
    page1_confirmed: bool,
    free: FreeList,
    tails: Tails,
    tail_at: usize,
    pub out: O,
}

impl<O: Out> Emit<O> {
    /// Starts the stream with page 1 (as `capture` saw it committed).
    pub fn new(
        page1: Vec<u8>,
        free: FreeList,
        max_pending: usize,
        out: O,
    ) -> std::result::Result<Self, String> {
        let header = Header::parse(&page1)?;
        let mut emit = Emit {
            page1,
            header,
            next: 2,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            max_pending,
            page1_confirmed: false,
            free,
            tails: Tails::default(),
            tail_at: 0,
            out,
        };
        let mut first = emit.page1.clone();
        // A WAL database's copy is a rollback-journal file, as the other methods store it.
        if first.get(18..20) == Some([2u8, 2].as_slice()) {
            if let Some(v) = first.get_mut(18..20) {
                v.copy_from_slice(&[1, 1]);
            }
        }
        zero_free_space(&mut first, 100, emit.header.usable);
        emit.out.put(&first)?;
        emit.advance()?;
        Ok(emit)
    }

    /// Also zeroes the unused ends of these overflow pages.
    pub fn with_tails(mut self, tails: Tails) -> Self {
        self.tails = tails;
        self
    }

    /// Hands on page `next` with its free space zeroed.
    fn put_next(&mut self, mut page: Vec<u8>) -> std::result::Result<(), String> {
        let pgno = self.next;
        let usable = self.header.usable;
        if self.free.leaves.binary_search(&pgno).is_ok() {
            page.fill(0);
        } else if let Some(&count) = self.free.trunks.get(&pgno) {
            if let Some(rest) = page.get_mut(8 + 4 * count as usize..usable) {
                rest.fill(0);
            }
        } else if let Some(unused) = self
            .tails
            .unused(&mut self.tail_at, pgno)
            .filter(|_| page.get(..4) == Some([0u8; 4].as_slice()))
        {
            // The last page of a chain (its next-page number is 0).
            if let Some(end) = page.get_mut(usable.saturating_sub(unused)..usable) {
                end.fill(0);
            }
        } else if self.header.is_ptrmap(pgno) {
            // Entries for pages past the end (left by a truncation) and the bytes after the
            // last entry hold nothing SQLite reads.
            let live = self.header.page_count.saturating_sub(pgno) as usize;
            let from = live.min(usable / 5) * 5;
            if let Some(rest) = page.get_mut(from..usable) {
                rest.fill(0);
            }
        } else {
            zero_free_space(&mut page, 0, usable);
        }
        self.out.put(&page)?;
        self.next += 1;
        Ok(())
    }

    /// Hands on the lock-byte page (zeros) and the pages waiting, while it is their turn.
    fn advance(&mut self) -> std::result::Result<(), String> {
        loop {
            if self.next > self.header.page_count {
                return Ok(());
            }
            if u64::from(self.next) == self.header.lock_page() {
                let zeros = vec![0u8; self.header.page_size];
                self.out.put(&zeros)?;
                self.next += 1;
                continue;
            }
            match self.pending.remove(&self.next) {
                Some(page) => {
                    self.pending_bytes -= page.len();
                    self.put_next(page)?;
                }
                None => return Ok(()),
            }
        }
    }

    /// After the last page: every page was handed on and page 1 was confirmed.
    pub fn finish(&mut self) -> std::result::Result<(), String> {
        self.advance()?;
        if !self.page1_confirmed {
            return Err("the copy never committed page 1".into());
        }
        if self.next != self.header.page_count.saturating_add(1) || !self.pending.is_empty() {
            return Err(format!(
                "the copy ended after page {} of {}",
                self.next.saturating_sub(1),
                self.header.page_count
            ));
        }
        Ok(())
    }
}

impl<O: Out> PageSink for Emit<O> {
    fn write_page(&mut self, pgno: u32, page: &[u8]) -> std::result::Result<(), String> {
        if page.len() != self.header.page_size {
            return Err(format!("page {pgno} has {} bytes", page.len()));
        }
        if pgno == 1 {
            if page != self.page1.as_slice() {
                return Err(PAGE1_CHANGED.into());
            }
            self.page1_confirmed = true;
            return Ok(());
        }
        if pgno > self.header.page_count {
            return Err(format!(
                "page {pgno} is beyond the database's {} pages",
                self.header.page_count
            ));
        }
        if pgno < self.next || self.pending.contains_key(&pgno) {
            return Err(format!("page {pgno} was written twice"));
        }
        let mut copy = Vec::new();
        copy.try_reserve_exact(page.len())
            .map_err(|_| "out of memory".to_string())?;
        copy.extend_from_slice(page);
        if pgno == self.next {
            self.put_next(copy)?;
            return self.advance();
        }
        if self.pending_bytes + page.len() > self.max_pending {
            return Err(format!(
                "page {pgno} came more than {} MiB ahead of page {}",
                self.max_pending >> 20,
                self.next
            ));
        }
        self.pending_bytes += page.len();
        self.pending.insert(pgno, copy);
        Ok(())
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> bool {
        if read_page1(&self.page1, offset, buf) {
            return true;
        }
        let size = self.header.page_size as u64;
        let pgno = u32::try_from(offset / size + 1).unwrap_or(0);
        let at = (offset % size) as usize;
        match self
            .pending
            .get(&pgno)
            .and_then(|p| p.get(at..at + buf.len()))
        {
            Some(bytes) => {
                buf.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }
}

/// A bounded pipe from the backup (on the calling thread) to compression (another thread).
/// When it is full the writer waits — or, given a spill directory, appends to an unnamed temp
/// file that the reader drains first: the writer never waits then.
pub struct Pipe {
    state: Mutex<PipeState>,
    changed: Condvar,
}

struct PipeState {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the front chunk already read.
    front_read: usize,
    in_memory: usize,
    limit: usize,
    spill_dir: Option<PathBuf>,
    spill: Option<Spill>,
    spilled: u64,
    peak_spill: u64,
    done: Option<std::result::Result<(), String>>,
    reader_gone: bool,
    aborted: bool,
}

struct Spill {
    file: File,
    written: u64,
    read: u64,
}

impl Pipe {
    pub fn new(limit: usize, spill_dir: Option<PathBuf>) -> Arc<Pipe> {
        Arc::new(Pipe {
            state: Mutex::new(PipeState {
                chunks: VecDeque::new(),
                front_read: 0,
                in_memory: 0,
                limit,
                spill_dir,
                spill: None,
                spilled: 0,
                peak_spill: 0,
                done: None,
                reader_gone: false,
                aborted: false,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the reader fail (an interrupt while compression finishes).
    pub fn abort(&self) {
        self.lock().aborted = true;
        self.changed.notify_all();
    }

    /// Bytes that went through the spill file, and the most it held at once.
    pub fn spilled(&self) -> (u64, u64) {
        let s = self.lock();
        (s.spilled, s.peak_spill)
    }

    fn push(&self, chunk: Vec<u8>) -> std::result::Result<(), String> {
        let mut s = self.lock();
        loop {
            if s.reader_gone || s.aborted {
                return Err("compression stopped".into());
            }
            let spilling = s.spill.as_ref().is_some_and(|f| f.read < f.written);
            if !spilling && (s.in_memory + chunk.len() <= s.limit || s.in_memory == 0) {
                s.in_memory += chunk.len();
                s.chunks.push_back(chunk);
                self.changed.notify_all();
                return Ok(());
            }
            if let Some(dir) = s.spill_dir.clone() {
                if s.spill.is_none() {
                    let file = crate::temp::unnamed(&dir).map_err(|e| {
                        format!("cannot create a spill file in {}: {e}", dir.display())
                    })?;
                    s.spill = Some(Spill {
                        file,
                        written: 0,
                        read: 0,
                    });
                }
                let len = chunk.len() as u64;
                let Some(spill) = s.spill.as_mut() else {
                    return Err("no spill file".into());
                };
                write_all_at(&spill.file, &chunk, spill.written).map_err(|e| {
                    format!(
                        "cannot write the spill file in {}: {e} (is the disk full?)",
                        dir.display()
                    )
                })?;
                spill.written += len;
                let held = spill.written - spill.read;
                s.spilled += len;
                s.peak_spill = s.peak_spill.max(held);
                self.changed.notify_all();
                return Ok(());
            }
            s = self
                .changed
                .wait_timeout(s, Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn close(&self, outcome: std::result::Result<(), String>) {
        let mut s = self.lock();
        s.done.get_or_insert(outcome);
        self.changed.notify_all();
    }
}

/// The backup's end of the pipe; gathers bytes into chunks.
pub struct PipeWriter {
    pipe: Arc<Pipe>,
    buf: Vec<u8>,
    closed: bool,
}

impl PipeWriter {
    pub fn new(pipe: &Arc<Pipe>) -> PipeWriter {
        PipeWriter {
            pipe: Arc::clone(pipe),
            buf: Vec::new(),
            closed: false,
        }
    }

    /// Ends the stream: the reader sees the end, or the error.
    pub fn close(&mut self, outcome: std::result::Result<(), String>) {
        let outcome = match outcome {
            Ok(()) if !self.buf.is_empty() => {
                let chunk = std::mem::take(&mut self.buf);
                self.pipe.push(chunk)
            }
            other => other,
        };
        self.closed = true;
        self.pipe.close(outcome);
    }
}

impl Out for PipeWriter {
    fn put(&mut self, bytes: &[u8]) -> std::result::Result<(), String> {
        if self.buf.capacity() == 0 {
            self.buf
                .try_reserve_exact(CHUNK)
                .map_err(|_| "out of memory".to_string())?;
        }
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= CHUNK {
            let chunk = std::mem::take(&mut self.buf);
            self.pipe.push(chunk)?;
        }
        Ok(())
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        if !self.closed {
            self.pipe.close(Err("the copy stopped".into()));
        }
    }
}

/// Compression's end of the pipe.
pub struct PipeReader {
    pipe: Arc<Pipe>,
}

impl PipeReader {
    pub fn new(pipe: &Arc<Pipe>) -> PipeReader {
        PipeReader {
            pipe: Arc::clone(pipe),
        }
    }
}

impl io::Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let pipe = &*self.pipe;
        let mut s = pipe.lock();
        loop {
            if s.aborted {
                return Err(io::Error::other("the backup stopped"));
            }
            let front_read = s.front_read;
            if let Some(front) = s.chunks.front() {
                let rest = front.get(front_read..).unwrap_or_default();
                let n = rest.len().min(buf.len());
                if let (Some(to), Some(from)) = (buf.get_mut(..n), rest.get(..n)) {
                    to.copy_from_slice(from);
                }
                let whole = front.len();
                s.front_read += n;
                if s.front_read >= whole {
                    s.chunks.pop_front();
                    s.front_read = 0;
                    s.in_memory -= whole;
                    pipe.changed.notify_all();
                }
                return Ok(n);
            }
            if let Some(spill) = s.spill.as_mut().filter(|f| f.read < f.written) {
                let n = ((spill.written - spill.read) as usize).min(buf.len());
                let Some(to) = buf.get_mut(..n) else {
                    return Ok(0);
                };
                read_exact_at(&spill.file, to, spill.read)?;
                spill.read += n as u64;
                if spill.read == spill.written {
                    // Drained: give the space back.
                    let _ = spill.file.set_len(0);
                    spill.read = 0;
                    spill.written = 0;
                }
                pipe.changed.notify_all();
                return Ok(n);
            }
            match &s.done {
                Some(Ok(())) => return Ok(0),
                Some(Err(m)) => return Err(io::Error::other(m.clone())),
                None => {}
            }
            s = pipe
                .changed
                .wait_timeout(s, Duration::from_millis(100))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        self.pipe.lock().reader_gone = true;
        self.pipe.changed.notify_all();
    }
}

/// The database the stream reads: a second, read-only connection to the file holding one
/// read transaction for all passes, or the caller's own connection (memory, temp, another VFS).
pub struct Source<'a> {
    own: Option<Connection>,
    /// Page 1 as our own connection read it (see `ffi::page1_watch`).
    watch: Option<crate::ffi::page1_watch::Page1Watch>,
    caller: &'a Connection,
    schema: String,
    busy_ms: u64,
}

impl<'a> Source<'a> {
    pub fn open(conn: &'a Connection, schema: &str, busy_ms: u64) -> Result<Source<'a>> {
        let path = conn.filename(schema)?;
        let custom_vfs = match &path {
            Some(_) => conn.custom_vfs(schema)?,
            None => None,
        };
        if conn.in_write_transaction(schema)? {
            return Err(Error::usage(format!(
                "this connection has uncommitted writes to '{schema}' that keep the database \
                 locked: COMMIT or ROLLBACK first (a backup holds committed data only)"
            )));
        }
        let mut watch = None;
        let own = match (&path, &custom_vfs) {
            (Some(path), None) => {
                // The caller's connection reads first, so it opens the WAL (see snapshot.rs).
                let _ = crate::snapshot::without_busy_handler(conn, || {
                    conn.query(&format!(
                        "SELECT 1 FROM {}.sqlite_master LIMIT 1",
                        ffi::quote_identifier(schema)
                    ))
                });
                // Through the page 1 watch when it can be registered: then the stream needs
                // no first pass for page 1 (see `predicted_page1`).
                watch = crate::ffi::page1_watch::Page1Watch::new();
                let reader = match (&watch, std::path::absolute(path)) {
                    (Some(w), Ok(absolute)) => {
                        let uri = format!(
                            "{}?mode=ro&{}",
                            crate::snapshot::file_uri(&absolute),
                            w.uri_parameters()
                        );
                        Connection::open_with_uris(std::path::Path::new(&uri), OpenMode::ReadOnly)?
                    }
                    _ => Connection::open_with_uris(path, OpenMode::ReadOnly)?,
                };
                reader.busy_timeout(busy_ms)?;
                // One read transaction for every pass: they all see the same database.
                reader.exec("BEGIN")?;
                reader
                    .query("SELECT 1 FROM main.sqlite_master LIMIT 1")
                    .map_err(|e| {
                        if e.kind == Kind::Busy {
                            ffi::busy_error(busy_ms)
                        } else {
                            e
                        }
                    })?;
                Some(reader)
            }
            _ => None,
        };
        Ok(Source {
            own,
            watch,
            caller: conn,
            schema: schema.to_string(),
            busy_ms,
        })
    }

    /// In memory (no file): nothing else writes it, and no lock is held.
    pub fn is_own_file(&self) -> bool {
        self.own.is_some()
    }

    /// One backup of the source into `sink`.
    fn pass(&self, sink: Arc<Mutex<dyn PageSink>>) -> Result<()> {
        let dest = page_sink::open(sink)?;
        let copied = match &self.own {
            Some(reader) => dest
                .conn()?
                .backup_from("main", reader, "main", self.busy_ms),
            None => crate::snapshot::without_busy_handler(self.caller, || {
                dest.conn()?
                    .backup_from("main", self.caller, &self.schema, self.busy_ms)
            }),
        };
        match (copied, dest.write_error()) {
            (Ok(()), None) => Ok(()),
            (_, Some(why)) => Err(Error::new(
                Kind::Io,
                format!("cannot stream the database pages: {why}"),
            )),
            (Err(e), None) => Err(e.context("cannot copy the database pages")),
        }
    }

    /// The copy's page 1 as the backup will commit it, worked out from the source's page 1 as
    /// our read transaction read it: the page count at 28, the destination's schema cookie
    /// (its own, 0, plus one) at 40, its change counter (likewise 1) at 24 and 92, the library's
    /// version at 96. None when unknown (not our own connection), or when the database has free
    /// pages (the free list needs the first pass). The copy's own page 1 is compared with it.
    pub fn predicted_page1(&self) -> Result<Option<Vec<u8>>> {
        let (Some(own), Some(watch)) = (&self.own, &self.watch) else {
            return Ok(None);
        };
        let Some(mut page1) = watch.page1() else {
            return Ok(None);
        };
        let Ok(header) = Header::parse(&page1) else {
            return Ok(None);
        };
        let page_count: u32 = match own
            .query_value("PRAGMA main.page_count")?
            .and_then(|v| v.parse().ok())
        {
            Some(n) => n,
            None => return Ok(None),
        };
        if header.freelist != 0 {
            return Ok(None);
        }
        // The pager counts from the destination's own (empty: 0) file, not the copied page.
        let counter = 1;
        let version = ffi::libversion_number() as u32;
        for (at, value) in [
            (24, counter),
            (28, page_count),
            (40, 1),
            (92, counter),
            (96, version),
        ] {
            if let Some(field) = page1.get_mut(at..at + 4) {
                field.copy_from_slice(&value.to_be_bytes());
            }
        }
        Ok(Some(page1))
    }

    /// First pass: page 1 as the copy commits it, and the free list (or why it is not known).
    pub fn capture(&self) -> Result<(Vec<u8>, std::result::Result<FreeList, String>)> {
        let (conn, schema) = match &self.own {
            Some(reader) => (reader, "main"),
            None => (self.caller, self.schema.as_str()),
        };
        let page_count: u32 = conn
            .query_value(&format!(
                "PRAGMA {}.page_count",
                ffi::quote_identifier(schema)
            ))?
            .and_then(|v| v.parse().ok())
            .unwrap_or(u32::MAX);
        let capture = Arc::new(Mutex::new(Capture::new(page_count)));
        self.pass(capture.clone())?;
        let capture = match Arc::try_unwrap(capture) {
            Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
            Err(_) => return Err(Error::new(Kind::Io, "the page sink is still in use")),
        };
        Header::parse(&capture.page1).map_err(|e| Error::new(Kind::Corrupt, e))?;
        let free = capture.free_list();
        Ok((capture.page1, free))
    }

    /// What a streamed pass needs before it starts, in this read transaction: page 1 as the
    /// copy commits it (`predict`: from the reader's shim, else a first pass), the free pages
    /// and the overflow ends to zero. Err: the fallback message when the stream cannot tell
    /// them apart (copied with `instead` then).
    pub fn prepare(
        &self,
        predict: bool,
        instead: &str,
    ) -> Result<std::result::Result<Prepared, String>> {
        crate::progress::phase("taking a snapshot", None);
        let predicted = if predict {
            self.predicted_page1()?
        } else {
            None
        };
        let (page1, free) = match predicted {
            Some(page1) => (page1, Ok(FreeList::default())),
            None => self.capture()?,
        };
        let header = Header::parse(&page1).map_err(|e| Error::new(Kind::Corrupt, e))?;
        // Free pages hold deleted data: the stream zeroes them, when it knows which they are.
        let free = match free {
            Ok(free) if header.page_count < 1 << 24 => free,
            Ok(_) => {
                return Ok(Err(format!(
                    "the database has {} pages, more than the stream tells apart: copied with \
                     {instead} instead",
                    header.page_count
                )))
            }
            Err(why) => {
                return Ok(Err(format!(
                    "the free pages cannot be zeroed ({why}): copied with {instead} instead"
                )))
            }
        };
        // So do the unused ends of overflow chains' last pages (dbstat, same transaction).
        let tails = match self.overflow_tails(header.usable)? {
            Ok(tails) => tails,
            Err(why) => {
                return Ok(Err(format!(
                    "the ends of the overflow pages cannot be zeroed ({why}): copied with \
                     {instead} instead"
                )))
            }
        };
        Ok(Ok(Prepared {
            page1,
            header,
            free,
            tails,
        }))
    }

    /// The overflow chains' last pages and their unused ends, read with `dbstat` in the same
    /// read transaction (one more read of the b-trees, no copy). Err: why they cannot be
    /// tracked. A SQLite without `dbstat` gives none: their ends are left as they are.
    pub fn overflow_tails(&self, usable: usize) -> Result<std::result::Result<Tails, String>> {
        let (conn, schema) = match &self.own {
            Some(reader) => (reader, "main"),
            None => (self.caller, self.schema.as_str()),
        };
        let mut pages: Vec<(u32, u16)> = Vec::new();
        // `temp.` when a table of the database is called dbstat (it hides the module).
        for (i, table) in ["dbstat", "temp.dbstat"].into_iter().enumerate() {
            let sql = format!(
                "SELECT pageno, unused FROM {table}({}) WHERE pagetype = 'overflow' AND unused > 0",
                ffi::quote_literal(schema)
            );
            pages.clear();
            let mut why = None;
            let read = conn.query_each(&sql, |row| {
                let num = |i: usize| {
                    row.get(i)
                        .cloned()
                        .flatten()
                        .and_then(|v| v.parse::<i64>().ok())
                };
                let (Some(pgno), Some(unused)) = (num(0), num(1)) else {
                    return Ok(());
                };
                let (Ok(pgno), Ok(unused)) = (u32::try_from(pgno), u16::try_from(unused)) else {
                    return Ok(());
                };
                if usize::from(unused) + 4 > usable {
                    return Ok(());
                }
                if pages.len() >= MAX_TAILS || pages.try_reserve(1).is_err() {
                    why = Some(format!(
                        "more than {MAX_TAILS} overflow chains are too many to track"
                    ));
                    return Err(Error::new(Kind::Io, "stop"));
                }
                pages.push((pgno, unused));
                Ok(())
            });
            let unknown = |e: &Error| {
                e.message.contains("no such table") || e.message.contains("not a function")
            };
            match (read, why) {
                (_, Some(why)) => return Ok(Err(why)),
                (Ok(()), None) => break,
                (Err(e), None) if unknown(&e) && i == 0 => {}
                // No dbstat in this SQLite: the ends stay as they are (see README).
                (Err(e), None) if unknown(&e) => return Ok(Ok(Tails::default())),
                (Err(e), None) => return Err(e.context("cannot read the overflow pages")),
            }
        }
        pages.sort_unstable();
        pages.dedup_by_key(|p| p.0);
        Ok(Ok(Tails {
            pages: pages.into(),
        }))
    }

    /// A pass that hands the stream to `out`; returns `out` when every page went through.
    pub fn emit<O: Out + 'static>(
        &self,
        page1: &[u8],
        free: &FreeList,
        tails: &Tails,
        out: O,
    ) -> Result<O> {
        let emit = Emit::new(page1.to_vec(), free.clone(), PENDING_BYTES, out)
            .map_err(|e| Error::new(Kind::Io, format!("cannot stream the database: {e}")))?
            .with_tails(tails.clone());
        let emit = Arc::new(Mutex::new(emit));
        self.pass(emit.clone())?;
        let mut emit = match Arc::try_unwrap(emit) {
            Ok(m) => m.into_inner().unwrap_or_else(|e| e.into_inner()),
            Err(_) => return Err(Error::new(Kind::Io, "the page sink is still in use")),
        };
        emit.finish()
            .map_err(|e| Error::new(Kind::Io, format!("cannot stream the database: {e}")))?;
        Ok(emit.out)
    }

    /// Streams the database into `pipe` on this thread (a backup from the calling connection
    /// must run on the caller's thread), ends the read transaction (in rollback-journal mode
    /// writers wait only for the copy, not for compression), then waits for `worker`, which
    /// reads the pipe, seeing interrupts meanwhile. Returns the copy's milliseconds (or why it
    /// failed) and what the worker returned.
    pub fn stream_to<T>(
        self,
        page1: &[u8],
        free: &FreeList,
        tails: &Tails,
        pipe: &Arc<Pipe>,
        worker: std::thread::ScopedJoinHandle<'_, T>,
    ) -> Result<(Result<u64>, T)> {
        let start = std::time::Instant::now();
        // A failed pass drops the writer, which ends the stream with an error.
        let streamed = self
            .emit(page1, free, tails, PipeWriter::new(pipe))
            .map(|mut w| w.close(Ok(())));
        drop(self);
        let copy_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut interrupted = Ok(());
        while !worker.is_finished() {
            if interrupted.is_ok() {
                if let Err(e) = crate::interrupt::check() {
                    pipe.abort();
                    interrupted = Err(e);
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let joined = worker
            .join()
            .map_err(|_| Error::new(Kind::Io, "the compression thread failed"))?;
        interrupted?;
        Ok((streamed.map(|()| copy_ms), joined))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    struct VecOut(Vec<u8>);
    impl Out for VecOut {
        fn put(&mut self, bytes: &[u8]) -> std::result::Result<(), String> {
            self.0.extend_from_slice(bytes);
            Ok(())
        }
    }

    fn page1(page_size: usize, pages: u32) -> Vec<u8> {
        let mut p = vec![0u8; page_size];
        p[..16].copy_from_slice(b"SQLite format 3\0");
        let size = if page_size == 65536 {
            1
        } else {
            page_size as u16
        };
        p[16..18].copy_from_slice(&size.to_be_bytes());
        p[18] = 2;
        p[19] = 2;
        p[28..32].copy_from_slice(&pages.to_be_bytes());
        // An empty table leaf as sqlite_schema's root.
        p[100] = 13;
        p[105..107].copy_from_slice(&(page_size as u16).to_be_bytes());
        p
    }

    fn page(page_size: usize, fill: u8) -> Vec<u8> {
        vec![fill; page_size]
    }

    #[test]
    fn pages_out_of_order_come_out_in_order_page_one_first() {
        let p1 = page1(512, 4);
        let mut emit =
            Emit::new(p1.clone(), FreeList::default(), 4096, VecOut(Vec::new())).unwrap();
        emit.write_page(3, &page(512, 3)).unwrap();
        emit.write_page(2, &page(512, 2)).unwrap();
        emit.write_page(4, &page(512, 4)).unwrap();
        emit.write_page(1, &p1).unwrap();
        emit.finish().unwrap();
        let out = emit.out.0;
        assert_eq!(out.len(), 4 * 512);
        assert_eq!(&out[..16], b"SQLite format 3\0");
        assert_eq!((out[18], out[19]), (1, 1), "WAL flag cleared");
        assert!(out[512..1024].iter().all(|&b| b == 2));
        assert!(out[1024..1536].iter().all(|&b| b == 3));
    }

    #[test]
    fn a_page_written_again_or_too_far_ahead_or_a_changed_page_one_is_an_error() {
        let p1 = page1(512, 8);
        let mut emit =
            Emit::new(p1.clone(), FreeList::default(), 1024, VecOut(Vec::new())).unwrap();
        emit.write_page(2, &page(512, 2)).unwrap();
        assert!(emit
            .write_page(2, &page(512, 2))
            .unwrap_err()
            .contains("twice"));
        emit.write_page(4, &page(512, 4)).unwrap();
        emit.write_page(5, &page(512, 5)).unwrap();
        assert!(emit
            .write_page(6, &page(512, 6))
            .unwrap_err()
            .contains("ahead"));
        assert!(emit
            .write_page(9, &page(512, 9))
            .unwrap_err()
            .contains("beyond"));
        let mut other = p1.clone();
        other[40] = 7;
        assert!(emit.write_page(1, &other).unwrap_err().contains("changed"));
        assert!(emit.finish().unwrap_err().contains("never committed"));
    }

    #[test]
    fn the_lock_byte_page_is_zeros_and_the_stream_ends_only_when_complete() {
        // 64 KiB pages: the lock byte is in page 16385. A database of 16386 pages.
        struct Count(u64, bool);
        impl Out for Count {
            fn put(&mut self, bytes: &[u8]) -> std::result::Result<(), String> {
                if self.0 == 16384 * 65536 {
                    self.1 = bytes.iter().all(|&b| b == 0);
                }
                self.0 += bytes.len() as u64;
                Ok(())
            }
        }
        let ps = 65536;
        let lock = (PENDING_BYTE / ps as u64 + 1) as u32;
        assert_eq!(lock, 16385);
        let p1 = page1(ps, lock + 1);
        let mut emit =
            Emit::new(p1.clone(), FreeList::default(), 1 << 20, Count(0, false)).unwrap();
        let data = page(ps, 9);
        for pgno in 2..lock {
            emit.write_page(pgno, &data).unwrap();
        }
        emit.write_page(1, &p1).unwrap();
        assert!(emit.finish().unwrap_err().contains("ended after page"));
        emit.write_page(lock + 1, &data).unwrap();
        emit.finish().unwrap();
        assert_eq!(emit.out.0, (lock as u64 + 1) * ps as u64);
        assert!(emit.out.1, "the lock-byte page is zeros");
    }

    #[test]
    fn free_space_is_zeroed_and_other_pages_are_left_alone() {
        let mut p = vec![0xAAu8; 512];
        // Table leaf: 2 cells, content from 400, one freeblock at 300 of 20 bytes.
        p[0] = 13;
        p[1..3].copy_from_slice(&300u16.to_be_bytes());
        p[3..5].copy_from_slice(&2u16.to_be_bytes());
        p[5..7].copy_from_slice(&280u16.to_be_bytes());
        p[7] = 0;
        p[8..10].copy_from_slice(&400u16.to_be_bytes());
        p[10..12].copy_from_slice(&450u16.to_be_bytes());
        p[300..302].copy_from_slice(&0u16.to_be_bytes());
        p[302..304].copy_from_slice(&20u16.to_be_bytes());
        let mut q = p.clone();
        zero_free_space(&mut q, 0, 512);
        assert!(q[12..280].iter().all(|&b| b == 0), "gap");
        assert!(q[304..320].iter().all(|&b| b == 0), "freeblock body");
        assert_eq!(q[302..304], 20u16.to_be_bytes(), "freeblock header kept");
        assert_eq!(q[280..300], p[280..300], "cells kept");
        assert_eq!(q[320..], p[320..]);
        // Not a b-tree page (overflow, or a broken header): untouched.
        let mut r = p.clone();
        r[0] = 0;
        let before = r.clone();
        zero_free_space(&mut r, 0, 512);
        assert_eq!(r, before);
        let mut s = p.clone();
        s[8..10].copy_from_slice(&10u16.to_be_bytes()); // a cell pointer into the header
        let before = s.clone();
        zero_free_space(&mut s, 0, 512);
        assert_eq!(s, before);
    }

    #[test]
    fn fragments_are_zeroed_only_when_the_cells_account_for_them() {
        // Table leaf, 512 bytes: cells at 400 (12 bytes), 415 (12) and 429 (83, to the end);
        // fragments 412..415 and 427..429 (5 bytes, as the header says).
        let mut p = vec![0xAAu8; 512];
        p[0] = 13;
        p[1..3].copy_from_slice(&0u16.to_be_bytes());
        p[3..5].copy_from_slice(&3u16.to_be_bytes());
        p[5..7].copy_from_slice(&400u16.to_be_bytes());
        p[7] = 5;
        for (i, (at, payload)) in [(400usize, 10u8), (415, 10), (429, 81)].iter().enumerate() {
            p[8 + 2 * i..10 + 2 * i].copy_from_slice(&(*at as u16).to_be_bytes());
            p[*at] = *payload;
            p[at + 1] = i as u8 + 1; // rowid
            p[at + 2..at + 2 + *payload as usize].fill(0x11);
        }
        let mut q = p.clone();
        zero_free_space(&mut q, 0, 512);
        assert!(q[412..415].iter().all(|&b| b == 0) && q[427..429].iter().all(|&b| b == 0));
        assert!(q[14..400].iter().all(|&b| b == 0), "gap");
        let cells = |x: &[u8]| {
            [
                x[400..412].to_vec(),
                x[415..427].to_vec(),
                x[429..].to_vec(),
            ]
        };
        assert_eq!(cells(&q), cells(&p));
        // A count that does not match (or a cell that overlaps another): left as it is.
        let mut r = p.clone();
        r[7] = 4;
        zero_free_space(&mut r, 0, 512);
        assert!(r[412..415].iter().all(|&b| b == 0xAA));
        let mut o = p.clone();
        o[415] = 13; // the second cell now runs into the third
        zero_free_space(&mut o, 0, 512);
        assert!(o[427..429].iter().all(|&b| b == 0xAA));
    }

    #[test]
    fn cell_sizes_follow_sqlite_for_local_and_overflowing_payloads() {
        let usable = 4096;
        let mut p = vec![0u8; 8192];
        // Table leaf, payload 5000 (2-byte varint), rowid 7: local part M + (P - M) % (U - 4).
        p[0..2].copy_from_slice(&[0x80 | (5000 >> 7) as u8, (5000 & 0x7f) as u8]);
        p[2] = 7;
        let min = (4096 - 12) * 32 / 255 - 23;
        let local = min + (5000 - min) % (4096 - 4);
        assert!(local <= 4096 - 35);
        assert_eq!(cell_size(&p, 0, 13, usable), Some(3 + local + 4));
        // Payload 4489: M + (P - M) % (U - 4) would pass the largest local part: M stays.
        p[0..2].copy_from_slice(&[0x80 | (4489 >> 7) as u8, (4489 & 0x7f) as u8]);
        assert_eq!(cell_size(&p, 0, 13, usable), Some(3 + min + 4));
        // Small cells take at least 4 bytes; a table interior cell is child + rowid.
        assert_eq!(cell_size(&[0, 1, 0, 0], 0, 13, usable), Some(4));
        assert_eq!(cell_size(&[0, 0, 0, 2, 0x81, 0], 0, 5, usable), Some(6));
    }

    #[test]
    fn the_free_list_is_walked_from_page_one_and_its_pages_zeroed() {
        let ps = 512;
        let mut p1 = page1(ps, 8);
        p1[32..36].copy_from_slice(&6u32.to_be_bytes()); // first trunk: 6
        p1[36..40].copy_from_slice(&5u32.to_be_bytes()); // 5 free pages
        let trunk = |next: u32, leaves: &[u32]| {
            let mut p = vec![0xEEu8; ps];
            p[..4].copy_from_slice(&next.to_be_bytes());
            p[4..8].copy_from_slice(&(leaves.len() as u32).to_be_bytes());
            for (i, l) in leaves.iter().enumerate() {
                p[8 + 4 * i..12 + 4 * i].copy_from_slice(&l.to_be_bytes());
            }
            p
        };
        // Trunk 6 → trunk 3 (earlier in page order); leaves 2, 4 and 8.
        let pages: Vec<(u32, Vec<u8>)> = vec![
            (2, page(ps, 0xEE)),
            (3, trunk(0, &[8])),
            (4, page(ps, 0xEE)),
            (5, page(ps, 0x55)),
            (6, trunk(3, &[2, 4])),
            (7, page(ps, 0x77)),
            (8, page(ps, 0xEE)),
        ];
        let mut capture = Capture::new(8);
        for (pgno, p) in &pages {
            capture.write_page(*pgno, p).unwrap();
        }
        capture.write_page(1, &p1).unwrap();
        let free = capture.free_list().unwrap();
        let mut emit = Emit::new(p1.clone(), free, 1 << 20, VecOut(Vec::new())).unwrap();
        for (pgno, p) in &pages {
            emit.write_page(*pgno, p).unwrap();
        }
        emit.write_page(1, &p1).unwrap();
        emit.finish().unwrap();
        let out = emit.out.0;
        let at = |pgno: usize| &out[(pgno - 1) * ps..pgno * ps];
        for leaf in [2, 4, 8] {
            assert!(at(leaf).iter().all(|&b| b == 0), "leaf {leaf}");
        }
        assert_eq!(&at(3)[..12], &trunk(0, &[8])[..12]);
        assert!(at(3)[12..].iter().all(|&b| b == 0));
        assert_eq!(&at(6)[..16], &trunk(3, &[2, 4])[..16]);
        assert!(at(6)[16..].iter().all(|&b| b == 0));
        assert!(at(5).iter().all(|&b| b == 0x55) && at(7).iter().all(|&b| b == 0x77));

        // A header count that does not match the chain: not trusted.
        let mut wrong = p1.clone();
        wrong[36..40].copy_from_slice(&6u32.to_be_bytes());
        let mut capture = Capture::new(8);
        for (pgno, p) in &pages {
            capture.write_page(*pgno, p).unwrap();
        }
        capture.write_page(1, &wrong).unwrap();
        assert!(capture.free_list().unwrap_err().contains("add up"));
    }

    #[test]
    fn the_unused_ends_of_overflow_chains_are_zeroed() {
        let p1 = page1(512, 5);
        let tails = Tails {
            pages: vec![(3, 100), (5, 508)].into(),
        };
        let mut emit = Emit::new(p1.clone(), FreeList::default(), 4096, VecOut(Vec::new()))
            .unwrap()
            .with_tails(tails);
        let last = |fill: u8| {
            let mut p = page(512, fill);
            p[..4].fill(0); // next page: none
            p
        };
        emit.write_page(4, &page(512, 0x77)).unwrap();
        emit.write_page(2, &page(512, 0x77)).unwrap();
        emit.write_page(5, &last(0x77)).unwrap();
        emit.write_page(3, &last(0x77)).unwrap();
        emit.write_page(1, &p1).unwrap();
        emit.finish().unwrap();
        let out = emit.out.0;
        let at = |pgno: usize| &out[(pgno - 1) * 512..pgno * 512];
        assert!(at(3)[4..412].iter().all(|&b| b == 0x77) && at(3)[412..].iter().all(|&b| b == 0));
        assert!(at(5)[4..].iter().all(|&b| b == 0));
        assert!(at(2).iter().chain(at(4)).all(|&b| b == 0x77));
        // A listed page that does not end a chain is left alone.
        let tails = Tails {
            pages: vec![(2, 100)].into(),
        };
        let mut emit = Emit::new(page1(512, 2), FreeList::default(), 4096, VecOut(Vec::new()))
            .unwrap()
            .with_tails(tails);
        emit.write_page(2, &page(512, 0x77)).unwrap();
        assert!(emit.out.0[512..].iter().all(|&b| b == 0x77));
    }

    #[test]
    fn ptrmap_pages_are_known() {
        let mut p1 = page1(1024, 10);
        p1[52..56].copy_from_slice(&3u32.to_be_bytes());
        let h = Header::parse(&p1).unwrap();
        assert!(h.is_ptrmap(2));
        assert!(!h.is_ptrmap(3));
        assert!(h.is_ptrmap(2 + 1024 / 5 + 1));
    }

    #[test]
    fn the_pipe_keeps_order_through_memory_and_spill() {
        let dir = tempfile::tempdir().unwrap();
        let pipe = Pipe::new(1000, Some(dir.path().to_path_buf()));
        let mut w = PipeWriter::new(&pipe);
        let mut expected = Vec::new();
        for i in 0..40u32 {
            let chunk = vec![(i % 251) as u8; 300 + i as usize];
            expected.extend_from_slice(&chunk);
            pipe.push(chunk).unwrap();
        }
        assert!(pipe.spilled().0 > 0, "went to the spill file");
        w.close(Ok(()));
        let mut got = Vec::new();
        PipeReader::new(&pipe).read_to_end(&mut got).unwrap();
        assert_eq!(got, expected);
    }

    #[test]
    fn the_pipe_waits_without_spill_and_reports_errors() {
        let pipe = Pipe::new(1000, None);
        let reader_pipe = Arc::clone(&pipe);
        let t = std::thread::spawn(move || {
            let mut got = Vec::new();
            let r = PipeReader::new(&reader_pipe).read_to_end(&mut got);
            (got.len(), r.is_err())
        });
        for _ in 0..50 {
            pipe.push(vec![1u8; 600]).unwrap();
        }
        pipe.close(Err("boom".into()));
        let (n, failed) = t.join().unwrap();
        assert_eq!(n, 50 * 600);
        assert!(failed);
        assert_eq!(pipe.spilled().0, 0);
    }
}
