//! Every option, resolved once. The SQL layer decodes a call's JSON options into the
//! `*Options` shapes below and resolves them here into typed requests that the jobs
//! (`job.rs`) consume. Every default lives in this file, and SQLITE_BACKUP_ALLOW is checked
//! here, before any work.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::allow;
use crate::backup;
use crate::codec::MAX_THREADS;
use crate::crypt;
use crate::error::{Error, Result};
use crate::ffi::Connection;
use crate::naming::{self, Series};
use crate::notify::Style;
use crate::retention::Policy;
use crate::snapshot::Method;
use crate::store::s3::S3Options;
use crate::store::Location;
use crate::temp::parent_dir;

/// The schema backed up or restored into.
pub const DEFAULT_SCHEMA: &str = "main";
/// How long a snapshot or restore waits for a lock.
pub const DEFAULT_BUSY_TIMEOUT_MS: u64 = 5000;
/// Names and retention buckets are in UTC unless `utc` is false.
pub const DEFAULT_UTC: bool = true;
/// How long one monitoring ping may take.
pub const DEFAULT_NOTIFY_TIMEOUT: Duration = crate::notify::DEFAULT_TIMEOUT;

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

/// The directory for temp files: the option, else the system's.
fn temp_dir(option: Option<&str>) -> PathBuf {
    option.map(PathBuf::from).unwrap_or_else(std::env::temp_dir)
}

/// Under SQLITE_BACKUP_ALLOW, `temp_dir` must be inside too.
fn allow_temp_dir(option: Option<&str>) -> Result<()> {
    match option {
        Some(dir) => allow::path(Path::new(dir), "option 'temp_dir'"),
        None => Ok(()),
    }
}

/// Under SQLITE_BACKUP_ALLOW, a key file named by an option (`identity_file`,
/// `recipients_file`) must be inside too: reading any file as a key tells whether it exists, and
/// a line that is not a key is quoted in the error. The SQLITE_BACKUP_AGE_* variables are the
/// host's own choice, like `$TMPDIR`, and are not checked. Empty means none.
fn allow_key_file(option: Option<&str>, what: &str) -> Result<()> {
    match option {
        Some(file) if !file.is_empty() => allow::path(Path::new(file), what),
        _ => Ok(()),
    }
}

/// A user's `match` glob as a series (None: every name).
fn series(glob: Option<&str>) -> Result<Option<Series>> {
    glob.map(Series::glob).transpose()
}

// ---- backup_to_file, backup_to_s3 ----

/// Options of backup_to_file and backup_to_s3 (the S3 keys are split off before).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupOptions {
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
    /// The backup's series, for `keep` and `if_changed`; default: the name pattern's.
    #[serde(rename = "match")]
    series: Option<String>,
    /// Retention applied after a successful backup, to the series.
    keep: Option<Policy>,
    notify: Option<String>,
    notify_style: Option<Style>,
    notify_timeout_ms: Option<u64>,
    progress: Option<bool>,
    /// age recipients for a name ending in `.age`.
    recipients: Option<Vec<String>>,
    recipients_file: Option<String>,
    /// Decrypts the newest backup for `if_changed` when the series is encrypted.
    identity_file: Option<String>,
    /// Store only the pages changed since the newest backup of the series.
    incremental: Option<bool>,
    /// With `incremental`: a count of backups, or a duration, between full backups.
    full_every: Option<FullEveryOption>,
}

/// `full_every`: a count (`24`) or a duration (`"24h"`, `"7d"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum FullEveryOption {
    Count(u64),
    Duration(String),
}

/// The incremental options, checked (None: a plain backup).
fn incremental(opts: &BackupOptions) -> Result<Option<crate::incremental::Options>> {
    use crate::incremental::{FullEvery, Options, DEFAULT_FULL_EVERY};
    if opts.incremental != Some(true) {
        if opts.full_every.is_some() {
            return Err(Error::usage(
                "option 'full_every' goes with \"incremental\": true",
            ));
        }
        return Ok(None);
    }
    if opts.method == Some(Method::Vacuum) {
        return Err(Error::usage(
            "option 'incremental' compares pages by number, which only methods 'pages' and 'stream' keep \
             (VACUUM INTO renumbers them): drop method 'vacuum'",
        ));
    }
    let full_every = match &opts.full_every {
        None => FullEvery::Count(DEFAULT_FULL_EVERY),
        Some(FullEveryOption::Count(n)) => match u32::try_from(*n) {
            Ok(n) if n >= 1 => FullEvery::Count(n),
            _ => {
                return Err(Error::usage(format!(
                    "option 'full_every' must be a count from 1 (every backup full) to \
                     {}, or a duration like '24h' or '7d', not {n}",
                    u32::MAX
                )))
            }
        },
        Some(FullEveryOption::Duration(text)) => {
            let within = crate::retention::Within::parse(text).map_err(|_| {
                Error::usage(format!(
                    "option 'full_every': cannot read '{text}': give a count (24) or a \
                     duration with a unit (h, d, w, m, y), like '24h' or '7d'"
                ))
            })?;
            if within.is_zero() {
                return Err(Error::usage(
                    "option 'full_every' must be a duration above zero",
                ));
            }
            FullEvery::Age(within)
        }
    };
    Ok(Some(Options { full_every }))
}

