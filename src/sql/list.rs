//! backup_list(location [, options]): a table-valued function.

use std::mem;
use std::os::raw::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use sqlite_loadable::api;
use sqlite_loadable::prelude::*;
use sqlite_loadable::table::{
    BestIndexError, ConstraintOperator, IndexInfo, VTab, VTabArguments, VTabCursor,
};

use super::{options, text_value};
use crate::error::{Error, Result};
use crate::ffi::Connection;
use crate::job;
use crate::prune::{iso, Class};
use crate::request;
use crate::store::{Entry, Location};

const COLUMNS: &str =
    "CREATE TABLE x(name TEXT, url TEXT, size INTEGER, modified TEXT, sha256 TEXT, backup INTEGER, location HIDDEN, options HIDDEN, kind TEXT, base TEXT)";
const COL_BACKUP: c_int = 5;
const COL_LOCATION: c_int = 6;
const COL_OPTIONS: c_int = 7;
/// Incremental series: 'full' or 'incremental', and the backup it builds on; NULL for other
/// backups. Declared after the hidden columns so the existing column numbers stay.
const COL_KIND: c_int = 8;
const COL_BASE: c_int = 9;
/// idx_num bits: which hidden arguments filter receives.
const HAS_LOCATION: c_int = 1;
const HAS_OPTIONS: c_int = 2;

#[repr(C)]
pub struct ListTable {
    /// Must be first: SQLite sees this struct as its sqlite3_vtab.
    base: sqlite3_vtab,
    /// The connection, whose database files the `backup` column never calls backups.
    db: *mut sqlite3,
}

impl<'vtab> VTab<'vtab> for ListTable {
    type Aux = ();
    type Cursor = ListCursor;

    fn connect(
        db: *mut sqlite3,
        _aux: Option<&Self::Aux>,
        _args: VTabArguments,
    ) -> sqlite_loadable::Result<(String, ListTable)> {
        // Listing reaches the network and the file system: not from triggers or views.
        // SAFETY: db is the connection xConnect was called with.
        unsafe { crate::ffi::vtab_directonly(db) }
            .map_err(|e| sqlite_loadable::Error::new_message(e.message))?;
        // SAFETY: sqlite3_vtab is plain C data; SQLite fills it in.
        let base: sqlite3_vtab = unsafe { mem::zeroed() };
        Ok((COLUMNS.to_owned(), ListTable { base, db }))
    }

    fn best_index(&self, mut info: IndexInfo) -> core::result::Result<(), BestIndexError> {
        let mut flags = 0;
        let mut location_at = None;
        let mut options_at = None;
        for (i, constraint) in info.constraints().iter().enumerate() {
            let eq = constraint.usable() && constraint.op() == Some(ConstraintOperator::EQ);
            match constraint.column_idx() {
                COL_LOCATION if eq => location_at = Some(i),
                COL_OPTIONS if eq => options_at = Some(i),
                COL_LOCATION | COL_OPTIONS => return Err(BestIndexError::Constraint),
                _ => {}
            }
        }
        let mut argv = 1;
        let mut constraints = info.constraints();
        if let Some(i) = location_at {
            constraints[i].set_argv_index(argv);
            constraints[i].set_omit(true);
            argv += 1;
            flags |= HAS_LOCATION;
        }
        if let Some(i) = options_at {
            constraints[i].set_argv_index(argv);
            constraints[i].set_omit(true);
            flags |= HAS_OPTIONS;
        }
        // A missing location is reported by filter with a message, not as "no query solution".
        info.set_idxnum(flags);
        info.set_estimated_cost(1000.0);
        info.set_estimated_rows(100);
        Ok(())
    }

    fn open(&mut self) -> sqlite_loadable::Result<ListCursor> {
        Ok(ListCursor {
            // SAFETY: plain C data; SQLite fills it in.
            base: unsafe { mem::zeroed() },
            db: self.db,
            rows: Vec::new(),
            at: 0,
            location: String::new(),
            options: None,
        })
    }
}

