//! What the three VFS shims (`batched_vfs`, `page1_watch`, `page_sink`) share, so that each
//! keeps only what it does differently:
//! - `register`: a VFS added beside the default one (never made the default), for the life of
//!   the process, with the default VFS in its `pAppData`; `forwarding_vfs` sends every
//!   VFS-level call (delete, access, randomness, time, …) to the default VFS.
//! - A wrapped file (`Wrapped<S>`): our struct first, the default VFS's own file right after
//!   it in the memory SQLite allocates (`os_file_size`), opened by `open`; `methods` is an
//!   io_methods table that forwards every call to that file, for a shim to override the few
//!   calls it changes. `Shim::settle` runs before the forwarded calls that read or change the
//!   file, so a shim holding writes back (batched_vfs) can write them out first.
//! - `Registry`: the objects a file finds by the token in its URI or name (a watch, a sink).

use std::collections::BTreeMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use sqlite3ext_sys::{sqlite3_file, sqlite3_int64, sqlite3_io_methods, sqlite3_vfs};

use super::{api, SQLITE_OK};
use crate::error::{Error, Kind, Result};

const SQLITE_ERROR: c_int = 1;
const SQLITE_NOTFOUND: c_int = 12;

/// Registers the VFS `build` makes from the default one, named `name` and with the default
/// VFS in `pAppData` (what the forwarders of `forwarding_vfs` call). `what` names it in the
/// error.
pub fn register(
    name: &'static CStr,
    what: &str,
    build: impl FnOnce(&sqlite3_vfs) -> sqlite3_vfs,
) -> Result<()> {
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
        pNext: ptr::null_mut(),
        zName: name.as_ptr(),
        pAppData: real.cast(),
        ..build(real_ref)
    });
    // Registered for the life of the process (the library is never unloaded: -z nodelete).
    let vfs = Box::into_raw(vfs);
    // SAFETY: a complete VFS whose memory is never freed; not made the default.
    let rc = unsafe { register(vfs, 0) };
    if rc != SQLITE_OK {
        // SAFETY: SQLite refused it, so nothing refers to it.
        drop(unsafe { Box::from_raw(vfs) });
        return Err(Error::new(Kind::Sqlite, format!("cannot register {what}")));
    }
    Ok(())
}

/// A VFS like `base` whose VFS-level calls all go to the default VFS (`register` puts it in
/// `pAppData`). It opens nothing (`xOpen` is the shim's own); at most version 2, since the
/// system-call hooks of version 3 are not forwarded.
pub fn forwarding_vfs(base: &sqlite3_vfs) -> sqlite3_vfs {
    sqlite3_vfs {
        iVersion: base.iVersion.min(2),
        szOsFile: base.szOsFile,
        mxPathname: base.mxPathname,
        pNext: ptr::null_mut(),
        zName: ptr::null(),
        pAppData: ptr::null_mut(),
        xOpen: None,
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
    }
}

/// The file of a wrapping shim, as SQLite allocates it (`os_file_size`): this struct, then
/// at `real` (8-byte aligned, as SQLite's allocations are) the default VFS's file.
#[repr(C)]
pub struct Wrapped<S> {
    /// First, so that a pointer to this struct is SQLite's `sqlite3_file`.
    base: sqlite3_file,
    /// The default VFS's file, inside the same allocation.
    pub real: *mut sqlite3_file,
    /// What the shim keeps per file.
    pub state: S,
}

/// What a wrapping shim adds to forwarding.
pub trait Shim: Sized {
    /// The io_methods of the shim's own files: `methods::<Self>` with the calls it changes.
    fn methods() -> &'static sqlite3_io_methods;

    /// What a file the shim changes keeps; `None` for the others (journals, temp files…),
    /// which are then the default VFS's own files, as if the shim were not there.
    ///
    /// # Safety
    /// `name` and `flags` are what SQLite gave xOpen (`name` may be null).
    unsafe fn state(name: *const c_char, flags: c_int) -> Option<Self>;

    /// Runs before a forwarded xRead, xTruncate, xSync, xFileSize, xUnlock or xFileControl;
    /// anything but SQLITE_OK is the call's answer.
    ///
    /// # Safety
    /// `f` is an open file of this shim.
    unsafe fn settle(_f: &mut Wrapped<Self>) -> c_int {
        SQLITE_OK
    }
}

