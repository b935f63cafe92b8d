//! sqlite-backup: a SQLite loadable extension that makes, checks and restores compressed backups.
//!
//! `sql` is the only layer that talks to SQLite's function API; `ffi` holds every other raw
//! SQLite call behind safe wrappers; everything else is plain Rust. Only `store` and `error` are
//! public, for the integration tests that drive the stores directly (not a stable Rust API);
//! the rest is private to the crate, so the compiler reports what nothing uses.

mod allow;
mod backup;
mod codec;
mod crypt;
mod dbfile;
pub mod error;
mod ffi;
mod incremental;
mod integrity;
mod interrupt;
mod job;
mod live;
mod naming;
mod notify;
mod progress;
mod prune;
mod request;
mod restore;
mod retention;
mod snapshot;
mod sql;
pub mod store;
mod stream;
mod temp;
mod threads;
mod trailer;
mod verify;

use std::ffi::{c_char, c_int};

use sqlite3ext_sys::{sqlite3, sqlite3_api_routines};

/// The entry point SQLite tries first for any file name, so a renamed file (`backup.so`,
/// `libsqlite-backup.so`) loads too. Without it SQLite derives `sqlite3_<name>_init` from the
/// file name, which for `backup.so` is `sqlite3_backup_init`: not ours.
///
/// # Safety
/// Called by SQLite with a live connection and its API routines.
#[no_mangle]
pub unsafe extern "C" fn sqlite3_extension_init(
    db: *mut sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *mut sqlite3_api_routines,
) -> c_int {
    load(db, pz_err_msg, p_api)
}

/// The entry point SQLite derives from the file name `sqlite_backup.so`, for hosts that ask
/// for it by name.
///
/// # Safety
/// Called by SQLite with a live connection and its API routines.
#[no_mangle]
pub unsafe extern "C" fn sqlite3_sqlitebackup_init(
    db: *mut sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *mut sqlite3_api_routines,
) -> c_int {
    load(db, pz_err_msg, p_api)
}

unsafe fn load(
    db: *mut sqlite3,
    pz_err_msg: *mut *mut c_char,
    p_api: *mut sqlite3_api_routines,
) -> c_int {
    // Nothing is registered, and sqlite-loadable's own copy of the routines is left alone,
    // unless this SQLite passes the checks.
    let checked = std::panic::catch_unwind(|| ffi::init(p_api))
        .unwrap_or_else(|_| Err(String::from("internal error while loading")));
    if let Err(message) = checked {
        ffi::set_load_error(p_api, pz_err_msg, &message);
        return 1;
    }
    sqlite_loadable::ext::faux_sqlite_extension_init2(p_api);
    match std::panic::catch_unwind(|| sql::register(db)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            ffi::set_load_error(p_api, pz_err_msg, &e.message);
            1
        }
        Err(_) => 1,
    }
}