#[repr(C)]
pub struct ListCursor {
    /// Must be first: SQLite sees this struct as its sqlite3_vtab_cursor.
    base: sqlite3_vtab_cursor,
    db: *mut sqlite3,
    rows: Vec<(Entry, Class, Option<job::Link>)>,
    at: usize,
    location: String,
    options: Option<String>,
}

impl ListCursor {
    fn load(&mut self, flags: c_int, values: &[*mut sqlite3_value]) -> Result<()> {
        let mut args = values.iter();
        let location = if flags & HAS_LOCATION != 0 {
            args.next()
                .map(|v| text_value(v, "location"))
                .transpose()?
                .flatten()
        } else {
            None
        };
        let Some(location) = location else {
            return Err(Error::usage(
                "location is required: SELECT * FROM backup_list('/var/backups') or backup_list('s3://bucket/prefix')",
            ));
        };
        let options = if flags & HAS_OPTIONS != 0 {
            args.next()
                .map(|v| text_value(v, "options"))
                .transpose()?
                .flatten()
        } else {
            None
        };
        let mut map = options::object(options.as_deref())?;
        let s3 = options::take_s3(&mut map, Location::parse(&location)?.is_s3())?;
        let req = request::list(location, s3, options::decode(map)?)?;
        // SAFETY: the connection this table was created on, live while its cursors are.
        let conn = unsafe { Connection::borrowed(self.db) };
        // With identity_file every encrypted backup is read in full: interruptible.
        // SAFETY: this statement's connection, probed only on this thread during the call.
        let probe = unsafe { crate::ffi::interrupt::Probe::new(self.db) };
        self.rows = crate::interrupt::watch(probe).finish(job::list(&conn, &req))?;
        self.at = 0;
        self.location = req.location;
        self.options = options;
        Ok(())
    }
}

impl VTabCursor for ListCursor {
    fn filter(
        &mut self,
        idx_num: c_int,
        _idx_str: Option<&str>,
        values: &[*mut sqlite3_value],
    ) -> sqlite_loadable::Result<()> {
        let outcome = catch_unwind(AssertUnwindSafe(|| self.load(idx_num, values)));
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(sqlite_loadable::Error::new_message(format!(
                "backup_list: {}",
                e.message
            ))),
            Err(_) => Err(sqlite_loadable::Error::new_message(
                "backup_list: internal error (this is a bug, please report it)",
            )),
        }
    }

    fn next(&mut self) -> sqlite_loadable::Result<()> {
        self.at += 1;
        Ok(())
    }

    fn eof(&self) -> bool {
        self.at >= self.rows.len()
    }

    fn column(&self, ctx: *mut sqlite3_context, i: c_int) -> sqlite_loadable::Result<()> {
        let Some((row, class, link)) = self.rows.get(self.at) else {
            api::result_null(ctx);
            return Ok(());
        };
        match i {
            0 => api::result_text(ctx, &row.name)?,
            1 => api::result_text(ctx, &row.url)?,
            2 => api::result_int64(ctx, i64::try_from(row.size).unwrap_or(i64::MAX)),
            3 => api::result_text(ctx, iso(row.modified))?,
            4 => match &row.sha256 {
                Some(s) => api::result_text(ctx, s)?,
                None => api::result_null(ctx),
            },
            // 1 a backup, 0 never deleted by retention, NULL unknown without reading it (S3).
            COL_BACKUP => match class {
                Class::Backup => api::result_int(ctx, 1),
                Class::Ignored(_) => api::result_int(ctx, 0),
                Class::Unknown => api::result_null(ctx),
            },
            COL_LOCATION => api::result_text(ctx, &self.location)?,
            COL_OPTIONS => match &self.options {
                Some(s) => api::result_text(ctx, s)?,
                None => api::result_null(ctx),
            },
            COL_KIND => match link {
                Some(l) => api::result_text(ctx, l.kind)?,
                None => api::result_null(ctx),
            },
            COL_BASE => match link.as_ref().and_then(|l| l.base.as_ref()) {
                Some(b) => api::result_text(ctx, b)?,
                None => api::result_null(ctx),
            },
            _ => api::result_null(ctx),
        }
        Ok(())
    }

    fn rowid(&self) -> sqlite_loadable::Result<i64> {
        Ok(self.at as i64)
    }
}
