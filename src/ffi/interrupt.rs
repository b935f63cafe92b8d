//! Asking whether the caller's connection was interrupted (`sqlite3_interrupt`), for
//! `crate::interrupt`'s cancellation points.
//!
//! `sqlite3_is_interrupted` exists only from SQLite 3.41. What works on every version: while
//! our function runs, the caller's statement is active, so SQLite keeps the connection's
//! interrupt flag set, and any statement stepped on that connection fails with
//! SQLITE_INTERRUPT. A prepared statement asks.
//!
//! It counts to 1000 rather than `SELECT 1`: about 10,000 VM instructions (some 50 µs), so
//! an application's progress handler on its connection — the usual way to put a time limit
//! on a statement — is called while our function runs, as if its statement were running.
//! A plain `SELECT 1` never reaches a handler's instruction count, and the time limit would
//! pass unseen.

use std::ffi::{c_int, c_void};
use std::marker::PhantomData;
use std::ptr;

use sqlite3ext_sys::{sqlite3, sqlite3_stmt};

use super::{api, SQLITE_OK, SQLITE_ROW};

const SQLITE_INTERRUPT: c_int = 9;
const PROBE: &std::ffi::CStr = c"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n \
    WHERE i < 1000) SELECT count(*) FROM n";
/// VM instructions between calls of the progress handler on our own connections.
pub(super) const PROGRESS_OPS: c_int = 1000;

/// The probe for the connection a SQL function was called on.
pub struct Probe {
    db: *mut sqlite3,
    /// `PROBE`, prepared on first use, finalized on drop.
    stmt: *mut sqlite3_stmt,
    /// The probe cannot run on this connection: never a false "interrupted".
    broken: bool,
    _thread_bound: PhantomData<*mut ()>,
}

impl Probe {
    /// # Safety
    /// `db` is the live connection of the running SQL call; the probe is used and dropped on
    /// the calling thread, before the call returns.
    pub unsafe fn new(db: *mut sqlite3) -> Probe {
        Probe {
            db,
            stmt: ptr::null_mut(),
            broken: db.is_null(),
            _thread_bound: PhantomData,
        }
    }
}

impl crate::interrupt::Probe for Probe {
    fn interrupted(&mut self) -> bool {
        if self.broken {
            return false;
        }
        let routines = api()
            .ok()
            .and_then(|a| Some((a.prepare_v2?, a.step?, a.reset?)));
        let Some((prepare, step, reset)) = routines else {
            self.broken = true;
            return false;
        };
        // SAFETY: db is the live caller's connection (see `new`); stmt is ours.
        let rc = unsafe {
            let mut rc = SQLITE_OK;
            if self.stmt.is_null() {
                rc = prepare(self.db, PROBE.as_ptr(), -1, &mut self.stmt, ptr::null_mut());
            }
            if rc == SQLITE_OK && !self.stmt.is_null() {
                rc = step(self.stmt);
                reset(self.stmt);
            }
            rc
        };
        match rc & 0xff {
            SQLITE_INTERRUPT => true,
            SQLITE_ROW => false,
            _ => {
                self.broken = true;
                false
            }
        }
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // A statement left on the caller's connection would keep it from closing.
        if !self.stmt.is_null() {
            if let Some(finalize) = api().ok().and_then(|a| a.finalize) {
                // SAFETY: our own statement, finalized once, on the thread that made it.
                unsafe { finalize(self.stmt) };
            }
        }
    }
}

/// The progress handler of the connections we open: a non-zero answer makes SQLite stop the
/// running statement (VACUUM INTO, integrity_check) with SQLITE_INTERRUPT.
pub(super) unsafe extern "C" fn progress(_: *mut c_void) -> c_int {
    std::panic::catch_unwind(|| c_int::from(crate::interrupt::check().is_err())).unwrap_or(1)
}
