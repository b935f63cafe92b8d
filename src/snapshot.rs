//! A transactionally consistent copy of one database of a connection, in a temp file.
//!
//! `vacuum` runs `VACUUM INTO` on a second connection to the same file, because VACUUM on the
//! calling connection fails while its own SELECT is running. `pages` uses the online backup
//! API from the calling connection; it is the only way to copy `:memory:` and temp databases.
//! Both read the source in a single read transaction, so the copy is consistent while other
//! processes write (WAL and rollback journal alike).

use std::fs::File;
use std::path::Path;

use crate::dbfile::{database_header, page_size};
use crate::error::{Error, Kind, Result};
use crate::ffi::{self, Connection, OpenMode};
use crate::integrity;
use crate::temp::{self, NamedTemp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Vacuum,
    Pages,
    /// The pages streamed to compression, no copy on disk (stream.rs).
    Stream,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Vacuum => "vacuum",
            Method::Pages => "pages",
            Method::Stream => "stream",
        }
    }
}

pub struct Snapshot {
    /// The copy; removed with its journal when dropped (after a kill, by a later call).
    pub file: NamedTemp,
    pub method: Method,
    pub bytes: u64,
    pub page_size: u32,
    pub page_count: u64,
    /// Why `pages` was used when `vacuum` was asked for by default.
    pub fallback: Option<String>,
}

/// Copies `schema` of `conn` into a new temp file in `temp_dir`. `method` None picks `vacuum`
/// for a database file of the default VFS and `pages` for anything else (in-memory, temp, or
/// another VFS such as memdb).
pub fn take(
    conn: &Connection,
    schema: &str,
    method: Option<Method>,
    busy_ms: u64,
    temp_dir: &Path,
) -> Result<Snapshot> {
    let source = conn.filename(schema)?;
    // `vacuum` reopens the path with the default VFS: a memdb or encrypting VFS's bytes are
    // not what that would read.
    let custom_vfs = match &source {
        Some(_) => conn.custom_vfs(schema)?,
        None => None,
    };
    let forced = method.is_some();
    let mut method = match (method, &source, &custom_vfs) {
        (Some(Method::Vacuum), None, _) => {
            return Err(Error::usage(format!(
                "method 'vacuum' needs a database file, and '{schema}' is in memory: \
                 use method 'pages' or leave method unset"
            )))
        }
        (Some(Method::Vacuum), Some(_), Some(vfs)) => {
            return Err(Error::usage(format!(
                "method 'vacuum' reopens the file with the default VFS, and '{schema}' uses \
                 VFS '{vfs}': use method 'pages' or leave method unset"
            )))
        }
        (Some(m), _, _) => m,
        (None, Some(_), None) => Method::Vacuum,
        (None, _, _) => Method::Pages,
    };
    // Uncommitted writes of the caller's own connection lock the file against our reader (and
    // the backup API refuses a source it is writing): waiting would only time out and blame
    // "another connection".
    let writing = conn.in_write_transaction(schema)?;
    if writing && method == Method::Pages {
        return Err(open_write_transaction(schema));
    }
    let mut file = temp::named(temp_dir, temp::Ext::Snapshot)?;
    let mut fallback = None;
    // The copy grows toward the size of the source file (less its free pages).
    let estimate = source
        .as_deref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len());
    crate::progress::phase_file("taking a snapshot", estimate, file.path().to_path_buf());
    match (&method, &source) {
        (Method::Vacuum, Some(path)) => {
            // The caller's connection reads first, so it (not our short-lived read-only one)
            // is the first to open a WAL: it then checkpoints and removes -wal/-shm when the
            // program closes it, as if we had never been there. Best effort, without waiting:
            // a locked database is VACUUM INTO's to wait for and report.
            let _ = without_busy_handler(conn, || {
                conn.query(&format!(
                    "SELECT 1 FROM {}.sqlite_master LIMIT 1",
                    ffi::quote_identifier(schema)
                ))
            });
            // Our lock holder would be the caller itself: no point waiting for it.
            let wait_ms = if writing { 0 } else { busy_ms };
            let copied = vacuum_into(path, file.path(), wait_ms).map_err(|e| {
                if writing && e.kind == Kind::Busy {
                    open_write_transaction(schema)
                } else {
                    e
                }
            });
            if let Err(e) = copied {
                let (pages, why) = pages_instead(e, forced, writing, schema)?;
                // A fresh file: the failed attempt's is removed when replaced.
                file = temp::named(temp_dir, temp::Ext::Snapshot)?;
                crate::progress::phase_file(
                    "taking a snapshot",
                    estimate,
                    file.path().to_path_buf(),
                );
                copy_pages(conn, schema, file.path(), busy_ms)?;
                method = pages;
                fallback = Some(why);
            }
        }
        _ => copy_pages(conn, schema, file.path(), busy_ms)?,
    }
    let (bytes, page_size) = read_header(file.path())?;
    Ok(Snapshot {
        file,
        method,
        bytes,
        page_size,
        page_count: if page_size == 0 {
            0
        } else {
            bytes / page_size as u64
        },
        fallback,
    })
}

