//! backup_to_file(pattern [, options]).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{json, options, Call};
use crate::backup::{self, Request};
use crate::error::{Error, Result};
use crate::naming;
use crate::snapshot::Method;
use crate::store::file::FileStore;
use crate::store::s3::S3Store;
use crate::store::Location;

/// Options shared by backup_to_file and backup_to_s3.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupOptions {
    schema: Option<String>,
    method: Option<Method>,
    busy_timeout_ms: Option<u64>,
    level: Option<i64>,
    threads: Option<usize>,
    temp_dir: Option<String>,
    utc: Option<bool>,
    now: Option<String>,
    if_changed: Option<bool>,
    create_only: Option<bool>,
    #[serde(rename = "match")]
    match_glob: Option<String>,
}

pub const DEFAULT_BUSY_TIMEOUT_MS: u64 = 5000;

/// The clock: `now` when given (RFC 3339), else the current time.
pub fn clock(now: Option<&str>) -> Result<DateTime<Utc>> {
    match now {
        None => Ok(Utc::now()),
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                Error::usage(format!(
                    "option 'now': cannot read '{text}': use RFC 3339, e.g. 2026-01-31T23:00:00Z"
                ))
            }),
    }
}

pub fn temp_dir(option: Option<&str>) -> PathBuf {
    option.map(PathBuf::from).unwrap_or_else(std::env::temp_dir)
}

fn request(opts: &BackupOptions, pattern_name: &str) -> Result<Request> {
    let threads = match opts.threads {
        Some(0) => return Err(Error::usage("option 'threads' must be at least 1")),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    Ok(Request {
        schema: opts.schema.clone().unwrap_or_else(|| "main".to_string()),
        method: opts.method,
        busy_timeout_ms: opts.busy_timeout_ms.unwrap_or(DEFAULT_BUSY_TIMEOUT_MS),
        level: opts.level,
        threads,
        temp_dir: temp_dir(opts.temp_dir.as_deref()),
        time: clock(opts.now.as_deref())?,
        if_changed: opts.if_changed.unwrap_or(false),
        create_only: opts.create_only.unwrap_or(false),
        family: opts
            .match_glob
            .clone()
            .unwrap_or_else(|| naming::to_glob(pattern_name)),
    })
}

pub fn to_file(call: &Call) -> Result<String> {
    call.arity(1, 2, "(pattern [, options])")?;
    let pattern = call.text(0, "pattern")?;
    let mut map = call.options(1)?;
    options::take_s3(&mut map, false)?;
    let opts: BackupOptions = options::decode(map)?;
    let pattern_name = Path::new(&pattern)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let req = request(&opts, &pattern_name)?;

    let path = PathBuf::from(naming::expand(
        &pattern,
        req.time,
        opts.utc.unwrap_or(true),
    )?);
    let name = match path.file_name().and_then(|n| n.to_str()) {
        Some(n) if !pattern.ends_with('/') => n.to_string(),
        _ => {
            return Err(Error::usage(format!(
                "pattern '{pattern}' names no file: give a file name, like /var/backups/db-%d.gz"
            )))
        }
    };
    let store = FileStore::open(path.parent().unwrap_or(Path::new("")))?;
    let conn = call.connection();
    refuse_source(&conn, &req.schema, &path)?;
    json(&backup::run(&conn, &store, &name, &req)?)
}

pub fn to_s3(call: &Call) -> Result<String> {
    call.arity(2, 3, "(bucket, pattern [, options])")?;
    let bucket = call.text(0, "bucket")?;
    let pattern = call.text(1, "pattern")?;
    let mut map = call.options(2)?;
    let s3 = options::take_s3(&mut map, true)?;
    let opts: BackupOptions = options::decode(map)?;
    let req = request(&opts, &pattern)?;

    // `mybucket`, `s3://mybucket` or `s3://mybucket/some/prefix`.
    let url = if bucket.contains("://") {
        bucket.clone()
    } else {
        format!("s3://{bucket}")
    };
    let (bucket, prefix) = match Location::parse(&url)? {
        Location::S3 { bucket, key } => (bucket, key),
        Location::File(_) => unreachable_location(&bucket)?,
    };
    let name = naming::expand(&pattern, req.time, opts.utc.unwrap_or(true))?;
    if name.starts_with('/') || name.ends_with('/') {
        return Err(Error::usage(format!(
            "pattern '{pattern}' must name an object below the bucket, like 'db-%d.gz' (no leading or trailing '/')"
        )));
    }
    let store = S3Store::open(&bucket, &prefix, &s3)?;
    json(&backup::run(&call.connection(), &store, &name, &req)?)
}

fn unreachable_location<T>(bucket: &str) -> Result<T> {
    Err(Error::usage(format!(
        "bucket '{bucket}' is not an S3 bucket: use mybucket, s3://mybucket or s3://mybucket/prefix"
    )))
}

/// Writing a backup over the live database would replace it under its own connections.
fn refuse_source(conn: &crate::ffi::Connection, schema: &str, dest: &Path) -> Result<()> {
    let Some(source) = conn.filename(schema)? else {
        return Ok(());
    };
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same(&source, dest) {
        return Err(Error::usage(format!(
            "{} is the database being backed up: choose another destination",
            dest.display()
        )));
    }
    Ok(())
}
