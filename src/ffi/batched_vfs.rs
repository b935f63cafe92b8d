//! `sqlite_backup_batched`: a VFS shim that the snapshot's `VACUUM INTO` writes through.
//!
//! SQLite writes a database one page per call, so a new file written front to back costs one
//! syscall per page: about 260,000 `pwrite`s per GiB at 4 KiB pages, which was most of the
//! snapshot's time. This shim gathers the writes to a main database file in two aligned
//! 64 KiB windows, in any order (pages are spilled in cache order: overflow pages, or the last
//! page of one window after the first of the next), and writes each contiguous run of a
//! window at once when the window is let go. Every other call (reads, size, sync, truncate,
//! unlock, file controls, close) first writes what is gathered, then goes to the default VFS
//! unchanged; journals and other files are the default VFS's own files, untouched.
//!
//! SQLite ignores the result of xClose (and of xUnlock in places), so a write that fails
//! there would go unseen: every failed write is also counted, and the snapshot checks the
//! count after `VACUUM INTO`. The count belongs to the one file a snapshot writes (a `Watch`
//! named in its URI), never to the process: a full disk under another thread's temp_dir must
//! not fail this backup.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use sqlite3ext_sys::{sqlite3_file, sqlite3_int64, sqlite3_io_methods, sqlite3_vfs};

use super::shim::{self, Registry, Shim, Wrapped};
use super::SQLITE_OK;
use crate::error::Result;

const NAME: &CStr = c"sqlite_backup_batched";
/// Size of a window, and so of the largest write: the unix VFS takes at most 128 KiB - 1 in
/// one write (it masks the length with 0x1ffff), so 64 KiB: 16 pages of 4 KiB. An open file
/// holds two windows (128 KiB).
const BATCH: usize = 64 << 10;
const SQLITE_IOERR_WRITE: c_int = 10 | (3 << 8);
const SQLITE_OPEN_MAIN_DB: c_int = 0x100;

/// The URI parameter that names a file's `Watch`.
const WATCH_PARAMETER: &CStr = c"sqlite_backup_watch";

static REGISTERED: OnceLock<bool> = OnceLock::new();
/// The failure counts of the watches alive now, by token. A token is only a key to look up:
/// a URI naming no live watch (or a made-up one) gets no count.
static WATCHES: Registry<Arc<AtomicU64>> = Registry::new();

/// The name to put in a `file:` URI (`?vfs=`), registering the shim on first use; `None` when
/// this host cannot register it (then the snapshot writes through the default VFS).
pub fn name() -> Option<&'static str> {
    let ok = *REGISTERED.get_or_init(|| register().is_ok());
    ok.then(|| NAME.to_str().unwrap_or_default())
}

/// Counts the failed writes of the files opened with its URI parameter (one snapshot's copy).
pub struct Watch {
    token: u64,
    failed: Arc<AtomicU64>,
}

impl Watch {
    pub fn new() -> Watch {
        let failed = Arc::new(AtomicU64::new(0));
        let token = WATCHES.insert(Arc::clone(&failed));
        Watch { token, failed }
    }

    /// `name=value` to append to the file's URI.
    pub fn uri_parameter(&self) -> String {
        format!(
            "{}={}",
            WATCH_PARAMETER.to_str().unwrap_or_default(),
            self.token
        )
    }

    /// Writes that failed so far in the watched files.
    pub fn failed_writes(&self) -> u64 {
        self.failed.load(Ordering::SeqCst)
    }
}

impl Default for Watch {
    fn default() -> Watch {
        Watch::new()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        WATCHES.remove(self.token);
    }
}

/// Granularity of the window: SQLite pages are at least 512 bytes and aligned to their size.
const SECTOR: usize = 512;
const _: () = assert!(BATCH / SECTOR == 128); // one bit per sector in a u128

/// What a main database file of ours keeps, beside the default VFS's file (`shim::Wrapped`).
struct Batched {
    /// The older window first; the second is in use only when the first is.
    windows: [Window; 2],
    /// Where failed writes are counted: the watch named in the file's URI.
    failed: Option<Arc<AtomicU64>>,
}