/// VACUUM INTO runs on a second connection, which lacks the collations and functions the
/// application defined on its own (an index `COLLATE APPCOLL`, a CHECK calling an app
/// function): the page copy from the caller's connection needs none of them. Returns the
/// method to use instead and why, or the error when it cannot be replaced.
fn pages_instead(e: Error, forced: bool, writing: bool, schema: &str) -> Result<(Method, String)> {
    if !integrity::is_missing_definition(&e.message) || e.kind == Kind::Busy {
        return Err(e);
    }
    if forced {
        return Err(Error::new(
            e.kind,
            format!(
                "{}: the schema uses a definition of the application's own connection, which \
                 VACUUM INTO's separate connection lacks: use method 'pages' (or leave method \
                 unset)",
                e.message
            ),
        ));
    }
    if writing {
        return Err(open_write_transaction(schema));
    }
    let cause = integrity::missing_definition(&e.message).unwrap_or_default();
    Ok((
        Method::Pages,
        format!(
            "VACUUM INTO failed ({cause}: a collation or function of the application's own \
             connection); copied the pages from this connection instead"
        ),
    ))
}

fn open_write_transaction(schema: &str) -> Error {
    Error::usage(format!(
        "this connection has uncommitted writes to '{schema}' that keep the database locked: \
         COMMIT or ROLLBACK first (a backup holds committed data only)"
    ))
}

/// Runs `f` with the caller's busy timeout off, then puts it back. Our own waits are bounded
/// by `busy_timeout_ms`; the caller's handler would wait for its own timeout instead.
pub(crate) fn without_busy_handler<T>(
    conn: &Connection,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let callers_timeout: u64 = conn
        .query_value("PRAGMA busy_timeout")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if callers_timeout > 0 {
        conn.busy_timeout(0)?;
    }
    let result = f();
    if callers_timeout > 0 {
        conn.busy_timeout(callers_timeout)?;
    }
    result
}

/// The online backup API from the caller's connection; backup_step would call the caller's
/// busy handler when the source is locked, so it is off for the copy.
fn copy_pages(conn: &Connection, schema: &str, dest_path: &Path, busy_ms: u64) -> Result<()> {
    let dest = Connection::open(dest_path, OpenMode::ReadWriteCreate)?;
    dest.exec("PRAGMA synchronous = OFF")?;
    without_busy_handler(conn, || dest.backup_from("main", conn, schema, busy_ms))
        .map_err(|e| e.context("cannot copy the database pages"))?;
    // A copy of a WAL database is a WAL database; as a standalone file it is better in
    // rollback mode (no -wal/-shm beside it when opened). Restoring keeps the target's mode.
    dest.exec("PRAGMA journal_mode = DELETE")
}

fn vacuum_into(source: &Path, dest: &Path, busy_ms: u64) -> Result<()> {
    // Read-only: the snapshot must never change the source, not even its journal mode.
    let reader = Connection::open_with_uris(source, OpenMode::ReadOnly)?;
    reader.busy_timeout(busy_ms)?;
    let path = dest
        .to_str()
        .ok_or_else(|| Error::usage("the temp directory's path is not UTF-8"))?;
    // Through the batching VFS when the host lets us register it: one write per 64 KiB, not
    // one per page. Its failed writes are counted for this copy alone (a `Watch`).
    let watch = ffi::batched_vfs::Watch::new();
    let target = match ffi::batched_vfs::name() {
        Some(vfs) => {
            let absolute = std::path::absolute(dest)
                .map_err(|e| Error::io("cannot resolve the temp directory", e))?;
            format!(
                "{}?vfs={vfs}&{}",
                file_uri(&absolute),
                watch.uri_parameter()
            )
        }
        None => path.to_string(),
    };
    // The snapshot is a temp file we hash and compress at once: no fsync needed (a crash just
    // means a new backup), and VACUUM INTO honours the connection's synchronous setting.
    let sql = format!(
        "PRAGMA synchronous = OFF; VACUUM INTO {}",
        ffi::quote_literal(&target)
    );
    let copied = reader.exec(&sql);
    // A VACUUM INTO that fails midway leaves the copy's rollback journal beside it.
    let mut journal = dest.as_os_str().to_owned();
    journal.push("-journal");
    let _ = std::fs::remove_file(journal);
    copied.map_err(|e| {
        if e.kind == Kind::Busy {
            ffi::busy_error(busy_ms)
        } else {
            e.context(format!("VACUUM INTO from {} failed", source.display()))
        }
    })?;
    // VACUUM INTO has closed the copy; a write that failed there went unreported.
    if watch.failed_writes() != 0 {
        return Err(Error::new(
            Kind::Io,
            format!(
                "cannot write the snapshot in {}: a write failed (is the disk full?)",
                dest.parent().unwrap_or(dest).display()
            ),
        ));
    }
    Ok(())
}

/// `file://` URI of an absolute path: `%`, `?` and `#` escaped, the rest as SQLite reads it.
pub(crate) fn file_uri(path: &Path) -> String {
    let mut uri = String::from("file://");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri
}

/// File size and page size (header bytes 16-17; the value 1 means 65536).
fn read_header(path: &Path) -> Result<(u64, u32)> {
    let fail = |e| Error::io("cannot read the snapshot", e);
    let mut f = File::open(path).map_err(fail)?;
    let bytes = f.metadata().map_err(fail)?.len();
    if bytes == 0 {
        return Ok((0, 0));
    }
    match database_header(&mut f).map_err(fail)? {
        Some(header) => Ok((bytes, page_size(&header))),
        None => Err(Error::new(
            Kind::Corrupt,
            "the snapshot is not a SQLite database",
        )),
    }
}
