//! backup_to_file(pattern [, options]) and backup_to_s3(bucket, pattern [, options]): one
//! pipeline, two stores, with keep and notify around it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;

use super::{json, options, to_value, Call};
use crate::allow;
use crate::backup::{self, Request};
use crate::codec::MAX_THREADS;
use crate::error::{Error, Result};
use crate::ffi::Connection;
use crate::live::{self, Protected};
use crate::naming::{self, Series};
use crate::notify::{Notifier, Style};
use crate::prune;
use crate::retention::Policy;
use crate::snapshot::Method;
use crate::store::file::FileStore;
use crate::store::s3::S3Store;
use crate::store::{Location, Store};
use crate::temp::parent_dir;

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
    /// Retention applied after a successful backup, to the series (`match`).
    keep: Option<Policy>,
    notify: Option<String>,
    notify_style: Option<Style>,
    notify_timeout_ms: Option<u64>,
    progress: Option<bool>,
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
    // A bad series glob must fail now, not after the backup was stored (keep, if_changed).
    crate::retention::compile_match(opts.match_glob.as_deref())?;
    let threads = match opts.threads {
        Some(0) => return Err(Error::usage("option 'threads' must be at least 1")),
        Some(n) if n > MAX_THREADS => {
            return Err(Error::usage(format!(
                "option 'threads' must be at most {MAX_THREADS}, not {n}: each thread holds \
                 its own compressor, and more threads than cores only cost memory"
            )))
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS)),
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
        family: match &opts.match_glob {
            Some(glob) => Series::glob(glob)?,
            None => Series::pattern(pattern_name),
        },
    })
}

pub fn to_file(call: &Call) -> Result<String> {
    call.arity(1, 2, "(pattern [, options])")?;
    let pattern = call.text(0, "pattern")?;
    let mut map = call.options(1)?;
    options::take_s3(&mut map, false)?;
    let opts: BackupOptions = options::decode(map)?;
    confine(&opts)?;
    let _progress = crate::progress::show(call.name, opts.progress);
    monitored(&opts, || {
        let pattern_name = Path::new(&pattern)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let req = request(&opts, pattern_name)?;
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
        // The directory too: `keep` prunes in it.
        allow::path(parent_dir(&path), "destination directory")?;
        allow::path(&path, "destination")?;
        let store = FileStore::open(parent_dir(&path))?;
        let conn = call.connection();
        // Fails early, before the snapshot, when the schema does not exist.
        conn.filename(&req.schema)?;
        let live = protected(&conn)?.with_source(&req.schema);
        live::refuse_live_file(&live, &path)?;
        live::refuse_in_use(&path)?;
        backup_and_keep(&conn, &store, &name, &req, &opts)
    })
}

pub fn to_s3(call: &Call) -> Result<String> {
    call.arity(2, 3, "(bucket, pattern [, options])")?;
    let bucket = call.text(0, "bucket")?;
    let pattern = call.text(1, "pattern")?;
    let mut map = call.options(2)?;
    let s3 = options::take_s3(&mut map, true)?;
    let opts: BackupOptions = options::decode(map)?;
    confine(&opts)?;
    allow::s3_options(&s3)?;
    let _progress = crate::progress::show(call.name, opts.progress);
    monitored(&opts, || {
        let req = request(&opts, &pattern)?;
        // `mybucket`, `s3://mybucket` or `s3://mybucket/some/prefix`.
        let url = if bucket.contains("://") {
            bucket.clone()
        } else {
            format!("s3://{bucket}")
        };
        let Location::S3 {
            bucket,
            key: prefix,
        } = Location::parse(&url)?
        else {
            return Err(Error::usage(format!(
                "bucket '{bucket}' is not an S3 bucket: use mybucket, s3://mybucket or s3://mybucket/prefix"
            )));
        };
        let name = naming::expand(&pattern, req.time, opts.utc.unwrap_or(true))?;
        if name.starts_with('/') || name.ends_with('/') {
            return Err(Error::usage(format!(
                "pattern '{pattern}' must name an object below the bucket, like 'db-%d.gz' \
                 (no leading or trailing '/')"
            )));
        }
        // The prefix too: `keep` prunes below it.
        allow::s3(&bucket, &prefix, "destination prefix")?;
        allow::s3(&bucket, &format!("{prefix}/{name}"), "destination")?;
        let store = S3Store::open(&bucket, &prefix, &s3)?;
        backup_and_keep(&call.connection(), &store, &name, &req, &opts)
    })
}