/// Where a backup goes, as the caller gave it.
pub enum Target {
    /// backup_to_file(pattern): a path pattern.
    File { pattern: String },
    /// backup_to_s3(bucket, pattern): `mybucket`, `s3://mybucket` or `s3://mybucket/prefix`.
    S3 {
        bucket: String,
        pattern: String,
        s3: Box<S3Options>,
    },
}

/// Where a backup goes, resolved: the store's location and the backup's name in it.
pub enum Destination {
    File {
        /// The directory (the store) and the file in it.
        path: PathBuf,
        name: String,
    },
    S3 {
        bucket: String,
        prefix: String,
        name: String,
        s3: Box<S3Options>,
    },
}

/// The monitoring pings around a backup.
pub struct Notify {
    pub url: String,
    pub style: Style,
    pub timeout: Duration,
    /// Under SQLITE_BACKUP_ALLOW: a redirect is reported, never followed.
    pub confined: bool,
}

/// One backup job, resolved.
pub struct Backup {
    /// Checked before any work, so a bad URL never pings.
    pub notify: Option<Notify>,
    pub progress: Option<bool>,
    /// Everything else. Resolved now, but an error here is reported the way a failed backup
    /// is, after the `/start` ping: a monitor hears about a job that cannot run.
    pub plan: Result<Plan>,
}

/// What the job does once its pings are set up.
pub struct Plan {
    pub destination: Destination,
    pub backup: backup::Request,
    /// Retention applied to the series after a stored backup (checked already).
    pub keep: Option<Policy>,
    pub utc: bool,
    /// `incremental`: its options.
    pub incremental: Option<crate::incremental::Options>,
}

/// Resolves a backup call's target and options.
pub fn backup(target: Target, opts: BackupOptions) -> Result<Backup> {
    // The places besides the destination: refused before any ping.
    allow_temp_dir(opts.temp_dir.as_deref())?;
    allow_key_file(opts.recipients_file.as_deref(), "option 'recipients_file'")?;
    allow_key_file(opts.identity_file.as_deref(), "option 'identity_file'")?;
    if let Some(url) = &opts.notify {
        allow::url(url, "notify URL")?;
    }
    if let Target::S3 { s3, .. } = &target {
        allow::s3_options(s3)?;
    }
    let notify = match opts.notify.clone() {
        None => None,
        Some(url) => Some(Notify {
            url,
            style: opts.notify_style.unwrap_or_default(),
            timeout: opts
                .notify_timeout_ms
                .map_or(DEFAULT_NOTIFY_TIMEOUT, Duration::from_millis),
            confined: allow::current()?.is_some(),
        }),
    };
    let progress = opts.progress;
    Ok(Backup {
        notify,
        progress,
        plan: plan(target, opts),
    })
}

