//! sqlite-backup: a SQLite loadable extension that makes, checks and restores compressed backups.
//!
//! `sql` is the only layer that talks to SQLite's function API; `ffi` holds every other raw
//! SQLite call behind safe wrappers; everything else is plain Rust. The core modules are public
//! so integration tests can drive them directly; they are not a stable Rust API.

pub mod backup;
pub mod codec;
pub mod error;
pub mod ffi;
pub mod naming;
pub mod notify;
pub mod prune;
pub mod restore;
pub mod retention;
pub mod snapshot;
mod sql;
pub mod store;
mod threads;
pub mod verify;

use std::ffi::{c_char, c_int};

use sqlite3ext_sys::{sqlite3, sqlite3_api_routines};

/// The entry point SQLite derives from the file name `sqlite_backup.so`
/// (`.load sqlite_backup` needs no entry-point argument).
///
/// # Safety
/// Called by SQLite with a live connection and its API routines.
#[no_mangle]
pub unsafe extern "C" fn sqlite3_sqlitebackup_init(
    db: *mut sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *mut sqlite3_api_routines,
) -> c_int {
    sqlite_loadable::ext::faux_sqlite_extension_init2(p_api);
    ffi::init(p_api);
    match std::panic::catch_unwind(|| sql::register(db)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            ffi::set_load_error(pz_err_msg, &e.message);
            1
        }
        Err(_) => 1,
    }
}
