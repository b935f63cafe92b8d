//! The raw SQLite calls that sqlite-loadable does not wrap (open_v2, exec, busy_timeout,
//! db_filename, backup_*, prepare/step), behind safe wrappers, and the VFS shims (`batched_vfs`,
//! `page_sink`, `page1_watch`, sharing `shim`). This is the only module with `unsafe` SQLite
//! calls outside the SQL layer's function plumbing.
//!
//! Every call goes through the host's `sqlite3_api_routines`, never a second linked SQLite:
//! two SQLite copies in one process break each other's POSIX locks. Only routines that exist
//! in SQLite 3.31 (`MIN_VERSION`) are used, since the struct a host hands us ends where its
//! version ends.

use std::ffi::{c_char, c_int, CStr, CString};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::time::{Duration, Instant};

use sqlite3ext_sys::{sqlite3, sqlite3_api_routines, sqlite3_backup, sqlite3_stmt, sqlite3_vfs};

use crate::error::{Error, Kind, Result};

const SQLITE_OK: c_int = 0;
const SQLITE_BUSY: c_int = 5;
const SQLITE_LOCKED: c_int = 6;
const SQLITE_ROW: c_int = 100;
const SQLITE_DONE: c_int = 101;
const SQLITE_OPEN_READONLY: c_int = 0x1;
const SQLITE_OPEN_READWRITE: c_int = 0x2;
const SQLITE_OPEN_CREATE: c_int = 0x4;
const SQLITE_OPEN_URI: c_int = 0x40;
const SQLITE_VTAB_DIRECTONLY: c_int = 3;
const SQLITE_FCNTL_VFS_POINTER: c_int = 27;
const SQLITE_UTF8: c_int = 1;

static API: AtomicPtr<sqlite3_api_routines> = AtomicPtr::new(ptr::null_mut());

/// The oldest SQLite we load into: 3.31.0 brought SQLITE_VTAB_DIRECTONLY (backup_list) and
/// SQLITE_INNOCUOUS; older versions silently ignore flags they do not know, so a view inside
/// a database file could call a function or table meant only for top-level SQL.
pub const MIN_VERSION: c_int = 3_031_000;

/// Checks the host's SQLite and remembers its routines; called by the entry point before
/// anything else. Refuses a SQLite older than `MIN_VERSION`, and a second SQLite library in
/// the same process: the routines are one global, so calls for the first library's
/// connections would run through the other's code.
///
/// # Safety
/// `api` is the pointer SQLite handed the entry point.
pub unsafe fn init(api: *mut sqlite3_api_routines) -> std::result::Result<(), String> {
    let Some(routines) = api.as_ref() else {
        return Err(String::from("SQLite passed no API routines"));
    };
    // The table ends where the host's version ends: read nothing past libversion_number (in
    // every version) before the version is known to be new enough.
    let version = routines.libversion_number.map_or(0, |f| f());
    if version < MIN_VERSION {
        return Err(format!(
            "sqlite_backup needs SQLite {} or newer (for DIRECTONLY functions and tables), \
             and this program's SQLite is {}: use a newer SQLite",
            version_text(MIN_VERSION),
            version_text(version)
        ));
    }
    match API.compare_exchange(ptr::null_mut(), api, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => Ok(()),
        Err(first) if first == api => Ok(()),
        Err(first) => {
            // SAFETY: the first library's routines live as long as the process.
            let first_version = first
                .as_ref()
                .and_then(|r| r.libversion_number)
                .map_or(0, |f| f());
            Err(format!(
                "sqlite_backup is already loaded by another SQLite library in this process \
                 ({}; this one is {}): load it from one library only",
                version_text(first_version),
                version_text(version)
            ))
        }
    }
}

/// 3031000 → "3.31.0".
pub fn version_text(number: c_int) -> String {
    format!(
        "{}.{}.{}",
        number / 1_000_000,
        number / 1000 % 1000,
        number % 1000
    )
}

fn api() -> Result<&'static sqlite3_api_routines> {
    let p = API.load(Ordering::Acquire);
    // SAFETY: the host keeps its routines alive for the life of the process.
    unsafe { p.as_ref() }.ok_or_else(|| Error::new(Kind::Sqlite, "extension not initialised"))
}