fn plan(target: Target, opts: BackupOptions) -> Result<Plan> {
    let utc = opts.utc.unwrap_or(DEFAULT_UTC);
    // A bad series glob fails now, not after the backup was stored (keep, if_changed).
    let glob = series(opts.series.as_deref())?;
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
    let time = clock(opts.now.as_deref())?;
    let incremental = incremental(&opts)?;
    // A bad policy fails before the backup, not after it.
    if let Some(policy) = &opts.keep {
        policy.check().map_err(|e| e.context("option 'keep'"))?;
    }
    let (destination, pattern_name) = match target {
        Target::File { pattern } => {
            let path = PathBuf::from(naming::expand(&pattern, time, utc)?);
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
            let pattern_name = Path::new(&pattern)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            (Destination::File { path, name }, pattern_name)
        }
        Target::S3 {
            bucket,
            pattern,
            s3,
        } => {
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
            let name = naming::expand(&pattern, time, utc)?;
            if name.starts_with('/') || name.ends_with('/') {
                return Err(Error::usage(format!(
                    "pattern '{pattern}' must name an object below the bucket, like 'db-%d.gz' \
                     (no leading or trailing '/')"
                )));
            }
            // The prefix too: `keep` prunes below it.
            allow::s3(&bucket, &prefix, "destination prefix")?;
            allow::s3(&bucket, &format!("{prefix}/{name}"), "destination")?;
            let destination = Destination::S3 {
                bucket,
                prefix,
                name,
                s3,
            };
            (destination, pattern)
        }
    };
    let name = match &destination {
        Destination::File { name, .. } | Destination::S3 { name, .. } => name,
    };
    let identity_file = crypt::identity_file(opts.identity_file.as_deref());
    let recipients = if crypt::wanted(name) {
        let recipients =
            crypt::recipients(opts.recipients.as_deref(), opts.recipients_file.as_deref())?;
        // Encrypted backups record no plaintext hash, so the only way to compare is to
        // decrypt the newest one.
        if opts.if_changed == Some(true) && identity_file.is_none() {
            return Err(Error::usage(format!(
                "option 'if_changed' with an encrypted (.age) backup needs option \
                 'identity_file' (or {}) to decrypt the newest backup and compare: \
                 the plaintext sha256 is not stored in the clear",
                crypt::IDENTITY_ENV
            )));
        }
        Some(std::sync::Arc::new(recipients))
    } else {
        if opts.recipients.is_some() || opts.recipients_file.is_some() {
            return Err(Error::usage(format!(
                "options 'recipients' and 'recipients_file' encrypt a backup whose name ends \
                 in .age, and '{name}' does not: add .age to the pattern (like db-%d.zst.age), \
                 or drop the option"
            )));
        }
        None
    };
    if incremental.is_some() && crypt::wanted(name) {
        // Continuing the chain means reading its (encrypted) page lists: asked for always, so
        // the first backup of a series fails the same way as the next ones would.
        let Some(identity) = &identity_file else {
            return Err(Error::usage(format!(
                "option 'incremental' with an encrypted (.age) backup needs option \
                 'identity_file' (or {}): the next backup compares its pages with the chain's \
                 page lists, which are encrypted",
                crypt::IDENTITY_ENV
            )));
        };
        crypt::check_identity_file(identity)?;
    }
    Ok(Plan {
        destination,
        backup: backup::Request {
            recipients,
            identity_file,
            schema: opts.schema.unwrap_or_else(|| DEFAULT_SCHEMA.to_string()),
            method: opts.method,
            busy_timeout_ms: opts.busy_timeout_ms.unwrap_or(DEFAULT_BUSY_TIMEOUT_MS),
            level: opts.level,
            threads,
            temp_dir: temp_dir(opts.temp_dir.as_deref()),
            time,
            if_changed: opts.if_changed.unwrap_or(false),
            create_only: opts.create_only.unwrap_or(false),
            series: glob.unwrap_or_else(|| Series::pattern(&pattern_name)),
        },
        keep: opts.keep,
        utc,
        incremental,
    })
}

// ---- verify_backup, restore_backup ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyOptions {
    quick: Option<bool>,
    temp_dir: Option<String>,
    progress: Option<bool>,
    identity_file: Option<String>,
}

/// One verify_backup call, resolved.
pub struct Verify {
    pub location: String,
    pub s3: S3Options,
    pub temp_dir: PathBuf,
    pub quick: bool,
    pub progress: Option<bool>,
    /// Decrypts an age backup (option or SQLITE_BACKUP_AGE_IDENTITY_FILE).
    pub identity_file: Option<PathBuf>,
}

