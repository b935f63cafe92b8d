//! The SQL layer only translates: it registers the functions, reads arguments and options,
//! resolves them (`request.rs`), calls the job (`job.rs`), and turns its result into JSON
//! text and its error into an SQL error prefixed with the function's name.

mod backup;
mod list;
mod meta;
pub mod options;
mod prune;
mod restore;
mod verify;

use std::panic::{catch_unwind, AssertUnwindSafe};

use sqlite_loadable::api::{self, ValueType};
use sqlite_loadable::prelude::*;
use sqlite_loadable::{define_scalar_function, FunctionFlags};

use crate::error::{Error, Result};
use crate::ffi::Connection;

/// Registers every SQL function on `db`.
pub fn register(db: *mut sqlite3) -> Result<()> {
    // Loaded again into the same connection (`SELECT load_extension(…)` on every checkout of a
    // pooled connection): the functions are there already, and SQLite refuses to redefine a
    // function while a statement (that SELECT) runs. Nothing to do.
    if already_registered(db) {
        return Ok(());
    }
    let pure = FunctionFlags::UTF8 | FunctionFlags::DETERMINISTIC | FunctionFlags::INNOCUOUS;
    // Side effects (files, network, the database itself): callable only from top-level SQL,
    // never from a trigger or view inside a database file someone else wrote.
    let direct = FunctionFlags::UTF8 | FunctionFlags::DIRECTONLY;

    define(db, "backup_version", pure, meta::version)?;
    define(db, "backup_debug", pure, meta::debug)?;
    define(db, "backup_to_file", direct, backup::to_file)?;
    define(db, "backup_to_s3", direct, backup::to_s3)?;
    define(db, "verify_backup", direct, verify::verify)?;
    define(db, "restore_backup", direct, restore::restore)?;
    define(db, "backup_prune", direct, prune::prune)?;
    sqlite_loadable::define_table_function::<list::ListTable>(db, "backup_list", None).map_err(
        |e| {
            Error::new(
                crate::error::Kind::Sqlite,
                format!("cannot register backup_list: {}", e.result_error_message()),
            )
        },
    )?;
    Ok(())
}

/// True when this connection already has our functions (from an earlier load of the same
/// library: a second library is refused before this point).
fn already_registered(db: *mut sqlite3) -> bool {
    // SAFETY: the connection is live for the whole entry point.
    let conn = unsafe { Connection::borrowed(db) };
    conn.query_value(
        "SELECT count(DISTINCT name) FROM pragma_function_list \
         WHERE name IN ('backup_version', 'backup_to_file')",
    )
    .ok()
    .flatten()
    .is_some_and(|n| n == "2")
}

type Body = fn(&Call) -> Result<String>;

fn define(db: *mut sqlite3, name: &'static str, flags: FunctionFlags, body: Body) -> Result<()> {
    define_scalar_function(
        db,
        name,
        -1, // any count: we check it ourselves and say what the function takes
        move |ctx: *mut sqlite3_context, values: &[*mut sqlite3_value]| {
            let call = Call { name, ctx, values };
            // A panic must never unwind into the host application.
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                // SAFETY: the call's own connection, probed only on this thread during it.
                let probe =
                    unsafe { crate::ffi::interrupt::Probe::new(api::context_db_handle(ctx)) };
                crate::interrupt::watch(probe).finish(body(&call))
            }));
            let reported = match outcome {
                Ok(Ok(text)) => api::result_text(ctx, text),
                Ok(Err(e)) => api::result_error(ctx, &format!("{name}: {}", e.message)),
                Err(_) => api::result_error(
                    ctx,
                    &format!("{name}: internal error (this is a bug, please report it)"),
                ),
            };
            if reported.is_err() {
                api::result_error_code(ctx, 1);
            }
            Ok(())
        },
        flags,
    )
    .map_err(|e| {
        Error::new(
            crate::error::Kind::Sqlite,
            format!("cannot register {name}: {}", e.result_error_message()),
        )
    })
}

/// One call of a SQL function: its name, context and arguments.
pub struct Call<'a> {
    name: &'static str,
    ctx: *mut sqlite3_context,
    values: &'a [*mut sqlite3_value],
}

impl Call<'_> {
    /// Checks the argument count against the function's signature.
    pub fn arity(&self, min: usize, max: usize, signature: &str) -> Result<()> {
        let n = self.values.len();
        if (min..=max).contains(&n) {
            return Ok(());
        }
        let takes = if min == max {
            format!("{min}")
        } else {
            format!("{min} to {max}")
        };
        Err(Error::usage(format!(
            "takes {takes} argument{} ({}{signature}), got {n}",
            if max == 1 { "" } else { "s" },
            self.name
        )))
    }

    /// A required text argument.
    pub fn text(&self, index: usize, what: &str) -> Result<String> {
        match self.optional_text(index, what)? {
            Some(text) => Ok(text),
            None => Err(Error::usage(format!("{what} must be text, got NULL"))),
        }
    }

    /// A text argument that may be absent or NULL.
    pub fn optional_text(&self, index: usize, what: &str) -> Result<Option<String>> {
        match self.values.get(index) {
            Some(value) => text_value(value, what),
            None => Ok(None),
        }
    }

    /// The options argument at `index` as a JSON object (empty when absent or NULL).
    pub fn options(&self, index: usize) -> Result<serde_json::Map<String, serde_json::Value>> {
        options::object(self.optional_text(index, "options")?.as_deref())
    }

    /// The connection this function was called on.
    pub fn connection(&self) -> Connection {
        // SAFETY: the handle is live for the duration of the call.
        unsafe { Connection::borrowed(api::context_db_handle(self.ctx)) }
    }
}

/// A text SQL value (NULL: None); any other type is an error naming `what`.
pub fn text_value(value: &*mut sqlite3_value, what: &str) -> Result<Option<String>> {
    match api::value_type(value) {
        ValueType::Null => Ok(None),
        ValueType::Text => api::value_text(value)
            .map(|s| Some(s.to_string()))
            .map_err(|_| Error::usage(format!("{what} is not valid UTF-8"))),
        other => Err(Error::usage(format!(
            "{what} must be text, got {}",
            type_name(other)
        ))),
    }
}

fn type_name(t: ValueType) -> &'static str {
    match t {
        ValueType::Integer => "an integer",
        ValueType::Float => "a real",
        ValueType::Blob => "a blob",
        ValueType::Null => "NULL",
        ValueType::Text => "text",
    }
}

/// Serializes a result for SQL.
pub fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| {
        Error::new(
            crate::error::Kind::Io,
            format!("cannot encode the result: {e}"),
        )
    })
}
