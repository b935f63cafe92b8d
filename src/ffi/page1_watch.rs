//! `sqlite_backup_reader`: a VFS shim for the stream's own read-only connection that notes the
//! bytes of page 1 whenever the pager reads it, from the database file or from a WAL frame.
//! Knowing page 1 as the read transaction sees it lets the stream start with (a prediction of)
//! the copy's page 1 without a first pass; the copy's own page 1, written at its commit, is
//! compared with the prediction, so a wrong one is an error, never a wrong backup.
//!
//! Everything else goes to the default VFS unchanged (locks, shared memory, other files).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Arc, Mutex, OnceLock};

use sqlite3ext_sys::{sqlite3_file, sqlite3_int64, sqlite3_io_methods, sqlite3_vfs};

use super::shim::{self, Registry, Shim};
use super::SQLITE_OK;
use crate::error::Result;

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
static SLOTS: Registry<Slot> = Registry::new();

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
        let slot: Slot = Arc::new(Mutex::new(None));
        let token = SLOTS.insert(Arc::clone(&slot));
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
        SLOTS.remove(self.token);
    }
}

/// What a watched file keeps: where page 1 goes (none when the URI names no live watch),
/// and whether it is the WAL (pages there follow frame headers).
struct Watched {
    slot: Option<Slot>,
    wal: bool,
}

impl Shim for Watched {
    fn methods() -> &'static sqlite3_io_methods {
        &METHODS
    }

    /// The database and its WAL are watched; other files (journals, temp files) are not.
    unsafe fn state(name: *const c_char, flags: c_int) -> Option<Watched> {
        (flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL) != 0).then(|| Watched {
            // SAFETY: a database or WAL filename SQLite gave xOpen.
            slot: SLOTS.named_in_uri(name, PARAMETER),
            wal: flags & SQLITE_OPEN_WAL != 0,
        })
    }
}

fn register() -> Result<()> {
    shim::register(NAME, "the reader VFS", |base| sqlite3_vfs {
        szOsFile: shim::os_file_size::<Watched>(base),
        xOpen: Some(shim::open::<Watched>),
        xDlOpen: None,
        xDlError: None,
        xDlSym: None,
        xDlClose: None,
        ..shim::forwarding_vfs(base)
    })
}

/// Version 2: shared memory (WAL) forwarded; no xFetch, so reads go through xRead.
static METHODS: sqlite3_io_methods = sqlite3_io_methods {
    xRead: Some(read),
    ..shim::methods::<Watched>(2)
};

unsafe extern "C" fn read(
    file: *mut sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    ofst: sqlite3_int64,
) -> c_int {
    let f = shim::wrapped::<Watched>(file);
    let Some(real_read) = f.real_methods().xRead else {
        return SQLITE_ERROR;
    };
    let rc = real_read(f.real, buf, amt, ofst);
    let len = i64::from(amt);
    let page_sized = (512..=65536).contains(&len) && (len & (len - 1)) == 0;
    if rc != SQLITE_OK || !page_sized {
        return rc;
    }
    let Some(slot) = f.state.slot.as_ref() else {
        return rc;
    };
    let is_page1 = if f.state.wal {
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
