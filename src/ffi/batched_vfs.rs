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

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sqlite3ext_sys::{sqlite3_file, sqlite3_int64, sqlite3_io_methods, sqlite3_vfs};

use super::{api, SQLITE_OK};
use crate::error::{Error, Kind, Result};

const NAME: &CStr = c"sqlite_backup_batched";
/// Size of a window, and so of the largest write: the unix VFS takes at most 128 KiB - 1 in
/// one write (it masks the length with 0x1ffff), so 64 KiB: 16 pages of 4 KiB. An open file
/// holds two windows (128 KiB).
const BATCH: usize = 64 << 10;
const SQLITE_ERROR: c_int = 1;
const SQLITE_IOERR_WRITE: c_int = 10 | (3 << 8);
const SQLITE_OPEN_MAIN_DB: c_int = 0x100;

/// The URI parameter that names a file's `Watch`.
const WATCH_PARAMETER: &CStr = c"sqlite_backup_watch";

static REGISTERED: OnceLock<bool> = OnceLock::new();
/// The failure counts of the watches alive now, by token. A token is only a key to look up:
/// a URI naming no live watch (or a made-up one) gets no count.
static WATCHES: Mutex<BTreeMap<u64, Arc<AtomicU64>>> = Mutex::new(BTreeMap::new());
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

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
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        let failed = Arc::new(AtomicU64::new(0));
        watches().insert(token, Arc::clone(&failed));
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
        watches().remove(&self.token);
    }
}

/// The registry, even after a panic elsewhere poisoned it (a map of counters stays valid).
fn watches() -> std::sync::MutexGuard<'static, BTreeMap<u64, Arc<AtomicU64>>> {
    WATCHES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The counter of the watch a main database file's URI names, if it is alive.
unsafe fn watch_of(name: *const c_char) -> Option<Arc<AtomicU64>> {
    let uri_parameter = api().ok()?.uri_parameter?;
    if name.is_null() {
        return None;
    }
    // SAFETY: `name` is the filename SQLite gave xOpen, which uri_parameter accepts.
    let value = uri_parameter(name, WATCH_PARAMETER.as_ptr());
    if value.is_null() {
        return None;
    }
    let token: u64 = CStr::from_ptr(value).to_str().ok()?.parse().ok()?;
    watches().get(&token).cloned()
}

/// Granularity of the window: SQLite pages are at least 512 bytes and aligned to their size.
const SECTOR: usize = 512;
const _: () = assert!(BATCH / SECTOR == 128); // one bit per sector in a u128

/// What SQLite allocates for a file of ours: this, then the default VFS's file at
/// `REAL_OFFSET` (SQLite's allocations are 8-byte aligned).
#[repr(C)]
struct BatchedFile {
    base: sqlite3_file,
    real: *mut sqlite3_file,
    /// The older window first; the second is in use only when the first is.
    windows: [Window; 2],
    /// Where failed writes are counted: the watch named in the file's URI.
    failed: Option<Arc<AtomicU64>>,
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

const _: () = assert!(std::mem::align_of::<BatchedFile>() <= 8);

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
        let Some(window) = self.windows.get_mut(i) else {
            return SQLITE_OK;
        };
        let rc = window.flush(self.real);
        if rc != SQLITE_OK {
            if let Some(failed) = &self.failed {
                failed.fetch_add(1, Ordering::SeqCst);
            }
        }
        rc
    }
}

const REAL_OFFSET: usize = (std::mem::size_of::<BatchedFile>() + 7) & !7;

fn register() -> Result<()> {
    let api = api()?;
    let (Some(find), Some(register)) = (api.vfs_find, api.vfs_register) else {
        return Err(Error::new(
            Kind::Sqlite,
            "this SQLite cannot register a VFS",
        ));
    };
    // SAFETY: vfs_find(NULL) returns the default VFS, which lives as long as the process.
    let real = unsafe { find(ptr::null()) };
    // SAFETY: checked for null; SQLite never frees a registered VFS.
    let Some(real_ref) = (unsafe { real.as_ref() }) else {
        return Err(Error::new(Kind::Sqlite, "no default VFS"));
    };
    let vfs = Box::new(sqlite3_vfs {
        iVersion: real_ref.iVersion.min(2),
        szOsFile: REAL_OFFSET as c_int + real_ref.szOsFile,
        mxPathname: real_ref.mxPathname,
        pNext: ptr::null_mut(),
        zName: NAME.as_ptr(),
        pAppData: real.cast(),
        xOpen: Some(open),
        xDelete: Some(delete),
        xAccess: Some(access),
        xFullPathname: Some(full_pathname),
        xDlOpen: Some(dl_open),
        xDlError: Some(dl_error),
        xDlSym: Some(dl_sym),
        xDlClose: Some(dl_close),
        xRandomness: Some(randomness),
        xSleep: Some(sleep),
        xCurrentTime: Some(current_time),
        xGetLastError: Some(get_last_error),
        xCurrentTimeInt64: Some(current_time_int64),
        xSetSystemCall: None,
        xGetSystemCall: None,
        xNextSystemCall: None,
    });
    // Registered for the life of the process (the library is never unloaded: -z nodelete).
    let vfs = Box::into_raw(vfs);
    // SAFETY: a complete VFS whose memory is never freed; not made the default.
    let rc = unsafe { register(vfs, 0) };
    if rc != SQLITE_OK {
        // SAFETY: SQLite refused it, so nothing refers to it.
        drop(unsafe { Box::from_raw(vfs) });
        return Err(Error::new(Kind::Sqlite, "cannot register the snapshot VFS"));
    }
    Ok(())
}

