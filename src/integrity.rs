//! integrity_check of a decompressed backup, with the application's own definitions.
//!
//! Indexes, CHECK constraints and generated columns may use collations and functions that only
//! the application defines on its connection (`sqlite3_create_collation`, ORM helpers): a
//! connection of ours cannot evaluate them, and SQLite then fails the whole check with "no such
//! collation sequence". So the copy is attached to the calling connection when that is safe and
//! checked there. When the connection that runs the check still lacks a definition, every table
//! is checked on its own as far as it can be, every page is checked with stand-ins for what is
//! missing, and what could not be checked is listed in `skipped` with SQLite's reason: a backup
//! is called corrupt only for problems found.

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Kind, Result};
use crate::ffi::{quote_identifier, quote_literal, Connection, OpenMode};

/// How many integrity errors to list in a failure message.
const ERRORS_SHOWN: usize = 5;

/// The result of a check that found no problem.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// `"ok"`: everything was checked; `"partial"`: see `skipped`.
    pub integrity: &'static str,
    pub tables: u64,
    /// `"caller"`: on the calling connection (its collations and functions); `"separate"`: on
    /// a connection of our own (SQLite's built-in definitions only).
    pub checked_on: &'static str,
    pub skipped: Vec<Skipped>,
}

/// A part of the database the check could not cover.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// The table, or None for the checks of the database as a whole.
    pub table: Option<String>,
    pub not_checked: &'static str,
    pub reason: String,
}

/// True for SQLite's messages about a definition the connection lacks (as opposed to damage).
pub fn is_missing_definition(message: &str) -> bool {
    missing_definition(message).is_some()
}

/// SQLite's own words about the missing definition, from a message that may have context in
/// front of them ("no such collation sequence: APPCOLL").
pub fn missing_definition(message: &str) -> Option<&str> {
    [
        "no such collation sequence: ",
        "no such function: ",
        "unknown function: ",
        "no such module: ",
        // trusted_schema=OFF and a function not marked innocuous: it exists, but may not run.
        "unsafe use of ",
    ]
    .iter()
    .filter_map(|m| message.find(m))
    .min()
    .and_then(|at| message.get(at..))
}

/// Checks the database file at `path` (`url` names it in errors). With `caller`, the check runs
/// on that connection when it can attach the file there; otherwise on a connection of our own.
pub fn check(path: &Path, quick: bool, url: &str, caller: Option<&Connection>) -> Result<Outcome> {
    if let Some(conn) = caller.filter(|c| can_attach(c)) {
        if let Ok(attached) = Attached::new(conn, path) {
            let outcome = run(conn, &attached.schema, quick, url, "caller", path);
            attached.detach()?;
            match outcome {
                Ok(outcome) => return Ok(outcome),
                Err(Failure::Found(e)) => return Err(e),
                Err(Failure::NotRun(e)) if e.kind != Kind::Corrupt => return Err(e),
                // The caller's connection could not run it (its VFS, a read-only connection
                // and a WAL copy, a progress handler…): not a finding about the backup.
                Err(Failure::NotRun(_)) => {}
            }
        }
    }
    let own = Connection::open(path, OpenMode::ReadWrite)?;
    run(&own, "main", quick, url, "separate", path)
        .map_err(|(Failure::Found(e) | Failure::NotRun(e))| e)
}

/// Why a check did not pass: it found problems, or it could not run.
enum Failure {
    Found(Error),
    NotRun(Error),
}

/// ATTACH works in autocommit mode only, and DETACH fails ("database is locked") while another
/// statement of the connection still reads (the caller's SELECT may be scanning a table): the
/// attached file would then stay attached. Without any open transaction on any schema, no
/// statement of the caller reads, and the copy can be detached right after the check.
fn can_attach(conn: &Connection) -> bool {
    matches!(conn.autocommit(), Ok(true)) && matches!(conn.any_transaction(), Ok(false))
}

/// The copy attached to the caller's connection under a name of its own.
struct Attached<'c> {
    conn: &'c Connection,
    schema: String,
    attached: bool,
}

