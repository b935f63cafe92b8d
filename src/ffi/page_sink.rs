//! `sqlite_backup_sink`: a VFS whose main database file is not a file. Every page the pager
//! writes is handed, with its number, to a `PageSink` (the streaming snapshot's, which passes
//! pages on to compression); nothing touches the disk. The destination of an online backup
//! opened here (`open`) receives the source's pages as the backup copies them.
//!
//! Only a main database file can be opened (journals are off on a sink connection: any other
//! file is refused). Reads are answered by the sink (the pager re-reads page 1 at commit when
//! it was evicted); a read the sink cannot answer is an I/O error, never made-up bytes.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;
use std::sync::{Arc, Mutex, OnceLock};

use sqlite3ext_sys::{sqlite3, sqlite3_file, sqlite3_int64, sqlite3_io_methods, sqlite3_vfs};

use super::shim::{self, Registry};
use super::{api, Connection, SQLITE_OK};
use crate::error::{Error, Kind, Result};

const NAME: &CStr = c"sqlite_backup_sink";
const PREFIX: &str = "/sqlite-backup-sink/";
const SQLITE_CANTOPEN: c_int = 14;
const SQLITE_NOTFOUND: c_int = 12;
const SQLITE_IOERR_READ: c_int = 10 | (1 << 8);
const SQLITE_IOERR_SHORT_READ: c_int = 10 | (2 << 8);
const SQLITE_IOERR_WRITE: c_int = 10 | (3 << 8);
const SQLITE_IOERR_TRUNCATE: c_int = 10 | (6 << 8);
const SQLITE_OPEN_MAIN_DB: c_int = 0x100;
const SQLITE_OPEN_READWRITE: c_int = 0x2;
const SQLITE_OPEN_CREATE: c_int = 0x4;

/// Where the pages of a sink connection go. Called on the thread that uses the connection.
pub trait PageSink: Send {
    /// Page `pgno` (1-based), `page.len()` bytes: the page size.
    fn write_page(&mut self, pgno: u32, page: &[u8]) -> std::result::Result<(), String>;
    /// Fills `buf` with the bytes at `offset` of what was written, when the sink still has
    /// them; false otherwise.
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> bool;
}

type Shared = Arc<Mutex<dyn PageSink>>;

#[derive(Clone)]
struct Entry {
    sink: Shared,
    /// The first error a write met, for the message (SQLite only reports "disk I/O error").
    error: Arc<Mutex<Option<String>>>,
}

static REGISTERED: OnceLock<bool> = OnceLock::new();
static SINKS: Registry<Entry> = Registry::new();

/// A connection whose main database writes into a sink; the sink leaves the registry when
/// this is dropped (after the connection is closed).
pub struct SinkConnection {
    conn: Option<Connection>,
    token: u64,
    error: Arc<Mutex<Option<String>>>,
}

impl SinkConnection {
    pub fn conn(&self) -> Result<&Connection> {
        self.conn
            .as_ref()
            .ok_or_else(|| Error::new(Kind::Sqlite, "the page sink is closed"))
    }

    /// The first error a page write met, if any.
    pub fn write_error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }
}

impl Drop for SinkConnection {
    fn drop(&mut self) {
        drop(self.conn.take());
        SINKS.remove(self.token);
    }
}

/// Whether this host lets us register the sink (checked once).
pub fn available() -> bool {
    *REGISTERED.get_or_init(|| register().is_ok())
}