/// Under SQLITE_BACKUP_ALLOW, the places besides the destination: checked before any ping.
fn confine(opts: &BackupOptions) -> Result<()> {
    if let Some(dir) = &opts.temp_dir {
        allow::path(Path::new(dir), "option 'temp_dir'")?;
    }
    if let Some(url) = &opts.notify {
        allow::url(url, "notify URL")?;
    }
    Ok(())
}

/// The backup, then `keep` applied to its series. Returns the report and its JSON, with
/// `pruned` added when a policy was given.
fn backup_and_keep(
    conn: &Connection,
    store: &dyn Store,
    name: &str,
    req: &Request,
    opts: &BackupOptions,
) -> Result<(backup::Report, Value)> {
    if let Some(policy) = &opts.keep {
        // A bad policy fails before the backup, not after it.
        policy.check().map_err(|e| e.context("option 'keep'"))?;
    }
    let report = backup::run(conn, store, name, req)?;
    let mut value = to_value(&report)?;
    if let Some(policy) = &opts.keep {
        let request = prune::Request {
            policy: policy.clone(),
            series: Some(req.family.clone()),
            dry_run: false,
            now: req.time,
            utc: opts.utc.unwrap_or(true),
            protected: protected(conn)?,
        };
        let pruned = prune::run(store, &request).map_err(|e| {
            e.context(format!(
                "the backup was stored at {}, but pruning failed",
                report.destination
            ))
        })?;
        value["pruned"] = to_value(&pruned)?;
    }
    Ok((report, value))
}

/// Runs `body` between the monitoring pings (when `notify` is set): `/start` before,
/// success or failure after. A failed ping never fails a good backup; it is reported in
/// the result's `notify`. The backup's own error reaches SQL unchanged.
fn monitored(
    opts: &BackupOptions,
    body: impl FnOnce() -> Result<(backup::Report, Value)>,
) -> Result<String> {
    let Some(url) = &opts.notify else {
        return json(&body()?.1);
    };
    let timeout = Duration::from_millis(opts.notify_timeout_ms.unwrap_or(10_000));
    let style = opts.notify_style.unwrap_or_default();
    let notifier = if allow::current()?.is_some() {
        Notifier::confined(url, style, timeout)?
    } else {
        Notifier::new(url, style, timeout)?
    };
    let started = notifier.start();
    match body() {
        Ok((report, mut value)) => {
            let message = if report.skipped {
                format!(
                    "unchanged since {}: skipped",
                    report.same_as.as_deref().unwrap_or("the last backup")
                )
            } else {
                format!(
                    "stored {} ({} bytes, {} stored) in {} ms",
                    report.destination, report.bytes, report.stored_bytes, report.elapsed_ms
                )
            };
            let done = notifier.success(&message);
            value["notify"] = serde_json::json!({ "start": started, "result": done });
            json(&value)
        }
        Err(e) => {
            notifier.failure(&e.message);
            Err(e)
        }
    }
}

/// The calling connection's database files, every schema (`PRAGMA database_list`): a backup
/// never lands on one and retention never deletes one.
pub fn protected(conn: &Connection) -> Result<Protected> {
    let rows = conn.query("PRAGMA database_list")?;
    let files: Vec<(String, PathBuf)> = rows
        .into_iter()
        .filter_map(|row| {
            let mut cols = row.into_iter().skip(1);
            let schema = cols.next().flatten()?;
            let file = cols.next().flatten().filter(|f| !f.is_empty())?;
            Some((schema, PathBuf::from(file)))
        })
        .collect();
    Ok(Protected::new(
        files.iter().map(|(s, f)| (s.as_str(), f.as_path())),
    ))
}