/// The default VFS this shim wraps.
unsafe fn real_vfs(vfs: *mut sqlite3_vfs) -> *mut sqlite3_vfs {
    (*vfs).pAppData.cast()
}

static METHODS: sqlite3_io_methods = sqlite3_io_methods {
    iVersion: 1,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: None,
    xShmLock: None,
    xShmBarrier: None,
    xShmUnmap: None,
    xFetch: None,
    xUnfetch: None,
};

unsafe extern "C" fn open(
    vfs: *mut sqlite3_vfs,
    name: *const c_char,
    file: *mut sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real_vfs = real_vfs(vfs);
    let Some(real_open) = (*real_vfs).xOpen else {
        return SQLITE_ERROR;
    };
    if flags & SQLITE_OPEN_MAIN_DB == 0 {
        // Journals and temp files: the default VFS's own file in our slot, as if we were not here.
        return real_open(real_vfs, name, file, flags, out_flags);
    }
    let real = file.cast::<u8>().add(REAL_OFFSET).cast::<sqlite3_file>();
    (*real).pMethods = ptr::null();
    let rc = real_open(real_vfs, name, real, flags, out_flags);
    if rc != SQLITE_OK {
        // SQLite closes only a file whose pMethods is set: ours stays unset, so close theirs.
        if let Some(real_close) = (*real).pMethods.as_ref().and_then(|m| m.xClose) {
            real_close(real);
        }
        (*file).pMethods = ptr::null();
        return rc;
    }
    ptr::write(
        file.cast::<BatchedFile>(),
        BatchedFile {
            base: sqlite3_file { pMethods: &METHODS },
            real,
            windows: [Window::EMPTY, Window::EMPTY],
            failed: watch_of(name),
        },
    );
    SQLITE_OK
}

unsafe fn batched<'a>(file: *mut sqlite3_file) -> &'a mut BatchedFile {
    &mut *file.cast::<BatchedFile>()
}

unsafe fn real_methods<'a>(f: &BatchedFile) -> &'a sqlite3_io_methods {
    &*(*f.real).pMethods
}

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

/// Flushes, then runs `call` on the default VFS's file; a failed flush is the answer.
unsafe fn flushed(file: *mut sqlite3_file, call: impl FnOnce(*mut sqlite3_file) -> c_int) -> c_int {
    let f = batched(file);
    let rc = flush(f);
    if rc != SQLITE_OK {
        return rc;
    }
    call(f.real)
}

unsafe extern "C" fn write(
    file: *mut sqlite3_file,
    data: *const c_void,
    amt: c_int,
    ofst: sqlite3_int64,
) -> c_int {
    let f = batched(file);
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
        .windows
        .iter()
        .position(|w| w.in_use() && w.start == start)
    {
        return Ok(Some(&mut f.windows[i]));
    }
    if f.windows[1].in_use() {
        let rc = f.flush_window(0);
        if rc != SQLITE_OK {
            return Err(rc);
        }
        f.windows.swap(0, 1);
    }
    let i = usize::from(f.windows[0].in_use());
    let window = &mut f.windows[i];
    if window.bytes.len() != BATCH {
        if window.bytes.try_reserve_exact(BATCH).is_err() {
            return Ok(None);
        }
        window.bytes.resize(BATCH, 0);
    }
    window.start = start;
    Ok(Some(window))
}

unsafe extern "C" fn close(file: *mut sqlite3_file) -> c_int {
    let f = batched(file);
    let flushed = flush(f);
    let closed = match real_methods(f).xClose {
        Some(close) => close(f.real),
        None => SQLITE_OK,
    };
    // SQLite never touches a closed file again: free the buffers, let go of the watch.
    ptr::drop_in_place(&mut f.windows);
    ptr::drop_in_place(&mut f.failed);
    if flushed != SQLITE_OK {
        flushed
    } else {
        closed
    }
}

unsafe extern "C" fn read(
    file: *mut sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    ofst: sqlite3_int64,
) -> c_int {
    flushed(file, |real| match (*(*real).pMethods).xRead {
        Some(read) => read(real, buf, amt, ofst),
        None => SQLITE_ERROR,
    })
}

unsafe extern "C" fn truncate(file: *mut sqlite3_file, size: sqlite3_int64) -> c_int {
    flushed(file, |real| match (*(*real).pMethods).xTruncate {
        Some(truncate) => truncate(real, size),
        None => SQLITE_ERROR,
    })
}

unsafe extern "C" fn sync(file: *mut sqlite3_file, flags: c_int) -> c_int {
    flushed(file, |real| match (*(*real).pMethods).xSync {
        Some(sync) => sync(real, flags),
        None => SQLITE_ERROR,
    })
}