const fn real_offset<S>() -> usize {
    (std::mem::size_of::<Wrapped<S>>() + 7) & !7
}

/// `szOsFile` for a shim wrapping `base`'s files.
pub fn os_file_size<S>(base: &sqlite3_vfs) -> c_int {
    real_offset::<S>() as c_int + base.szOsFile
}

/// xOpen of a wrapping shim (a VFS from `register` whose `szOsFile` is `os_file_size::<S>`).
/// A file without `Shim::state` is the default VFS's own, in our slot; one with it gets the
/// default VFS's file after a `Wrapped` that holds the state and answers with `S::methods`.
///
/// # Safety
/// Called by SQLite as xOpen of such a VFS.
pub unsafe extern "C" fn open<S: Shim>(
    vfs: *mut sqlite3_vfs,
    name: *const c_char,
    file: *mut sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    const { assert!(std::mem::align_of::<Wrapped<S>>() <= 8) };
    let real_vfs = real_vfs(vfs);
    let Some(real_open) = (*real_vfs).xOpen else {
        return SQLITE_ERROR;
    };
    let Some(state) = S::state(name, flags) else {
        return real_open(real_vfs, name, file, flags, out_flags);
    };
    // SAFETY: SQLite allocated szOsFile = real_offset + the default VFS's size for `file`.
    let real = file
        .cast::<u8>()
        .add(real_offset::<S>())
        .cast::<sqlite3_file>();
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
    // SAFETY: `file` starts szOsFile bytes of SQLite's (8-byte aligned) memory; a Wrapped<S>
    // (alignment at most 8, asserted above) fits before real_offset. Nothing is there to drop.
    ptr::write(
        file.cast::<Wrapped<S>>(),
        Wrapped {
            base: sqlite3_file {
                pMethods: S::methods(),
            },
            real,
            state,
        },
    );
    SQLITE_OK
}

/// The wrapped file behind a `sqlite3_file` of ours.
///
/// # Safety
/// `file` was opened by `open::<S>` with a state, and is not closed.
pub unsafe fn wrapped<'a, S>(file: *mut sqlite3_file) -> &'a mut Wrapped<S> {
    &mut *file.cast::<Wrapped<S>>()
}

impl<S> Wrapped<S> {
    /// The default VFS's methods for `real` (set: its xOpen succeeded).
    ///
    /// # Safety
    /// The file is open.
    pub unsafe fn real_methods<'a>(&self) -> &'a sqlite3_io_methods {
        &*(*self.real).pMethods
    }
}

/// An io_methods table of `version` (1, or 2 for shared memory) that forwards every call to
/// the default VFS's file, `settle` first where `Shim` says; no xFetch (reads go through
/// xRead). xClose also lets go of the state.
pub const fn methods<S: Shim>(version: c_int) -> sqlite3_io_methods {
    let shm = version >= 2;
    sqlite3_io_methods {
        iVersion: version,
        xClose: Some(close::<S>),
        xRead: Some(read::<S>),
        xWrite: Some(write::<S>),
        xTruncate: Some(truncate::<S>),
        xSync: Some(sync::<S>),
        xFileSize: Some(file_size::<S>),
        xLock: Some(lock::<S>),
        xUnlock: Some(unlock::<S>),
        xCheckReservedLock: Some(check_reserved_lock::<S>),
        xFileControl: Some(file_control::<S>),
        xSectorSize: Some(sector_size::<S>),
        xDeviceCharacteristics: Some(device_characteristics::<S>),
        xShmMap: if shm { Some(shm_map::<S>) } else { None },
        xShmLock: if shm { Some(shm_lock::<S>) } else { None },
        xShmBarrier: if shm { Some(shm_barrier::<S>) } else { None },
        xShmUnmap: if shm { Some(shm_unmap::<S>) } else { None },
        xFetch: None,
        xUnfetch: None,
    }
}

/// xClose: the default VFS's file closed, then the state dropped (SQLite never touches a
/// closed file again).
///
/// # Safety
/// An open file of `open::<S>` with a state.
pub unsafe extern "C" fn close<S: Shim>(file: *mut sqlite3_file) -> c_int {
    let f = wrapped::<S>(file);
    let rc = match f.real_methods().xClose {
        Some(close) => close(f.real),
        None => SQLITE_OK,
    };
    ptr::drop_in_place(&mut f.state);
    rc
}