impl<'c> Attached<'c> {
    fn new(conn: &'c Connection, path: &Path) -> Result<Attached<'c>> {
        // Absolute: never read as a `file:` URI, whatever the connection's URI setting.
        let path = std::path::absolute(path)
            .map_err(|e| Error::io("cannot resolve the temp file's path", e))?;
        let path = path
            .to_str()
            .ok_or_else(|| Error::usage("the temp directory's path is not UTF-8"))?;
        let schema = format!("sqlite_backup_check_{:016x}", fastrand::u64(..));
        conn.exec(&format!(
            "ATTACH {} AS {}",
            quote_literal(path),
            quote_identifier(&schema)
        ))?;
        Ok(Attached {
            conn,
            schema,
            attached: true,
        })
    }

    fn detach(mut self) -> Result<()> {
        self.attached = false;
        self.conn
            .exec(&format!("DETACH {}", quote_identifier(&self.schema)))
            .map_err(|e| e.context("cannot detach the checked copy from this connection"))
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        if self.attached {
            let _ = self
                .conn
                .exec(&format!("DETACH {}", quote_identifier(&self.schema)));
        }
    }
}

fn run(
    conn: &Connection,
    schema: &str,
    quick: bool,
    url: &str,
    checked_on: &'static str,
    path: &Path,
) -> std::result::Result<Outcome, Failure> {
    let q = quote_identifier(schema);
    let pragma = if quick {
        "quick_check"
    } else {
        "integrity_check"
    };
    let mut skipped = Vec::new();
    match lines(conn, &format!("PRAGMA {q}.{pragma}({ERRORS_SHOWN})")) {
        Ok(found) => problems(found, url, pragma).map_err(Failure::Found)?,
        Err(e) if is_missing_definition(&e.message) => {
            skipped = table_by_table(conn, &q, quick, url, path)?;
        }
        Err(e) => return Err(not_run(url, pragma, &e)),
    }
    let tables = conn
        .query_value(&format!(
            "SELECT count(*) FROM {q}.sqlite_master WHERE type = 'table'"
        ))
        .map_err(|e| Failure::NotRun(unreadable_schema(url, &e)))?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Outcome {
        integrity: if skipped.is_empty() { "ok" } else { "partial" },
        tables,
        checked_on,
        skipped,
    })
}

/// The check of each table on its own (`PRAGMA integrity_check(table)`): full where the
/// connection has what the table needs, else quick_check (which does not compare index
/// entries with the rows). Then the pages of every table and index, the free list and the
/// pages in no table, with stand-ins for what is missing (`structure`).
fn table_by_table(
    conn: &Connection,
    q: &str,
    quick: bool,
    url: &str,
    path: &Path,
) -> std::result::Result<Vec<Skipped>, Failure> {
    let names = conn
        .query(&format!(
            "SELECT name FROM {q}.sqlite_master WHERE type = 'table' AND rootpage > 0 \
             ORDER BY name"
        ))
        .map_err(|e| Failure::NotRun(unreadable_schema(url, &e)))?;
    // (table, quick_check passed, why the full check could not run)
    let mut partly = Vec::new();
    for name in names
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
    {
        let table = quote_literal(&name);
        let pragmas: &[&str] = if quick {
            &["quick_check"]
        } else {
            &["integrity_check", "quick_check"]
        };
        let mut missing = None;
        let mut quick_passed = false;
        for pragma in pragmas {
            match lines(conn, &format!("PRAGMA {q}.{pragma}({table})")) {
                Ok(found) => {
                    problems(found, url, pragma).map_err(Failure::Found)?;
                    quick_passed = missing.is_some();
                    break;
                }
                Err(e) if is_missing_definition(&e.message) => {
                    missing.get_or_insert(e.message);
                }
                Err(e) => return Err(not_run(url, pragma, &e)),
            }
        }
        if let Some(why) = missing {
            let why = missing_definition(&why).unwrap_or(&why).to_string();
            partly.push((name, quick_passed, why));
        }
    }
    let structure = structure(path, url)?;
    let why_not = |why: &str| format!("{why}, not defined on the connection that ran the check");
    let mut skipped: Vec<Skipped> = partly
        .iter()
        .map(|(table, quick_passed, why)| Skipped {
            table: Some(table.clone()),
            not_checked: match (quick_passed, structure) {
                (true, _) => "index entries against the rows",
                (false, true) => "index entries, CHECK constraints and column values",
                (false, false) => "the table and its indexes",
            },
            reason: why_not(why),
        })
        .collect();
    if !structure {
        let why = partly.first().map_or("a definition is missing", |p| &p.2);
        skipped.push(Skipped {
            table: None,
            not_checked: "free pages and pages in no table",
            reason: format!("checked only with the whole database ({})", why_not(why)),
        });
    }
    Ok(skipped)
}