/// Opens a connection on a new, empty database whose pages go to `sink`. Journal off,
/// synchronous off, a small cache: pages leave the cache (and reach the sink) soon after the
/// backup copies them.
pub fn open(sink: Shared) -> Result<SinkConnection> {
    if !available() {
        return Err(Error::new(
            Kind::Sqlite,
            "this SQLite cannot register the page sink VFS",
        ));
    }
    let error = Arc::new(Mutex::new(None));
    let token = SINKS.insert(Entry {
        sink,
        error: Arc::clone(&error),
    });
    let mut out = SinkConnection {
        conn: None,
        token,
        error,
    };
    let open_v2 = api()?
        .open_v2
        .ok_or_else(|| Error::new(Kind::Sqlite, "this SQLite lacks sqlite3_open_v2"))?;
    let name = CString::new(format!("{PREFIX}{token}"))
        .map_err(|_| Error::new(Kind::Sqlite, "bad sink name"))?;
    let mut db: *mut sqlite3 = ptr::null_mut();
    // SAFETY: valid C strings, out-pointer to a local; our registered VFS.
    let rc = unsafe {
        open_v2(
            name.as_ptr(),
            &mut db,
            SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
            NAME.as_ptr(),
        )
    };
    let conn = Connection { db, owned: true };
    if rc != SQLITE_OK {
        return Err(Error::new(
            Kind::Sqlite,
            format!("cannot open the page sink: {}", conn.errmsg()),
        ));
    }
    conn.exec(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA locking_mode = EXCLUSIVE; \
         PRAGMA cache_size = -2048",
    )?;
    out.conn = Some(conn);
    Ok(out)
}

#[repr(C)]
struct SinkFile {
    base: sqlite3_file,
    sink: Option<Shared>,
    error: Option<Arc<Mutex<Option<String>>>>,
    size: i64,
}

