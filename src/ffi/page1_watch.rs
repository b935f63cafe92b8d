//! `sqlite_backup_reader`: a VFS shim for the stream's own read-only connection that notes the
//! bytes of page 1 whenever the pager reads it, from the database file or from a WAL frame.
//! Knowing page 1 as the read transaction sees it lets the stream start with (a prediction of)
//! the copy's page 1 without a first pass; the copy's own page 1, written at its commit, is
//! compared with the prediction, so a wrong one is an error, never a wrong backup.
//!
//! Everything else goes to the default VFS unchanged (locks, shared memory, other files).

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use sqlite3ext_sys::{sqlite3_file, sqlite3_int64, sqlite3_io_methods, sqlite3_vfs};

use super::{api, SQLITE_OK};
use crate::error::{Error, Kind, Result};

const NAME: &CStr = c"sqlite_backup_reader";
const PARAMETER: &CStr = c"sqlite_backup_page1";
const SQLITE_ERROR: c_int = 1;
const SQLITE_OPEN_MAIN_DB: c_int = 0x100;
const SQLITE_OPEN_WAL: c_int = 0x80000;
/// The WAL header, and each frame's header before its page.
const WAL_HEADER: i64 = 32;
const FRAME_HEADER: i64 = 24;

type Slot = Arc<Mutex<Option<Vec<u8>>>>;

static REGISTERED: OnceLock<bool> = OnceLock::new();
static SLOTS: Mutex<BTreeMap<u64, Slot>> = Mutex::new(BTreeMap::new());
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn slots() -> std::sync::MutexGuard<'static, BTreeMap<u64, Slot>> {
    SLOTS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The page 1 last read by the connection opened with `uri_parameter()`.
pub struct Page1Watch {
    token: u64,
    slot: Slot,
}

impl Page1Watch {
    /// None when the shim cannot be registered in this host.
    pub fn new() -> Option<Page1Watch> {
        if !*REGISTERED.get_or_init(|| register().is_ok()) {
            return None;
        }
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        let slot: Slot = Arc::new(Mutex::new(None));
        slots().insert(token, Arc::clone(&slot));
        Some(Page1Watch { token, slot })
    }

    /// `vfs=…&name=value` to append to the database's `file:` URI.
    pub fn uri_parameters(&self) -> String {
        format!(
            "vfs={}&{}={}",
            NAME.to_str().unwrap_or_default(),
            PARAMETER.to_str().unwrap_or_default(),
            self.token
        )
    }

    pub fn page1(&self) -> Option<Vec<u8>> {
        self.slot.lock().ok().and_then(|p| p.clone())
    }
}

impl Drop for Page1Watch {
    fn drop(&mut self) {
        slots().remove(&self.token);
    }
}

unsafe fn slot_of(name: *const c_char) -> Option<Slot> {
    let uri_parameter = api().ok()?.uri_parameter?;
    if name.is_null() {
        return None;
    }
    // SAFETY: a database or WAL filename SQLite gave xOpen (3.31+ accepts both).
    let value = uri_parameter(name, PARAMETER.as_ptr());
    if value.is_null() {
        return None;
    }
    let token: u64 = CStr::from_ptr(value).to_str().ok()?.parse().ok()?;
    slots().get(&token).cloned()
}

#[repr(C)]
struct WatchedFile {
    base: sqlite3_file,
    real: *mut sqlite3_file,
    slot: Option<Slot>,
    wal: bool,
}

const REAL_OFFSET: usize = (std::mem::size_of::<WatchedFile>() + 7) & !7;

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
    // SAFETY: checked for null.
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
        xDlOpen: None,
        xDlError: None,
        xDlSym: None,
        xDlClose: None,
        xRandomness: Some(randomness),
        xSleep: Some(sleep),
        xCurrentTime: Some(current_time),
        xGetLastError: Some(get_last_error),
        xCurrentTimeInt64: Some(current_time_int64),
        xSetSystemCall: None,
        xGetSystemCall: None,
        xNextSystemCall: None,
    });
    let vfs = Box::into_raw(vfs);
    // SAFETY: a complete VFS whose memory is never freed; not made the default.
    let rc = unsafe { register(vfs, 0) };
    if rc != SQLITE_OK {
        // SAFETY: SQLite refused it, so nothing refers to it.
        drop(unsafe { Box::from_raw(vfs) });
        return Err(Error::new(Kind::Sqlite, "cannot register the reader VFS"));
    }
    Ok(())
}

unsafe fn real_vfs(vfs: *mut sqlite3_vfs) -> *mut sqlite3_vfs {
    (*vfs).pAppData.cast()
}

