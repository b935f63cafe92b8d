//! SQL-call builders: each extension function called with its options as JSON, so the tests
//! say what they call, not how to quote it. `*_sql` gives the statement, the plain name runs it
//! and returns the JSON result, `*_err` runs it and returns the SQL error.

use std::path::Path;

use rusqlite::Connection;
use serde_json::Value;

use super::{call_err, call_json, lit, path_lit};

/// `a` with the keys of `b` added (b wins).
pub fn merge(a: &Value, b: &Value) -> Value {
    let mut out = a.as_object().cloned().unwrap_or_default();
    if let Some(b) = b.as_object() {
        for (k, v) in b {
            out.insert(k.clone(), v.clone());
        }
    }
    Value::Object(out)
}

pub fn to_file_sql(pattern: &Path, opts: &Value) -> String {
    format!(
        "SELECT backup_to_file({}, {})",
        path_lit(pattern),
        lit(opts.to_string())
    )
}

pub fn to_s3_sql(bucket: &str, pattern: &str, opts: &Value) -> String {
    format!(
        "SELECT backup_to_s3({}, {}, {})",
        lit(bucket),
        lit(pattern),
        lit(opts.to_string())
    )
}

pub fn prune_sql(location: &str, policy: &Value) -> String {
    format!(
        "SELECT backup_prune({}, {})",
        lit(location),
        lit(policy.to_string())
    )
}

pub fn verify_sql(location: &str, opts: &Value) -> String {
    format!(
        "SELECT verify_backup({}, {})",
        lit(location),
        lit(opts.to_string())
    )
}

/// `dest` None restores into the calling connection (dest_path NULL).
pub fn restore_sql(location: &str, dest: Option<&Path>, opts: &Value) -> String {
    format!(
        "SELECT restore_backup({}, {}, {})",
        lit(location),
        dest.map_or("NULL".to_string(), path_lit),
        lit(opts.to_string())
    )
}

pub fn to_file(conn: &Connection, pattern: &Path, opts: &Value) -> Value {
    call_json(conn, &to_file_sql(pattern, opts))
}

pub fn to_file_err(conn: &Connection, pattern: &Path, opts: &Value) -> String {
    call_err(conn, &to_file_sql(pattern, opts))
}

pub fn to_s3(conn: &Connection, bucket: &str, pattern: &str, opts: &Value) -> Value {
    call_json(conn, &to_s3_sql(bucket, pattern, opts))
}

pub fn to_s3_err(conn: &Connection, bucket: &str, pattern: &str, opts: &Value) -> String {
    call_err(conn, &to_s3_sql(bucket, pattern, opts))
}

pub fn prune(conn: &Connection, location: &str, policy: &Value) -> Value {
    call_json(conn, &prune_sql(location, policy))
}

pub fn prune_err(conn: &Connection, location: &str, policy: &Value) -> String {
    call_err(conn, &prune_sql(location, policy))
}

pub fn verify(conn: &Connection, location: &str, opts: &Value) -> Value {
    call_json(conn, &verify_sql(location, opts))
}

pub fn verify_err(conn: &Connection, location: &str, opts: &Value) -> String {
    call_err(conn, &verify_sql(location, opts))
}

pub fn restore(conn: &Connection, location: &str, dest: Option<&Path>, opts: &Value) -> Value {
    call_json(conn, &restore_sql(location, dest, opts))
}

pub fn restore_err(conn: &Connection, location: &str, dest: Option<&Path>, opts: &Value) -> String {
    call_err(conn, &restore_sql(location, dest, opts))
}

/// One row of `backup_list`.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub url: String,
    pub size: i64,
    pub modified: String,
    pub sha256: Option<String>,
}

/// `SELECT * FROM backup_list(location[, options])`, in the order it returns.
pub fn list_rows(conn: &Connection, location: &str, opts: Option<&Value>) -> Vec<Row> {
    let sql = match opts {
        Some(o) => format!(
            "SELECT name, url, size, modified, sha256 FROM backup_list({}, {})",
            lit(location),
            lit(o.to_string())
        ),
        None => format!(
            "SELECT name, url, size, modified, sha256 FROM backup_list({})",
            lit(location)
        ),
    };
    let mut stmt = conn.prepare(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    stmt.query_map([], |r| {
        Ok(Row {
            name: r.get(0)?,
            url: r.get(1)?,
            size: r.get(2)?,
            modified: r.get(3)?,
            sha256: r.get(4)?,
        })
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

pub fn list_names(conn: &Connection, location: &str, opts: Option<&Value>) -> Vec<String> {
    list_rows(conn, location, opts)
        .into_iter()
        .map(|r| r.name)
        .collect()
}

/// The `name`s of a JSON array of items (a prune report's `kept`, `deleted`, `ignored`).
pub fn names_of(items: &Value) -> Vec<String> {
    items
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {items}"))
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}