/// Looks up one routine, failing cleanly if the host's table lacks it.
macro_rules! routine {
    ($name:ident) => {
        api()?.$name.ok_or_else(|| {
            Error::new(
                Kind::Sqlite,
                concat!("this SQLite lacks sqlite3_", stringify!($name)),
            )
        })?
    };
}

pub mod batched_vfs;
pub mod interrupt;
pub mod page1_watch;
pub mod page_sink;
mod shim;

/// `"name"` with embedded quotes doubled: a schema or table name inside SQL text.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled: a path or name as an SQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn cstring(text: &str, what: &str) -> Result<CString> {
    CString::new(text).map_err(|_| Error::usage(format!("{what} contains a NUL character")))
}

fn path_cstring(path: &Path) -> Result<CString> {
    let text = path
        .to_str()
        .ok_or_else(|| Error::usage(format!("path {} is not UTF-8", path.display())))?;
    cstring(text, "path")
}

/// Text the host owns (errmsg, libversion), copied out.
unsafe fn owned_text(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

/// The host SQLite's version, e.g. "3.46.1".
pub fn libversion() -> String {
    match api().ok().and_then(|a| a.libversion) {
        // SAFETY: libversion returns a static string.
        Some(f) => unsafe { owned_text(f()) },
        None => String::from("unknown"),
    }
}

/// The host SQLite's version as a number, e.g. 3046001 (0 when unknown).
pub fn libversion_number() -> c_int {
    match api().ok().and_then(|a| a.libversion_number) {
        // SAFETY: takes no arguments, returns a constant.
        Some(f) => unsafe { f() },
        None => 0,
    }
}

/// Marks a virtual table as callable only from top-level SQL (not from triggers or views in
/// a database file someone else wrote). Call from xConnect.
///
/// # Safety
/// `db` must be the connection handed to xConnect.
pub unsafe fn vtab_directonly(db: *mut sqlite3) -> Result<()> {
    let f = routine!(vtab_config);
    f(db, SQLITE_VTAB_DIRECTONLY);
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// The names of SQLite's own open flags (SQLITE_OPEN_READONLY, _READWRITE, _CREATE).
#[allow(clippy::enum_variant_names)]
pub enum OpenMode {
    ReadOnly,
    /// For our own temp copies: a read-write connection removes the -wal and -shm files it
    /// creates when it closes; a read-only one cannot, and would leave them behind.
    ReadWrite,
    ReadWriteCreate,
}

/// A database connection: one we opened (closed on drop) or the caller's (left alone).
pub struct Connection {
    db: *mut sqlite3,
    owned: bool,
}

impl Connection {
    /// Wraps the connection a SQL function was called on.
    ///
    /// # Safety
    /// `db` must be a live connection that outlives the returned value.
    pub unsafe fn borrowed(db: *mut sqlite3) -> Connection {
        Connection { db, owned: false }
    }

    pub fn open(path: &Path, mode: OpenMode) -> Result<Connection> {
        Self::open_flags(path, mode, 0)
    }

    /// Like `open`, and the connection takes `file:` URIs in ATTACH and VACUUM INTO (the
    /// path itself is still a plain path unless it starts with `file:`).
    pub fn open_with_uris(path: &Path, mode: OpenMode) -> Result<Connection> {
        Self::open_flags(path, mode, SQLITE_OPEN_URI)
    }

    fn open_flags(path: &Path, mode: OpenMode, extra: c_int) -> Result<Connection> {
        let open_v2 = routine!(open_v2);
        let name = path_cstring(path)?;
        let flags = extra
            | match mode {
                OpenMode::ReadOnly => SQLITE_OPEN_READONLY,
                OpenMode::ReadWrite => SQLITE_OPEN_READWRITE,
                OpenMode::ReadWriteCreate => SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
            };
        let mut db: *mut sqlite3 = ptr::null_mut();
        // SAFETY: valid C string, out-pointer to a local; default VFS.
        let rc = unsafe { open_v2(name.as_ptr(), &mut db, flags, ptr::null()) };
        // Even on failure SQLite may hand back a handle that must be closed.
        let conn = Connection { db, owned: true };
        // Long statements on our connections (VACUUM INTO, integrity_check) stop when the
        // caller's connection is interrupted; a SQLite built without progress handlers has
        // none in its table, and then only our own loops notice.
        if let (SQLITE_OK, Some(progress)) = (rc, api()?.progress_handler) {
            // SAFETY: db is live; the handler takes no argument and never unwinds.
            unsafe {
                progress(
                    db,
                    interrupt::PROGRESS_OPS,
                    Some(interrupt::progress),
                    ptr::null_mut(),
                )
            };
        }
        if rc != SQLITE_OK {
            let msg = if db.is_null() {
                format!("error code {rc}")
            } else {
                conn.errmsg()
            };
            return Err(Error::new(
                Kind::Sqlite,
                format!("cannot open {}: {msg}", path.display()),
            ));
        }
        Ok(conn)
    }

    pub fn errmsg(&self) -> String {
        match api().ok().and_then(|a| a.errmsg) {
            // SAFETY: db is live; errmsg returns text owned by the connection.
            Some(f) => unsafe { owned_text(f(self.db)) },
            None => String::from("unknown error"),
        }
    }

    pub fn busy_timeout(&self, ms: u64) -> Result<()> {
        let f = routine!(busy_timeout);
        let ms = c_int::try_from(ms).unwrap_or(c_int::MAX);
        // SAFETY: db is live.
        unsafe { f(self.db, ms) };
        Ok(())
    }

    /// Runs SQL that returns no rows.
    pub fn exec(&self, sql: &str) -> Result<()> {
        let exec = routine!(exec);
        let free = routine!(free);
        let text = cstring(sql, "SQL")?;
        let mut err: *mut c_char = ptr::null_mut();
        // SAFETY: no callback; err is freed with sqlite3_free as documented.
        let rc = unsafe { exec(self.db, text.as_ptr(), None, ptr::null_mut(), &mut err) };
        if rc == SQLITE_OK {
            return Ok(());
        }
        let msg = if err.is_null() {
            self.errmsg()
        } else {
            // SAFETY: err came from sqlite3_exec and is freed exactly once.
            unsafe {
                let m = owned_text(err);
                free(err.cast());
                m
            }
        };
        Err(Error::new(sqlite_kind(rc), msg))
    }

    /// Runs a query and returns every row as text columns (NULL as None).
    pub fn query(&self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        let mut rows = Vec::new();
        self.query_each(sql, |row| {
            rows.push(row);
            Ok(())
        })?;
        Ok(rows)
    }

    /// Runs a query and hands each row to `f` as it comes (nothing is collected).
    pub fn query_each(
        &self,
        sql: &str,
        mut f: impl FnMut(Vec<Option<String>>) -> Result<()>,
    ) -> Result<()> {
        let prepare = routine!(prepare_v2);
        let step = routine!(step);
        let finalize = routine!(finalize);
        let column_count = routine!(column_count);
        let column_text = routine!(column_text);
        let text = cstring(sql, "SQL")?;
        let mut stmt: *mut sqlite3_stmt = ptr::null_mut();
        // SAFETY: -1 length reads to the NUL; stmt is finalized below on every path.
        let rc = unsafe { prepare(self.db, text.as_ptr(), -1, &mut stmt, ptr::null_mut()) };
        if rc != SQLITE_OK {
            return Err(Error::new(sqlite_kind(rc), self.errmsg()));
        }
        let result = loop {
            // SAFETY: stmt is a live prepared statement.
            match unsafe { step(stmt) } {
                SQLITE_ROW => {
                    let n = unsafe { column_count(stmt) };
                    let row = (0..n)
                        .map(|i| {
                            // SAFETY: i < column_count; text is valid until the next step.
                            let p = unsafe { column_text(stmt, i) };
                            (!p.is_null()).then(|| unsafe { owned_text(p.cast()) })
                        })
                        .collect();
                    if let Err(e) = f(row) {
                        break Err(e);
                    }
                }
                SQLITE_DONE => break Ok(()),
                rc => break Err(Error::new(sqlite_kind(rc), self.errmsg())),
            }
        };
        // SAFETY: finalize exactly once.
        unsafe { finalize(stmt) };
        result
    }

    /// The first column of the first row, as text.
    pub fn query_value(&self, sql: &str) -> Result<Option<String>> {
        Ok(self
            .query(sql)?
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next().flatten()))
    }

    /// The file behind `schema`: `Ok(None)` for an in-memory or temp database, an error when
    /// there is no such schema.
    pub fn filename(&self, schema: &str) -> Result<Option<PathBuf>> {
        let f = routine!(db_filename);
        let name = cstring(schema, "schema")?;
        // SAFETY: db is live; the returned string is owned by the connection.
        let p = unsafe { f(self.db, name.as_ptr()) };
        if p.is_null() {
            // `temp` always exists in SQL, but SQLite creates its file only with the first
            // temporary table: say that, not "no such database".
            if schema.eq_ignore_ascii_case("temp") {
                return Err(Error::usage(
                    "the temp database is empty: no temporary table has been created yet",
                ));
            }
            return Err(Error::usage(format!(
                "there is no attached database named '{schema}'"
            )));
        }
        let path = unsafe { owned_text(p) };
        Ok((!path.is_empty()).then(|| PathBuf::from(path)))
    }

    /// True when this connection holds a write transaction on `schema` (it has written and
    /// not committed), so another connection cannot snapshot it until it commits. Hosts
    /// older than 3.34 lack sqlite3_txn_state: any open transaction counts there.
    pub fn in_write_transaction(&self, schema: &str) -> Result<bool> {
        const SQLITE_TXN_WRITE: c_int = 2;
        if libversion_number() < 3_034_000 {
            return Ok(!self.autocommit()?);
        }
        let f = routine!(txn_state);
        let name = cstring(schema, "schema")?;
        // SAFETY: db is live; the routine exists from 3.34, checked above.
        Ok(unsafe { f(self.db, name.as_ptr()) } == SQLITE_TXN_WRITE)
    }

    /// The name of the VFS `schema` was opened with, when it is not the process's default VFS
    /// (the one `open` uses): `None` when it is the default. A memdb or encrypting VFS keeps
    /// bytes that reopening the path with the default VFS would not see.
    pub fn custom_vfs(&self, schema: &str) -> Result<Option<String>> {
        let file_control = routine!(file_control);
        let vfs_find = routine!(vfs_find);
        let name = cstring(schema, "schema")?;
        let mut vfs: *mut sqlite3_vfs = ptr::null_mut();
        // SAFETY: db is live; VFS_POINTER writes one pointer into our local.
        let rc = unsafe {
            file_control(
                self.db,
                name.as_ptr(),
                SQLITE_FCNTL_VFS_POINTER,
                (&mut vfs as *mut *mut sqlite3_vfs).cast(),
            )
        };
        // SAFETY: vfs_find(NULL) returns the default VFS (or null), never freed.
        let default = unsafe { vfs_find(ptr::null()) };
        if rc != SQLITE_OK || vfs.is_null() {
            // Unknown: say so, and the caller takes the path that works with any VFS.
            return Ok(Some(String::from("unknown")));
        }
        if vfs == default {
            return Ok(None);
        }
        // SAFETY: a registered VFS and its name live as long as the process.
        Ok(Some(unsafe { owned_text((*vfs).zName) }))
    }

    /// True when any schema of this connection has a transaction open, even a read one (a
    /// statement of the connection is reading). Unknown before 3.34 (no sqlite3_txn_state):
    /// true there.
    pub fn any_transaction(&self) -> Result<bool> {
        if libversion_number() < 3_034_000 {
            return Ok(true);
        }
        let f = routine!(txn_state);
        // SAFETY: db is live; a null schema asks about every schema.
        Ok(unsafe { f(self.db, ptr::null()) } != 0)
    }

    /// True when no transaction is open on this connection.
    pub fn autocommit(&self) -> Result<bool> {
        let f = routine!(get_autocommit);
        // SAFETY: db is live.
        Ok(unsafe { f(self.db) } != 0)
    }

    /// A stand-in for a collation the schema names and this connection lacks: byte order.
    /// Only for a structural check (quick_check) of a copy on a connection of ours, which
    /// opens index cursors but compares no key with it.
    pub fn define_stand_in_collation(&self, name: &str) -> Result<()> {
        let f = routine!(create_collation_v2);
        let text = cstring(name, "collation name")?;
        // SAFETY: db is live; no user data, the callback is a plain function.
        let rc = unsafe {
            f(
                self.db,
                text.as_ptr(),
                SQLITE_UTF8,
                ptr::null_mut(),
                Some(byte_order),
                None,
            )
        };
        if rc != SQLITE_OK {
            return Err(Error::new(sqlite_kind(rc), self.errmsg()));
        }
        Ok(())
    }

    /// A stand-in for a function the schema calls and this connection lacks: returns NULL,
    /// any number of arguments. Same use as `define_stand_in_collation`.
    pub fn define_stand_in_function(&self, name: &str) -> Result<()> {
        const SQLITE_DETERMINISTIC: c_int = 0x800;
        const SQLITE_INNOCUOUS: c_int = 0x20_0000;
        let f = routine!(create_function_v2);
        let text = cstring(name, "function name")?;
        // INNOCUOUS (3.31+) lets it run where trusted_schema is off; older hosts reject the flag.
        let mut flags = SQLITE_UTF8 | SQLITE_DETERMINISTIC;
        if libversion_number() >= 3_031_000 {
            flags |= SQLITE_INNOCUOUS;
        }
        // SAFETY: db is live; a scalar function with no user data.
        let rc = unsafe {
            f(
                self.db,
                text.as_ptr(),
                -1,
                flags,
                ptr::null_mut(),
                Some(returns_null),
                None,
                None,
                None,
            )
        };
        if rc != SQLITE_OK {
            return Err(Error::new(sqlite_kind(rc), self.errmsg()));
        }
        Ok(())
    }

    /// Copies `from_schema` of `from` over `to_schema` of `self` with the online backup API.
    /// A busy source or destination is retried until `busy_ms` has passed. A source file the
    /// caller's connection reads is copied in one step, so the copy is one read transaction
    /// (between steps another process's write would restart it); our own temp files and
    /// in-memory databases, which nobody else writes, go in steps with an interrupt check
    /// between them. An interrupted copy is rolled back: the destination is unchanged.
    pub fn backup_from(
        &self,
        to_schema: &str,
        from: &Connection,
        from_schema: &str,
        busy_ms: u64,
    ) -> Result<()> {
        let init = routine!(backup_init);
        let step = routine!(backup_step);
        let finish = routine!(backup_finish);
        let to_name = cstring(to_schema, "schema")?;
        let from_name = cstring(from_schema, "schema")?;
        // SAFETY: both connections are live; the backup object is finished on every path.
        let backup: *mut sqlite3_backup =
            unsafe { init(self.db, to_name.as_ptr(), from.db, from_name.as_ptr()) };
        if backup.is_null() {
            return Err(Error::new(Kind::Sqlite, self.errmsg()));
        }
        let pages = if from.owned || from.filename(from_schema).ok().flatten().is_none() {
            STEP_PAGES
        } else {
            -1
        };
        let started = Instant::now();
        let mut busy = false;
        let mut interrupted = Ok(());
        let rc = loop {
            // SAFETY: backup is live until finish below.
            match unsafe { step(backup, pages) } {
                SQLITE_DONE => break SQLITE_OK,
                SQLITE_OK => match crate::interrupt::check() {
                    Ok(()) => continue,
                    Err(e) => {
                        interrupted = Err(e);
                        break SQLITE_OK;
                    }
                },
                SQLITE_BUSY | SQLITE_LOCKED
                    if started.elapsed() < Duration::from_millis(busy_ms) =>
                {
                    // Waiting for a lock is a long loop too: interruptible, with progress.
                    if let Err(e) = crate::interrupt::check() {
                        interrupted = Err(e);
                        break SQLITE_OK;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                rc @ (SQLITE_BUSY | SQLITE_LOCKED) => {
                    busy = true;
                    break rc;
                }
                rc => break rc,
            }
        };
        // SAFETY: finish exactly once; it reports the step's error if any, and rolls back
        // an unfinished copy.
        let finish_rc = unsafe { finish(backup) };
        interrupted?;
        if busy {
            return Err(busy_error(busy_ms));
        }
        if rc != SQLITE_OK || finish_rc != SQLITE_OK {
            let code = if rc != SQLITE_OK { rc } else { finish_rc };
            return Err(Error::new(sqlite_kind(code), self.errmsg()));
        }
        Ok(())
    }
}

/// Pages per backup step when copying in steps: 4 MiB at 4 KiB pages, a few milliseconds.
const STEP_PAGES: c_int = 1024;

/// memcmp order, then the shorter first: SQLite's BINARY.
unsafe extern "C" fn byte_order(
    _: *mut std::ffi::c_void,
    len_a: c_int,
    a: *const std::ffi::c_void,
    len_b: c_int,
    b: *const std::ffi::c_void,
) -> c_int {
    let slice = |p: *const std::ffi::c_void, len: c_int| -> &[u8] {
        match usize::try_from(len) {
            // SAFETY: SQLite passes `len` readable bytes at `p`.
            Ok(n) if n > 0 && !p.is_null() => unsafe { std::slice::from_raw_parts(p.cast(), n) },
            _ => &[],
        }
    };
    match slice(a, len_a).cmp(slice(b, len_b)) {
        std::cmp::Ordering::Less => -1,
        std::cmp::Ordering::Equal => 0,
        std::cmp::Ordering::Greater => 1,
    }
}

/// Sets no result: SQLite's result is then NULL.
unsafe extern "C" fn returns_null(
    _: *mut sqlite3ext_sys::sqlite3_context,
    _: c_int,
    _: *mut *mut sqlite3ext_sys::sqlite3_value,
) {
}

/// The message for a database that stayed locked past the caller's patience.
pub fn busy_error(busy_ms: u64) -> Error {
    Error::new(
        Kind::Busy,
        format!(
            "the database stayed locked for {busy_ms} ms (another connection is writing): \
             retry, or raise busy_timeout_ms"
        ),
    )
}

/// The kind of a failed call's result code (primary or extended), never its message: a
/// message may quote a name or path that reads like "database is locked".
fn sqlite_kind(rc: c_int) -> Kind {
    match rc & 0xff {
        SQLITE_BUSY | SQLITE_LOCKED => Kind::Busy,
        11 | 26 => Kind::Corrupt, // SQLITE_CORRUPT, SQLITE_NOTADB
        _ => Kind::Sqlite,
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.owned && !self.db.is_null() {
            if let Ok(api) = api() {
                // close_v2 defers the close if a statement leaked, rather than failing.
                if let Some(close) = api.close_v2 {
                    // SAFETY: we own this handle and close it once.
                    unsafe { close(self.db) };
                }
            }
        }
    }
}

/// Hands an error message back to `sqlite3_load_extension`, allocated with the routines of
/// the library that loads us (it frees it with its own sqlite3_free).
///
/// # Safety
/// `out` is the entry point's `pzErrMsg` (may be null); `api` the routines it was given.
pub unsafe fn set_load_error(api: *mut sqlite3_api_routines, out: *mut *mut c_char, message: &str) {
    let Some(api) = api.as_ref() else { return };
    let (Some(malloc), false) = (api.malloc, out.is_null()) else {
        return;
    };
    let bytes = message.as_bytes();
    let p = malloc((bytes.len() + 1) as c_int) as *mut u8;
    if p.is_null() {
        return;
    }
    ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
    *p.add(bytes.len()) = 0;
    *out = p.cast();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_is_decided_by_the_result_code() {
        // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_BUSY_SNAPSHOT, SQLITE_LOCKED_SHAREDCACHE.
        for rc in [5, 6, 517, 262] {
            assert_eq!(sqlite_kind(rc), Kind::Busy, "{rc}");
        }
        assert_eq!(sqlite_kind(1), Kind::Sqlite);
        assert_eq!(sqlite_kind(11), Kind::Corrupt);
        assert_eq!(sqlite_kind(26), Kind::Corrupt);
    }

    #[test]
    fn quotes_are_doubled() {
        assert_eq!(quote_identifier(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn version_numbers_read_as_sqlite_writes_them() {
        assert_eq!(version_text(MIN_VERSION), "3.31.0");
        assert_eq!(version_text(3_030_001), "3.30.1");
        assert_eq!(version_text(3_054_001), "3.54.1");
    }
}