type BatchedFile = Wrapped<Batched>;

impl Shim for Batched {
    fn methods() -> &'static sqlite3_io_methods {
        &METHODS
    }

    /// Main database files; journals and temp files are the default VFS's, untouched.
    unsafe fn state(name: *const c_char, flags: c_int) -> Option<Batched> {
        (flags & SQLITE_OPEN_MAIN_DB != 0).then(|| Batched {
            windows: [Window::EMPTY, Window::EMPTY],
            // SAFETY: the main database's filename SQLite gave xOpen.
            failed: WATCHES.named_in_uri(name, WATCH_PARAMETER),
        })
    }

    /// Every forwarded call that reads or changes the file writes out what is gathered first.
    unsafe fn settle(f: &mut BatchedFile) -> c_int {
        flush(f)
    }
}

/// `BATCH` bytes of the file starting at `start`, some of them written by SQLite and not yet
/// by us.
struct Window {
    /// Allocated on the first gathered write.
    bytes: Vec<u8>,
    /// A multiple of `BATCH`.
    start: i64,
    /// Which sectors hold data not yet written: a u128 in two halves, since SQLite only
    /// promises 8-byte alignment.
    filled: [u64; 2],
}

impl Window {
    const EMPTY: Window = Window {
        bytes: Vec::new(),
        start: 0,
        filled: [0; 2],
    };

    fn filled(&self) -> u128 {
        u128::from(self.filled[0]) | (u128::from(self.filled[1]) << 64)
    }

    fn set_filled(&mut self, bits: u128) {
        self.filled = [bits as u64, (bits >> 64) as u64];
    }

    fn in_use(&self) -> bool {
        self.filled != [0; 2]
    }

    /// Writes each contiguous run of filled sectors.
    unsafe fn flush(&mut self, real: *mut sqlite3_file) -> c_int {
        let mut rc = SQLITE_OK;
        while self.in_use() && rc == SQLITE_OK {
            let first = self.filled().trailing_zeros() as usize;
            let run = (self.filled() >> first).trailing_ones() as usize;
            let (from, len) = (first * SECTOR, run * SECTOR);
            rc = write_real(
                real,
                self.bytes.as_ptr().add(from).cast(),
                len as c_int,
                self.start + from as i64,
            );
            self.set_filled(self.filled() & !sectors(first, run));
        }
        self.set_filled(0);
        rc
    }
}

impl BatchedFile {
    /// Writes out window `i`; a failure is also counted (see the module doc).
    unsafe fn flush_window(&mut self, i: usize) -> c_int {
        let Some(window) = self.state.windows.get_mut(i) else {
            return SQLITE_OK;
        };
        let rc = window.flush(self.real);
        if rc != SQLITE_OK {
            if let Some(failed) = &self.state.failed {
                failed.fetch_add(1, Ordering::SeqCst);
            }
        }
        rc
    }
}

fn register() -> Result<()> {
    shim::register(NAME, "the snapshot VFS", |base| sqlite3_vfs {
        szOsFile: shim::os_file_size::<Batched>(base),
        xOpen: Some(shim::open::<Batched>),
        ..shim::forwarding_vfs(base)
    })
}

/// Reads, size, sync, truncate, unlock and file controls write what is gathered first
/// (`Shim::settle`), then go to the default VFS's file, as does everything else.
static METHODS: sqlite3_io_methods = sqlite3_io_methods {
    xClose: Some(close),
    xWrite: Some(write),
    ..shim::methods::<Batched>(1)
};

/// Writes everything gathered.
unsafe fn flush(f: &mut BatchedFile) -> c_int {
    let rc = f.flush_window(0);
    let rc2 = f.flush_window(1);
    if rc != SQLITE_OK {
        rc
    } else {
        rc2
    }
}