/// One forwarder: `$name::<S>` calls the default VFS file's `$field` (after `Shim::settle`
/// when marked `settle`), or answers `$default` when that VFS lacks it (none of SQLite's
/// own does).
macro_rules! forward {
    ($name:ident, $field:ident, $($settle:ident)? ($($arg:ident: $ty:ty),*) -> $ret:ty, $default:expr) => {
        unsafe extern "C" fn $name<S: Shim>(file: *mut sqlite3_file $(, $arg: $ty)*) -> $ret {
            let f = wrapped::<S>(file);
            $(
                let rc = S::$settle(f);
                if rc != SQLITE_OK {
                    return rc;
                }
            )?
            match f.real_methods().$field {
                Some(call) => call(f.real $(, $arg)*),
                None => $default,
            }
        }
    };
}

forward!(read, xRead, settle (buf: *mut c_void, amt: c_int, ofst: sqlite3_int64) -> c_int, SQLITE_ERROR);
forward!(write, xWrite, (data: *const c_void, amt: c_int, ofst: sqlite3_int64) -> c_int, SQLITE_ERROR);
forward!(truncate, xTruncate, settle (size: sqlite3_int64) -> c_int, SQLITE_ERROR);
forward!(sync, xSync, settle (flags: c_int) -> c_int, SQLITE_ERROR);
forward!(file_size, xFileSize, settle (size: *mut sqlite3_int64) -> c_int, SQLITE_ERROR);
forward!(lock, xLock, (level: c_int) -> c_int, SQLITE_OK);
forward!(unlock, xUnlock, settle (level: c_int) -> c_int, SQLITE_OK);
forward!(check_reserved_lock, xCheckReservedLock, (out: *mut c_int) -> c_int, SQLITE_ERROR);
forward!(file_control, xFileControl, settle (op: c_int, arg: *mut c_void) -> c_int, SQLITE_NOTFOUND);
forward!(sector_size, xSectorSize, () -> c_int, 4096);
forward!(device_characteristics, xDeviceCharacteristics, () -> c_int, 0);
forward!(shm_map, xShmMap, (page: c_int, size: c_int, extend: c_int, out: *mut *mut c_void) -> c_int, SQLITE_ERROR);
forward!(shm_lock, xShmLock, (offset: c_int, n: c_int, flags: c_int) -> c_int, SQLITE_ERROR);
forward!(shm_barrier, xShmBarrier, () -> (), ());
forward!(shm_unmap, xShmUnmap, (delete_flag: c_int) -> c_int, SQLITE_OK);

// The VFS-level calls, forwarded with the default VFS's own pointer (a VFS may rely on it).

/// The default VFS a shim registered by `register` forwards to.
unsafe fn real_vfs(vfs: *mut sqlite3_vfs) -> *mut sqlite3_vfs {
    (*vfs).pAppData.cast()
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

/// Objects a shim's files find by a token: the token goes into the file's URI or name, and
/// is only a key to look up (a name naming no live entry, or a made-up one, finds nothing).
pub struct Registry<T> {
    entries: Mutex<BTreeMap<u64, T>>,
    next: AtomicU64,
}

impl<T> Registry<T> {
    pub const fn new() -> Registry<T> {
        Registry {
            entries: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(1),
        }
    }

    /// The entries, even after a panic elsewhere poisoned the lock (a map stays valid).
    pub fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, T>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `value` under a new token, returned.
    pub fn insert(&self, value: T) -> u64 {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(token, value);
        token
    }

    pub fn remove(&self, token: u64) {
        self.lock().remove(&token);
    }
}

impl<T: Clone> Registry<T> {
    pub fn get(&self, token: u64) -> Option<T> {
        self.lock().get(&token).cloned()
    }

    /// The entry whose token the URI parameter `parameter` of file `name` holds.
    ///
    /// # Safety
    /// `name` is null or a filename SQLite gave xOpen (a database or WAL file's: 3.31+
    /// accepts both in sqlite3_uri_parameter).
    pub unsafe fn named_in_uri(&self, name: *const c_char, parameter: &CStr) -> Option<T> {
        let uri_parameter = api().ok()?.uri_parameter?;
        if name.is_null() {
            return None;
        }
        let value = uri_parameter(name, parameter.as_ptr());
        if value.is_null() {
            return None;
        }
        let token: u64 = CStr::from_ptr(value).to_str().ok()?.parse().ok()?;
        self.get(token)
    }
}