/// quick_check of the whole copy on a connection of ours, with stand-ins (byte order, a
/// function returning NULL) for the collations and functions it lacks and CHECK constraints
/// off: every page of every table and index, the free list and the pages in no table. Index
/// entries are not compared with rows in quick_check, so what the stand-ins compute does not
/// matter; column values they compute (generated columns) are not trusted. False when it could
/// not run to the end.
fn structure(path: &Path, url: &str) -> std::result::Result<bool, Failure> {
    /// Bounds the rounds of "missing X, define X, again".
    const MAX_STAND_INS: usize = 64;
    /// Enough rows to see past values computed by stand-ins.
    const ROWS: usize = 100;
    let Ok(own) = Connection::open(path, OpenMode::ReadWrite) else {
        return Ok(false);
    };
    if own.exec("PRAGMA ignore_check_constraints = ON").is_err() {
        return Ok(false);
    }
    let mut defined: Vec<String> = Vec::new();
    for _ in 0..=MAX_STAND_INS {
        match lines(&own, &format!("PRAGMA main.quick_check({ROWS})")) {
            Ok(found) if found == ["ok"] => return Ok(true),
            Ok(found) => {
                let all = found.len();
                // "NULL value in t.c", "TEXT value in t.c": may come from a stand-in's NULL.
                let real: Vec<String> = found
                    .into_iter()
                    .filter(|l| defined.is_empty() || !l.contains(" value in "))
                    .collect();
                if !real.is_empty() {
                    problems(real, url, "quick_check").map_err(Failure::Found)?;
                }
                return Ok(all < ROWS);
            }
            Err(e) => {
                let Some(missing) = missing_definition(&e.message) else {
                    return Err(not_run(url, "quick_check", &e));
                };
                let Some((name, collation)) = stand_in_for(missing) else {
                    return Ok(false);
                };
                let name = name.to_string();
                if name.is_empty() || defined.contains(&name) {
                    return Ok(false);
                }
                let added = if collation {
                    own.define_stand_in_collation(&name)
                } else {
                    own.define_stand_in_function(&name)
                };
                if added.is_err() {
                    return Ok(false);
                }
                defined.push(name);
            }
        }
    }
    Ok(false)
}

/// The name a stand-in must have for SQLite's complaint, and whether it is a collation (else a
/// function); None when no stand-in can help (a module, a function that may not run).
fn stand_in_for(missing: &str) -> Option<(&str, bool)> {
    let (name, collation) = match missing.strip_prefix("no such collation sequence: ") {
        Some(name) => (name, true),
        None => {
            let name = missing
                .strip_prefix("unknown function: ")
                .or_else(|| missing.strip_prefix("no such function: "))?;
            (name.split('(').next().unwrap_or(name), false)
        }
    };
    let name = name.trim();
    (!name.is_empty()).then_some((name, collation))
}

/// The rows of a check; an error when SQLite could not run it.
fn lines(conn: &Connection, sql: &str) -> Result<Vec<String>> {
    Ok(conn
        .query(sql)?
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect())
}

fn problems(found: Vec<String>, url: &str, pragma: &str) -> Result<()> {
    if found == ["ok"] {
        return Ok(());
    }
    let shown: Vec<String> = found.into_iter().take(ERRORS_SHOWN).collect();
    Err(Error::corrupt(format!(
        "{url} failed {pragma}: {}",
        shown.join("; ")
    )))
}

/// A check SQLite could not finish: SQLITE_CORRUPT is a finding about the backup; anything
/// else may be the connection's doing.
fn not_run(url: &str, pragma: &str, e: &Error) -> Failure {
    if e.kind == Kind::Corrupt {
        Failure::Found(failed(url, pragma, e))
    } else {
        Failure::NotRun(failed(url, pragma, e))
    }
}

fn unreadable_schema(url: &str, e: &Error) -> Error {
    Error::corrupt(format!("{url}: cannot read the schema: {}", e.message))
}

fn failed(url: &str, pragma: &str, e: &Error) -> Error {
    // sqlite3_interrupt on the caller's connection (or its progress handler) stopped it.
    if e.message == "interrupted" {
        return Error::new(Kind::Sqlite, format!("the check of {url} was interrupted"));
    }
    Error::new(
        Kind::Corrupt,
        format!("{url}: {pragma} failed: {}", e.message),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_ins_are_named_from_the_message() {
        assert_eq!(
            stand_in_for("no such collation sequence: APP COLL"),
            Some(("APP COLL", true))
        );
        assert_eq!(
            stand_in_for("unknown function: app_upper()"),
            Some(("app_upper", false))
        );
        assert_eq!(
            stand_in_for("no such function: app_upper"),
            Some(("app_upper", false))
        );
        assert_eq!(stand_in_for("no such module: fts9"), None);
        assert_eq!(stand_in_for("unsafe use of app_upper()"), None);
        assert_eq!(stand_in_for("unknown function: ()"), None);
    }

    #[test]
    fn missing_definitions_are_told_from_damage() {
        for m in [
            "no such collation sequence: APPCOLL",
            "no such function: appfn",
            "unknown function: appfn()",
            "no such module: appvtab",
            "unsafe use of appfn()",
        ] {
            assert_eq!(
                missing_definition(&format!("VACUUM INTO from /a: b failed: {m}")),
                Some(m)
            );
        }
        for m in [
            "database disk image is malformed",
            "file is not a database",
            "malformed database schema (x) - near \"(\": syntax error",
        ] {
            assert!(!is_missing_definition(m), "{m}");
        }
    }
}