/// Version 2: shared memory (WAL) forwarded; no xFetch, so reads go through xRead.
static METHODS: sqlite3_io_methods = sqlite3_io_methods {
    iVersion: 2,
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
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
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
    if flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL) == 0 {
        return real_open(real_vfs, name, file, flags, out_flags);
    }
    let real = file.cast::<u8>().add(REAL_OFFSET).cast::<sqlite3_file>();
    (*real).pMethods = ptr::null();
    let rc = real_open(real_vfs, name, real, flags, out_flags);
    if rc != SQLITE_OK {
        if let Some(real_close) = (*real).pMethods.as_ref().and_then(|m| m.xClose) {
            real_close(real);
        }
        (*file).pMethods = ptr::null();
        return rc;
    }
    ptr::write(
        file.cast::<WatchedFile>(),
        WatchedFile {
            base: sqlite3_file { pMethods: &METHODS },
            real,
            slot: slot_of(name),
            wal: flags & SQLITE_OPEN_WAL != 0,
        },
    );
    SQLITE_OK
}

unsafe fn watched<'a>(file: *mut sqlite3_file) -> &'a mut WatchedFile {
    &mut *file.cast::<WatchedFile>()
}

unsafe fn real_methods<'a>(f: &WatchedFile) -> &'a sqlite3_io_methods {
    &*(*f.real).pMethods
}

unsafe extern "C" fn close(file: *mut sqlite3_file) -> c_int {
    let f = watched(file);
    let rc = match real_methods(f).xClose {
        Some(close) => close(f.real),
        None => SQLITE_OK,
    };
    ptr::drop_in_place(&mut f.slot);
    rc
}

unsafe extern "C" fn read(
    file: *mut sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    ofst: sqlite3_int64,
) -> c_int {
    let f = watched(file);
    let Some(real_read) = real_methods(f).xRead else {
        return SQLITE_ERROR;
    };
    let rc = real_read(f.real, buf, amt, ofst);
    let len = i64::from(amt);
    let page_sized = (512..=65536).contains(&len) && (len & (len - 1)) == 0;
    if rc != SQLITE_OK || !page_sized {
        return rc;
    }
    let Some(slot) = f.slot.as_ref() else {
        return rc;
    };
    let is_page1 = if f.wal {
        // A frame's page: its number is the first field of the frame header before it.
        let frame = ofst - WAL_HEADER - FRAME_HEADER;
        if frame < 0 || frame % (len + FRAME_HEADER) != 0 {
            false
        } else {
            let mut pgno = [0u8; 4];
            real_read(f.real, pgno.as_mut_ptr().cast(), 4, ofst - FRAME_HEADER) == SQLITE_OK
                && u32::from_be_bytes(pgno) == 1
        }
    } else {
        ofst == 0
    };
    if is_page1 {
        let bytes = std::slice::from_raw_parts(buf.cast::<u8>(), amt as usize);
        if let Ok(mut page1) = slot.lock() {
            *page1 = Some(bytes.to_vec());
        }
    }
    rc
}

macro_rules! forward {
    ($name:ident, $field:ident, ($($arg:ident: $ty:ty),*), $default:expr) => {
        unsafe extern "C" fn $name(file: *mut sqlite3_file $(, $arg: $ty)*) -> c_int {
            let f = watched(file);
            match real_methods(f).$field {
                Some(call) => call(f.real $(, $arg)*),
                None => $default,
            }
        }
    };
}

forward!(write, xWrite, (data: *const c_void, amt: c_int, ofst: sqlite3_int64), SQLITE_ERROR);
forward!(truncate, xTruncate, (size: sqlite3_int64), SQLITE_ERROR);
forward!(sync, xSync, (flags: c_int), SQLITE_ERROR);
forward!(file_size, xFileSize, (size: *mut sqlite3_int64), SQLITE_ERROR);
forward!(lock, xLock, (level: c_int), SQLITE_OK);
forward!(unlock, xUnlock, (level: c_int), SQLITE_OK);
forward!(check_reserved_lock, xCheckReservedLock, (out: *mut c_int), SQLITE_ERROR);
forward!(file_control, xFileControl, (op: c_int, arg: *mut c_void), 12);
forward!(shm_lock, xShmLock, (offset: c_int, n: c_int, flags: c_int), SQLITE_ERROR);
forward!(shm_unmap, xShmUnmap, (delete_flag: c_int), SQLITE_OK);

unsafe extern "C" fn sector_size(file: *mut sqlite3_file) -> c_int {
    let f = watched(file);
    real_methods(f)
        .xSectorSize
        .map_or(4096, |size| size(f.real))
}

unsafe extern "C" fn device_characteristics(file: *mut sqlite3_file) -> c_int {
    let f = watched(file);
    real_methods(f)
        .xDeviceCharacteristics
        .map_or(0, |chars| chars(f.real))
}

unsafe extern "C" fn shm_map(
    file: *mut sqlite3_file,
    page: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let f = watched(file);
    match real_methods(f).xShmMap {
        Some(map) => map(f.real, page, size, extend, out),
        None => SQLITE_ERROR,
    }
}

unsafe extern "C" fn shm_barrier(file: *mut sqlite3_file) {
    let f = watched(file);
    if let Some(barrier) = real_methods(f).xShmBarrier {
        barrier(f.real)
    }
}

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