pub fn verify(location: String, s3: S3Options, opts: VerifyOptions) -> Result<Verify> {
    allow::location(&location, "location")?;
    allow::s3_options(&s3)?;
    allow_temp_dir(opts.temp_dir.as_deref())?;
    allow_key_file(opts.identity_file.as_deref(), "option 'identity_file'")?;
    Ok(Verify {
        location,
        s3,
        temp_dir: temp_dir(opts.temp_dir.as_deref()),
        quick: opts.quick.unwrap_or(false),
        progress: opts.progress,
        identity_file: crypt::identity_file(opts.identity_file.as_deref()),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreOptions {
    overwrite: Option<bool>,
    quick: Option<bool>,
    schema: Option<String>,
    busy_timeout_ms: Option<u64>,
    temp_dir: Option<String>,
    progress: Option<bool>,
    newest: Option<bool>,
    #[serde(rename = "match")]
    series: Option<String>,
    if_missing: Option<bool>,
    missing_ok: Option<bool>,
    identity_file: Option<String>,
}

/// One restore_backup call, resolved.
pub struct Restore {
    pub location: String,
    pub s3: S3Options,
    pub quick: bool,
    pub into: RestoreInto,
    pub progress: Option<bool>,
    /// `Some`: the location is a directory or prefix; restore its newest backup (in the series).
    pub newest: Option<Option<Series>>,
    /// With a file: an existing file is left alone (start-up restores).
    pub if_missing: bool,
    /// No backup yet is not an error (a first deployment has none).
    pub missing_ok: bool,
    /// Decrypts an age backup (option or SQLITE_BACKUP_AGE_IDENTITY_FILE).
    pub identity_file: Option<PathBuf>,
}

pub enum RestoreInto {
    /// A file, through a temp file beside it.
    File { path: PathBuf, overwrite: bool },
    /// The calling connection's database `schema`, replaced.
    Connection {
        schema: String,
        busy_timeout_ms: u64,
        temp_dir: PathBuf,
    },
}

/// Resolves a restore into `dest` (None: into `conn`, whose file the allow-list must cover).
pub fn restore(
    location: String,
    dest: Option<String>,
    s3: S3Options,
    opts: RestoreOptions,
    conn: &Connection,
) -> Result<Restore> {
    allow::location(&location, "location")?;
    allow::s3_options(&s3)?;
    allow_temp_dir(opts.temp_dir.as_deref())?;
    allow_key_file(opts.identity_file.as_deref(), "option 'identity_file'")?;
    let newest = opts.newest.unwrap_or(false);
    if opts.series.is_some() && !newest {
        return Err(Error::usage(
            "option 'match' chooses among the backups of a directory or prefix: add \"newest\": true",
        ));
    }
    let if_missing = opts.if_missing.unwrap_or(false);
    if if_missing && dest.is_none() {
        return Err(Error::usage(
            "option 'if_missing' needs a dest_path: the connection's own database always exists",
        ));
    }
    if if_missing && opts.overwrite == Some(true) {
        return Err(Error::usage(
            "options 'if_missing' and 'overwrite' contradict each other: choose one",
        ));
    }
    let series = series(opts.series.as_deref())?;
    let schema = opts.schema.as_deref().unwrap_or(DEFAULT_SCHEMA);
    match &dest {
        Some(dest) => {
            // The directory too: the restored copy is written beside its destination first.
            allow::path(parent_dir(Path::new(dest)), "dest_path directory")?;
            allow::path(Path::new(dest), "dest_path")?;
        }
        // Restoring into this connection replaces its database file.
        None => {
            if let Some(file) = conn.filename(schema)? {
                allow::path(&file, "the database restored into")?;
            }
        }
    }
    let into = match dest {
        Some(dest) => {
            // A file is restored through a temp file beside it (one rename, same file
            // system) and never waits for a lock: these options would do nothing.
            for (given, key) in [
                (opts.schema.is_some(), "schema"),
                (opts.temp_dir.is_some(), "temp_dir"),
                (opts.busy_timeout_ms.is_some(), "busy_timeout_ms"),
            ] {
                if given {
                    return Err(Error::usage(format!(
                        "option '{key}' applies when restoring into this connection \
                         (dest_path NULL); a file is restored through a temp file beside it"
                    )));
                }
            }
            RestoreInto::File {
                path: PathBuf::from(dest),
                overwrite: opts.overwrite.unwrap_or(false),
            }
        }
        None => {
            if opts.overwrite.is_some() {
                return Err(Error::usage(
                    "option 'overwrite' applies to a dest_path; restoring into this connection always replaces it",
                ));
            }
            RestoreInto::Connection {
                schema: schema.to_string(),
                busy_timeout_ms: opts.busy_timeout_ms.unwrap_or(DEFAULT_BUSY_TIMEOUT_MS),
                temp_dir: temp_dir(opts.temp_dir.as_deref()),
            }
        }
    };
    Ok(Restore {
        location,
        s3,
        quick: opts.quick.unwrap_or(false),
        into,
        progress: opts.progress,
        newest: newest.then_some(series),
        if_missing,
        missing_ok: opts.missing_ok.unwrap_or(false),
        identity_file: crypt::identity_file(opts.identity_file.as_deref()),
    })
}

// ---- backup_list, backup_prune ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListOptions {
    #[serde(rename = "match")]
    series: Option<String>,
    identity_file: Option<String>,
}

/// One backup_list call, resolved.
pub struct List {
    pub location: String,
    pub s3: S3Options,
    /// Only names in this series are listed; None: everything.
    pub series: Option<Series>,
    /// Decrypts `.age` backups to show their plaintext sha256 (option or
    /// SQLITE_BACKUP_AGE_IDENTITY_FILE); None: their sha256 is NULL.
    pub identity_file: Option<PathBuf>,
}

pub fn list(location: String, s3: S3Options, opts: ListOptions) -> Result<List> {
    allow::location(&location, "location")?;
    allow::s3_options(&s3)?;
    allow_key_file(opts.identity_file.as_deref(), "option 'identity_file'")?;
    Ok(List {
        location,
        s3,
        series: series(opts.series.as_deref())?,
        identity_file: crypt::identity_file(opts.identity_file.as_deref()),
    })
}

/// Options of backup_prune besides the policy's keep_* rules.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PruneOptions {
    #[serde(rename = "match")]
    series: Option<String>,
    dry_run: Option<bool>,
    now: Option<String>,
    utc: Option<bool>,
    identity_file: Option<String>,
}

/// The keep_* keys of backup_prune's options, decoded into `retention::Policy`.
pub const POLICY_KEYS: &[&str] = &[
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
    "keep_within",
];

/// One backup_prune call, resolved.
pub struct Prune {
    pub location: String,
    pub s3: S3Options,
    pub policy: Policy,
    pub series: Option<Series>,
    pub dry_run: bool,
    pub now: DateTime<Utc>,
    pub utc: bool,
    /// Reads the encrypted page lists of an encrypted incremental series (option or
    /// SQLITE_BACKUP_AGE_IDENTITY_FILE).
    pub identity_file: Option<PathBuf>,
}

pub fn prune(location: String, s3: S3Options, policy: Policy, opts: PruneOptions) -> Result<Prune> {
    allow::location(&location, "location")?;
    allow::s3_options(&s3)?;
    allow_key_file(opts.identity_file.as_deref(), "option 'identity_file'")?;
    Ok(Prune {
        location,
        s3,
        policy,
        series: series(opts.series.as_deref())?,
        dry_run: opts.dry_run.unwrap_or(false),
        now: clock(opts.now.as_deref())?,
        utc: opts.utc.unwrap_or(DEFAULT_UTC),
        identity_file: crypt::identity_file(opts.identity_file.as_deref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options<T: serde::de::DeserializeOwned>(json: serde_json::Value) -> T {
        serde_json::from_value(json).unwrap()
    }

    fn file(pattern: &str) -> Target {
        Target::File {
            pattern: pattern.to_string(),
        }
    }

    #[test]
    fn backup_defaults_live_here() {
        let job = backup(
            file("/tmp/db-%Y.gz"),
            options(serde_json::json!({"now": "2026-01-31T23:00:00Z", "notify": "http://127.0.0.1:9/x"})),
        )
        .unwrap();
        let notify = job.notify.unwrap();
        assert_eq!(notify.timeout, crate::notify::DEFAULT_TIMEOUT);
        let plan = job.plan.unwrap();
        assert!(plan.utc);
        assert_eq!(plan.backup.schema, "main");
        assert_eq!(plan.backup.busy_timeout_ms, 5000);
        assert!(!plan.backup.if_changed && !plan.backup.create_only);
        // The name pattern's own series when no `match` is given.
        assert!(plan.backup.series.contains("db-2025.gz"));
        assert!(!plan.backup.series.contains("db-x.gz"));
        let Destination::File { path, name } = plan.destination else {
            panic!("not a file destination");
        };
        assert_eq!(
            (path.to_str(), name.as_str()),
            (Some("/tmp/db-2026.gz"), "db-2026.gz")
        );
    }

    #[test]
    fn option_errors_wait_for_the_start_ping() {
        // A bad policy, glob or clock is the plan's error: reported after `/start`, like a
        // failed backup, so the monitor hears about a job that cannot run.
        for bad in [
            serde_json::json!({"notify": "http://127.0.0.1:9/x", "keep": {"keep_last": 0}}),
            serde_json::json!({"notify": "http://127.0.0.1:9/x", "match": "["}),
            serde_json::json!({"notify": "http://127.0.0.1:9/x", "now": "yesterday"}),
            serde_json::json!({"notify": "http://127.0.0.1:9/x", "threads": 0}),
        ] {
            let job = backup(file("/tmp/db.gz"), options(bad.clone())).unwrap();
            assert!(job.notify.is_some() && job.plan.is_err(), "{bad}");
        }
        let s3 = Target::S3 {
            bucket: "s3://b/p".into(),
            pattern: "/db.gz".into(),
            s3: Box::default(),
        };
        assert!(backup(s3, BackupOptions::default()).unwrap().plan.is_err());
    }

    #[test]
    fn prune_defaults() {
        let req = prune(
            "/tmp".into(),
            S3Options::default(),
            Policy::default(),
            PruneOptions::default(),
        )
        .unwrap();
        assert!(req.utc && !req.dry_run && req.series.is_none());
    }
}
