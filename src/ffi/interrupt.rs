//! Noticing `sqlite3_interrupt` (Ctrl-C in the shell, an application's timeout) on the caller's
//! connection while one of our SQL functions runs, so a backup, verify or restore stops early
//! and stores nothing.
//!
//! `sqlite3_is_interrupted` exists only from SQLite 3.41. What works on every version: while
//! our function runs, the caller's statement is active, so SQLite keeps the connection's
//! interrupt flag set, and any statement stepped on that connection fails with
//! SQLITE_INTERRUPT. A prepared `SELECT 1`, stepped at most every `POLL_EVERY`, asks.
//!
//! The watch lives in a thread-local for the length of one SQL call: only the calling thread
//! ever touches the caller's connection, and `check` on any other thread (compression workers,
//! part uploads) answers "not interrupted" without looking.

use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::marker::PhantomData;
use std::ptr;
use std::time::{Duration, Instant};

use sqlite3ext_sys::{sqlite3, sqlite3_stmt};

use super::{api, SQLITE_OK, SQLITE_ROW};
use crate::error::{Error, Result};

/// How often the caller's connection is asked: stepping `SELECT 1` costs about a microsecond,
/// so this only keeps it off hot loops; an interrupt is seen within this (plus one block).
const POLL_EVERY: Duration = Duration::from_millis(20);
const SQLITE_INTERRUPT: c_int = 9;
/// VM instructions between calls of the progress handler on our own connections.
pub(super) const PROGRESS_OPS: c_int = 1000;

struct Watch {
    db: *mut sqlite3,
    /// `SELECT 1` on the caller's connection, prepared at the first poll.
    stmt: *mut sqlite3_stmt,
    last: Option<Instant>,
    /// An interrupt was seen in this call.
    fired: bool,
    /// The probe cannot run on this connection: stop asking (never a false "interrupted").
    broken: bool,
}

thread_local! {
    static WATCH: RefCell<Option<Watch>> = const { RefCell::new(None) };
}

/// Watches the caller's connection for the length of one SQL call; not Send: it must end on
/// the thread that started it.
pub struct Guard {
    previous: Option<Watch>,
    _thread_bound: PhantomData<*mut ()>,
}

/// Starts watching `db`, the connection the SQL function was called on.
pub fn watch(db: *mut sqlite3) -> Guard {
    let watch = Watch {
        db,
        stmt: ptr::null_mut(),
        last: None,
        fired: false,
        broken: db.is_null(),
    };
    let previous = WATCH.with(|w| w.try_borrow_mut().ok().and_then(|mut w| w.replace(watch)));
    Guard {
        previous,
        _thread_bound: PhantomData,
    }
}

impl Guard {
    /// The call's outcome, with any error replaced by `Error::interrupted()` when an interrupt
    /// was seen: whatever failed then (VACUUM INTO, integrity_check) failed because of it.
    pub fn finish<T>(self, outcome: Result<T>) -> Result<T> {
        let fired = WATCH.with(|w| {
            w.try_borrow()
                .ok()
                .and_then(|w| w.as_ref().map(|w| w.fired))
                .unwrap_or(false)
        });
        match outcome {
            Err(_) if fired => Err(Error::interrupted()),
            other => other,
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let ended = WATCH.with(|w| {
            w.try_borrow_mut()
                .ok()
                .and_then(|mut w| std::mem::replace(&mut *w, self.previous.take()))
        });
        // The probe must not outlive the call: a statement left on the caller's connection
        // would keep it from closing.
        if let Some(watch) = ended {
            if !watch.stmt.is_null() {
                if let Some(finalize) = api().ok().and_then(|a| a.finalize) {
                    // SAFETY: our own statement, finalized once, on the thread that made it.
                    unsafe { finalize(watch.stmt) };
                }
            }
        }
    }
}

/// `Err(interrupted)` once the caller's connection was interrupted. Cheap: asks SQLite at most
/// every `POLL_EVERY`; on a thread that is not running a SQL call, always Ok.
pub fn check() -> Result<()> {
    let interrupted = WATCH.with(|w| match w.try_borrow_mut() {
        Ok(mut w) => w.as_mut().is_some_and(poll),
        Err(_) => false,
    });
    if interrupted {
        Err(Error::interrupted())
    } else {
        Ok(())
    }
}

fn poll(w: &mut Watch) -> bool {
    if w.fired || w.broken {
        return w.fired;
    }
    let now = Instant::now();
    if w.last
        .is_some_and(|last| now.duration_since(last) < POLL_EVERY)
    {
        return false;
    }
    w.last = Some(now);
    let Ok(api) = api() else {
        w.broken = true;
        return false;
    };
    let (Some(prepare), Some(step), Some(reset)) = (api.prepare_v2, api.step, api.reset) else {
        w.broken = true;
        return false;
    };
    // SAFETY: db is the live connection of the running call, used on its own thread; stmt is
    // ours and finalized by the guard.
    let rc = unsafe {
        if w.stmt.is_null() {
            let rc = prepare(w.db, c"SELECT 1".as_ptr(), -1, &mut w.stmt, ptr::null_mut());
            if rc != SQLITE_OK {
                rc
            } else {
                let rc = step(w.stmt);
                reset(w.stmt);
                rc
            }
        } else {
            let rc = step(w.stmt);
            reset(w.stmt);
            rc
        }
    };
    match rc & 0xff {
        SQLITE_INTERRUPT => w.fired = true,
        SQLITE_ROW => {}
        _ => w.broken = true,
    }
    w.fired
}

/// The progress handler of the connections we open: a non-zero answer makes SQLite stop the
/// running statement (VACUUM INTO, integrity_check) with SQLITE_INTERRUPT.
pub(super) unsafe extern "C" fn progress(_: *mut c_void) -> c_int {
    std::panic::catch_unwind(|| c_int::from(check().is_err())).unwrap_or(1)
}