/// Bits `first..first + count` (count ≥ 1, first + count ≤ 128).
fn sectors(first: usize, count: usize) -> u128 {
    (u128::MAX >> (128 - count)) << first
}

unsafe extern "C" fn write(
    file: *mut sqlite3_file,
    data: *const c_void,
    amt: c_int,
    ofst: sqlite3_int64,
) -> c_int {
    let f = shim::wrapped::<Batched>(file);
    let len = usize::try_from(amt).unwrap_or(0);
    let start = ofst - ofst.rem_euclid(BATCH as i64);
    let at = (ofst - start) as usize;
    let gather =
        len > 0 && at.is_multiple_of(SECTOR) && len.is_multiple_of(SECTOR) && at + len <= BATCH;
    let window = if gather {
        window_for(f, start)
    } else {
        Ok(None)
    };
    match window {
        Err(rc) => rc,
        Ok(Some(window)) => {
            let Some(bytes) = window.bytes.get_mut(at..at + len) else {
                return SQLITE_IOERR_WRITE; // cannot happen: at + len <= BATCH = bytes.len()
            };
            bytes.copy_from_slice(std::slice::from_raw_parts(data.cast::<u8>(), len));
            window.set_filled(window.filled() | sectors(at / SECTOR, len / SECTOR));
            SQLITE_OK
        }
        // Not gathered: written now, after what is gathered (order kept).
        Ok(None) => match flush(f) {
            SQLITE_OK => write_real(f.real, data, amt, ofst),
            rc => rc,
        },
    }
}

/// One write to the default VFS's file.
unsafe fn write_real(
    real: *mut sqlite3_file,
    data: *const c_void,
    amt: c_int,
    ofst: sqlite3_int64,
) -> c_int {
    match (*(*real).pMethods).xWrite {
        Some(write) => write(real, data, amt, ofst),
        None => SQLITE_IOERR_WRITE,
    }
}

/// The window for `start`: one in use, else a free one (writing out and letting go of the
/// older window when both are in use). `None` when its buffer cannot be allocated.
unsafe fn window_for(
    f: &mut BatchedFile,
    start: i64,
) -> std::result::Result<Option<&mut Window>, c_int> {
    if let Some(i) = f
        .state
        .windows
        .iter()
        .position(|w| w.in_use() && w.start == start)
    {
        return Ok(Some(&mut f.state.windows[i]));
    }
    if f.state.windows[1].in_use() {
        let rc = f.flush_window(0);
        if rc != SQLITE_OK {
            return Err(rc);
        }
        f.state.windows.swap(0, 1);
    }
    let i = usize::from(f.state.windows[0].in_use());
    let window = &mut f.state.windows[i];
    if window.bytes.len() != BATCH {
        if window.bytes.try_reserve_exact(BATCH).is_err() {
            return Ok(None);
        }
        window.bytes.resize(BATCH, 0);
    }
    window.start = start;
    Ok(Some(window))
}

/// Writes what is gathered, then closes (which also frees the buffers and lets go of the watch).
unsafe extern "C" fn close(file: *mut sqlite3_file) -> c_int {
    let flushed = flush(shim::wrapped::<Batched>(file));
    let closed = shim::close::<Batched>(file);
    if flushed != SQLITE_OK {
        flushed
    } else {
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn watches() -> std::sync::MutexGuard<'static, BTreeMap<u64, Arc<AtomicU64>>> {
        WATCHES.lock()
    }

    #[test]
    fn each_watch_has_its_own_count_and_leaves_the_registry_when_dropped() {
        let (a, b) = (Watch::new(), Watch::new());
        assert_ne!(a.uri_parameter(), b.uri_parameter());
        let counter = |w: &Watch| watches().get(&w.token).cloned().unwrap();
        counter(&a).fetch_add(1, Ordering::SeqCst);
        assert_eq!((a.failed_writes(), b.failed_writes()), (1, 0));
        let token = a.token;
        drop(a);
        assert!(watches().get(&token).is_none());
        assert!(watches().contains_key(&b.token));
    }
}