unsafe extern "C" fn file_size(file: *mut sqlite3_file, size: *mut sqlite3_int64) -> c_int {
    flushed(file, |real| match (*(*real).pMethods).xFileSize {
        Some(file_size) => file_size(real, size),
        None => SQLITE_ERROR,
    })
}

unsafe extern "C" fn unlock(file: *mut sqlite3_file, level: c_int) -> c_int {
    flushed(file, |real| match (*(*real).pMethods).xUnlock {
        Some(unlock) => unlock(real, level),
        None => SQLITE_OK,
    })
}

unsafe extern "C" fn file_control(file: *mut sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    flushed(file, |real| match (*(*real).pMethods).xFileControl {
        Some(file_control) => file_control(real, op, arg),
        None => 12, // SQLITE_NOTFOUND: "no such file control"
    })
}

unsafe extern "C" fn lock(file: *mut sqlite3_file, level: c_int) -> c_int {
    let f = batched(file);
    match real_methods(f).xLock {
        Some(lock) => lock(f.real, level),
        None => SQLITE_OK,
    }
}

unsafe extern "C" fn check_reserved_lock(file: *mut sqlite3_file, out: *mut c_int) -> c_int {
    let f = batched(file);
    match real_methods(f).xCheckReservedLock {
        Some(check) => check(f.real, out),
        None => {
            *out = 0;
            SQLITE_OK
        }
    }
}

unsafe extern "C" fn sector_size(file: *mut sqlite3_file) -> c_int {
    let f = batched(file);
    real_methods(f)
        .xSectorSize
        .map_or(4096, |size| size(f.real))
}

unsafe extern "C" fn device_characteristics(file: *mut sqlite3_file) -> c_int {
    let f = batched(file);
    real_methods(f)
        .xDeviceCharacteristics
        .map_or(0, |chars| chars(f.real))
}

// The VFS-level calls, forwarded with the default VFS's own pointer (a VFS may rely on it).

unsafe extern "C" fn delete(vfs: *mut sqlite3_vfs, name: *const c_char, sync_dir: c_int) -> c_int {
    let real = real_vfs(vfs);
    (*real)
        .xDelete
        .map_or(SQLITE_ERROR, |f| f(real, name, sync_dir))
}

unsafe extern "C" fn access(
    vfs: *mut sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    out: *mut c_int,
) -> c_int {
    let real = real_vfs(vfs);
    (*real)
        .xAccess
        .map_or(SQLITE_ERROR, |f| f(real, name, flags, out))
}

unsafe extern "C" fn full_pathname(
    vfs: *mut sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    let real = real_vfs(vfs);
    (*real)
        .xFullPathname
        .map_or(SQLITE_ERROR, |f| f(real, name, n_out, out))
}

unsafe extern "C" fn dl_open(vfs: *mut sqlite3_vfs, name: *const c_char) -> *mut c_void {
    let real = real_vfs(vfs);
    (*real).xDlOpen.map_or(ptr::null_mut(), |f| f(real, name))
}

unsafe extern "C" fn dl_error(vfs: *mut sqlite3_vfs, n: c_int, out: *mut c_char) {
    let real = real_vfs(vfs);
    if let Some(f) = (*real).xDlError {
        f(real, n, out)
    }
}

type DlSymbol = Option<unsafe extern "C" fn(*mut sqlite3_vfs, *mut c_void, *const c_char)>;

unsafe extern "C" fn dl_sym(
    vfs: *mut sqlite3_vfs,
    handle: *mut c_void,
    symbol: *const c_char,
) -> DlSymbol {
    let real = real_vfs(vfs);
    (*real).xDlSym.and_then(|f| f(real, handle, symbol))
}

unsafe extern "C" fn dl_close(vfs: *mut sqlite3_vfs, handle: *mut c_void) {
    let real = real_vfs(vfs);
    if let Some(f) = (*real).xDlClose {
        f(real, handle)
    }
}

unsafe extern "C" fn randomness(vfs: *mut sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    let real = real_vfs(vfs);
    (*real).xRandomness.map_or(0, |f| f(real, n, out))
}

unsafe extern "C" fn sleep(vfs: *mut sqlite3_vfs, micros: c_int) -> c_int {
    let real = real_vfs(vfs);
    (*real).xSleep.map_or(0, |f| f(real, micros))
}

unsafe extern "C" fn current_time(vfs: *mut sqlite3_vfs, out: *mut f64) -> c_int {
    let real = real_vfs(vfs);
    (*real).xCurrentTime.map_or(SQLITE_ERROR, |f| f(real, out))
}

unsafe extern "C" fn get_last_error(vfs: *mut sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    let real = real_vfs(vfs);
    (*real).xGetLastError.map_or(0, |f| f(real, n, out))
}

unsafe extern "C" fn current_time_int64(vfs: *mut sqlite3_vfs, out: *mut sqlite3_int64) -> c_int {
    let real = real_vfs(vfs);
    (*real)
        .xCurrentTimeInt64
        .map_or(SQLITE_ERROR, |f| f(real, out))
}

#[cfg(test)]
mod tests {
    use super::*;

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