/// Beside the default VFS for what a database needs besides its file (randomness, time);
/// the sink's own files, names and errors otherwise.
fn register() -> Result<()> {
    shim::register(NAME, "the page sink VFS", |base| sqlite3_vfs {
        iVersion: 2,
        szOsFile: std::mem::size_of::<SinkFile>() as c_int,
        mxPathname: base.mxPathname.max(64),
        xOpen: Some(open_file),
        xDelete: Some(delete),
        xAccess: Some(access),
        xFullPathname: Some(full_pathname),
        xDlOpen: None,
        xDlError: None,
        xDlSym: None,
        xDlClose: None,
        xGetLastError: Some(get_last_error),
        ..shim::forwarding_vfs(base)
    })
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
    xUnlock: Some(lock),
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

/// The token in a sink file's name.
fn token_of(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?.parse().ok()
}

unsafe extern "C" fn open_file(
    _vfs: *mut sqlite3_vfs,
    name: *const c_char,
    file: *mut sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    (*file).pMethods = ptr::null();
    if flags & SQLITE_OPEN_MAIN_DB == 0 || name.is_null() {
        return SQLITE_CANTOPEN;
    }
    let token = CStr::from_ptr(name).to_str().ok().and_then(token_of);
    let Some(Entry { sink, error }) = token.and_then(|t| SINKS.get(t)) else {
        return SQLITE_CANTOPEN;
    };
    ptr::write(
        file.cast::<SinkFile>(),
        SinkFile {
            base: sqlite3_file { pMethods: &METHODS },
            sink: Some(sink),
            error: Some(error),
            size: 0,
        },
    );
    if !out_flags.is_null() {
        *out_flags = flags;
    }
    SQLITE_OK
}

unsafe fn sink_file<'a>(file: *mut sqlite3_file) -> &'a mut SinkFile {
    &mut *file.cast::<SinkFile>()
}

unsafe extern "C" fn close(file: *mut sqlite3_file) -> c_int {
    let f = sink_file(file);
    ptr::drop_in_place(&mut f.sink);
    ptr::drop_in_place(&mut f.error);
    SQLITE_OK
}

unsafe extern "C" fn write(
    file: *mut sqlite3_file,
    data: *const c_void,
    amt: c_int,
    ofst: sqlite3_int64,
) -> c_int {
    let f = sink_file(file);
    let len = usize::try_from(amt).unwrap_or(0);
    let outcome = if !(512..=65536).contains(&len) || !len.is_power_of_two() || ofst < 0 {
        Err(format!("a write of {amt} bytes at {ofst} is not a page"))
    } else if ofst % (len as i64) != 0 {
        Err(format!("a write at {ofst} is not page-aligned"))
    } else {
        match (u32::try_from(ofst / len as i64 + 1), f.sink.as_ref()) {
            (Ok(pgno), Some(sink)) => {
                let page = std::slice::from_raw_parts(data.cast::<u8>(), len);
                match sink.lock() {
                    Ok(mut s) => s.write_page(pgno, page),
                    Err(_) => Err("the page sink failed".to_string()),
                }
            }
            _ => Err(format!("page at offset {ofst} is out of range")),
        }
    };
    match outcome {
        Ok(()) => {
            f.size = f.size.max(ofst + len as i64);
            SQLITE_OK
        }
        Err(message) => {
            if let Some(Ok(mut slot)) = f.error.as_ref().map(|e| e.lock()) {
                slot.get_or_insert(message);
            }
            SQLITE_IOERR_WRITE
        }
    }
}

unsafe extern "C" fn read(
    file: *mut sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    ofst: sqlite3_int64,
) -> c_int {
    let f = sink_file(file);
    let len = usize::try_from(amt).unwrap_or(0);
    let out = std::slice::from_raw_parts_mut(buf.cast::<u8>(), len);
    if ofst >= f.size || ofst < 0 {
        out.fill(0);
        return SQLITE_IOERR_SHORT_READ;
    }
    let answered = match f.sink.as_ref().map(|s| s.lock()) {
        Some(Ok(mut s)) => s.read_at(ofst as u64, out),
        _ => false,
    };
    if answered {
        SQLITE_OK
    } else {
        SQLITE_IOERR_READ
    }
}

unsafe extern "C" fn truncate(file: *mut sqlite3_file, size: sqlite3_int64) -> c_int {
    // Pages handed on cannot be taken back: only a size at or above what was written holds.
    let f = sink_file(file);
    if size >= f.size {
        SQLITE_OK
    } else {
        SQLITE_IOERR_TRUNCATE
    }
}

unsafe extern "C" fn sync(_file: *mut sqlite3_file, _flags: c_int) -> c_int {
    SQLITE_OK
}

unsafe extern "C" fn file_size(file: *mut sqlite3_file, size: *mut sqlite3_int64) -> c_int {
    *size = sink_file(file).size;
    SQLITE_OK
}

unsafe extern "C" fn lock(_file: *mut sqlite3_file, _level: c_int) -> c_int {
    SQLITE_OK
}

unsafe extern "C" fn check_reserved_lock(_file: *mut sqlite3_file, out: *mut c_int) -> c_int {
    *out = 0;
    SQLITE_OK
}

unsafe extern "C" fn file_control(
    _file: *mut sqlite3_file,
    _op: c_int,
    _arg: *mut c_void,
) -> c_int {
    SQLITE_NOTFOUND
}

unsafe extern "C" fn sector_size(_file: *mut sqlite3_file) -> c_int {
    512
}

unsafe extern "C" fn device_characteristics(_file: *mut sqlite3_file) -> c_int {
    0
}

unsafe extern "C" fn delete(_vfs: *mut sqlite3_vfs, _name: *const c_char, _sync: c_int) -> c_int {
    SQLITE_OK
}

unsafe extern "C" fn access(
    _vfs: *mut sqlite3_vfs,
    _name: *const c_char,
    _flags: c_int,
    out: *mut c_int,
) -> c_int {
    *out = 0; // no journal, no WAL: nothing else exists
    SQLITE_OK
}

unsafe extern "C" fn full_pathname(
    _vfs: *mut sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    let bytes = CStr::from_ptr(name).to_bytes_with_nul();
    if bytes.len() > usize::try_from(n_out).unwrap_or(0) {
        return SQLITE_CANTOPEN;
    }
    ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), out, bytes.len());
    SQLITE_OK
}

unsafe extern "C" fn get_last_error(_vfs: *mut sqlite3_vfs, _n: c_int, _out: *mut c_char) -> c_int {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_names_carry_their_token() {
        assert_eq!(token_of("/sqlite-backup-sink/42"), Some(42));
        assert_eq!(token_of("/sqlite-backup-sink/x"), None);
        assert_eq!(token_of("/tmp/db"), None);
    }
}
