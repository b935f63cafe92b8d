//! The jobs the SQL functions run, one each, from a resolved request (`request.rs`) to a
//! typed result. A backup job is: ping `/start`, open the store and refuse a destination
//! that would overwrite a live database, the pipeline (`backup.rs`: snapshot → codec →
//! store), `keep` on its series, ping the result. Its error policy: options (a bad `keep`
//! policy among them) fail before any work; a failed ping never fails a good backup; a
//! pruning failure after a stored backup is an error that says the backup was stored.

use std::path::PathBuf;

use serde::Serialize;

use crate::backup::{self, Report};
use crate::error::{Error, Kind, Result};
use crate::ffi::Connection;
use crate::live::{self, Protected};
use crate::naming;
use crate::notify::{Notifier, Ping};
use crate::prune::{self, Class};
use crate::request::{self, Destination, Plan, RestoreInto};
use crate::restore;
use crate::store::file::FileStore;
use crate::store::s3::S3Store;
use crate::store::{open_backup, open_location, Entry, Store};
use crate::temp::parent_dir;
use crate::verify;

/// What a backup job returns: the pipeline's report, with what `keep` pruned and the pings.
#[derive(Debug, Serialize)]
pub struct Outcome {
    #[serde(flatten)]
    pub report: Report,
    /// Incremental backups: kind, base, changed pages (`incremental::Info`).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<crate::incremental::Info>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned: Option<prune::Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify: Option<Pings>,
}

/// The pings sent around one backup.
#[derive(Debug, Serialize)]
pub struct Pings {
    pub start: Option<Ping>,
    pub result: Ping,
}

/// backup_to_file and backup_to_s3: the backup between its monitoring pings (when `notify`
/// is set). The backup's own error is returned unchanged after the failure ping.
pub fn backup(conn: &Connection, job: request::Backup) -> Result<Outcome> {
    let Some(notify) = job.notify else {
        return stored(conn, job.plan?);
    };
    let notifier = if notify.confined {
        Notifier::confined(&notify.url, notify.style, notify.timeout)?
    } else {
        Notifier::new(&notify.url, notify.style, notify.timeout)?
    };
    let started = notifier.start();
    match job.plan.and_then(|plan| stored(conn, plan)) {
        Ok(mut outcome) => {
            let report = &outcome.report;
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
            let result = notifier.success(&message);
            outcome.notify = Some(Pings {
                start: started,
                result,
            });
            Ok(outcome)
        }
        Err(e) => {
            notifier.failure(&e.message);
            Err(e)
        }
    }
}

/// Opens the destination's store, then the backup and `keep`.
fn stored(conn: &Connection, plan: Plan) -> Result<Outcome> {
    let req = &plan.backup;
    match &plan.destination {
        Destination::File { path, name } => {
            let store = FileStore::open(parent_dir(path))?;
            // Fails early, before the snapshot, when the schema does not exist.
            conn.filename(&req.schema)?;
            let live = protected(conn)?.with_source(&req.schema);
            live::refuse_live_file(&live, path)?;
            live::refuse_in_use(path)?;
            backup_and_keep(conn, &store, name, &plan)
        }
        Destination::S3 {
            bucket,
            prefix,
            name,
            s3,
        } => {
            let store = S3Store::open(bucket, prefix, s3)?;
            backup_and_keep(conn, &store, name, &plan)
        }
    }
}

/// The backup, then `keep` applied to its series.
fn backup_and_keep(
    conn: &Connection,
    store: &dyn Store,
    name: &str,
    plan: &Plan,
) -> Result<Outcome> {
    let req = &plan.backup;
    let (report, incremental) = match &plan.incremental {
        Some(opts) => crate::incremental::run(conn, store, name, req, opts)?,
        None => (backup::run(conn, store, name, req)?, None),
    };
    let pruned = match &plan.keep {
        None => None,
        Some(policy) => {
            let request = prune::Request {
                policy: policy.clone(),
                series: Some(req.series.clone()),
                dry_run: false,
                now: req.time,
                utc: plan.utc,
                protected: protected(conn)?,
                identity: req.identity_file.clone(),
            };
            let pruned = prune::run(store, &request).map_err(|e| {
                e.context(format!(
                    "the backup was stored at {}, but pruning failed",
                    report.destination
                ))
            })?;
            Some(pruned)
        }
    };
    Ok(Outcome {
        report,
        incremental,
        pruned,
        notify: None,
    })
}

/// verify_backup: download, decompress, check; on the caller's connection, which may hold
/// the collations and functions the schema needs.
pub fn verify(conn: &Connection, req: &request::Verify) -> Result<verify::Report> {
    let (store, name) = open_backup(&req.location, &req.s3)?;
    let checked = verify::fetch_checked(
        store.as_ref(),
        &name,
        &req.temp_dir,
        req.quick,
        Some(conn),
        req.identity_file.as_deref(),
    )?;
    Ok(checked.report)
}

/// restore_backup: into a file (never over one of this connection's databases or a live
/// database's journal) or into the connection itself. With `if_missing` an existing file, and
/// with `missing_ok` a location without a backup, are not errors: nothing is done and the
/// answer says why (a container's start-up restore).
pub fn restore(conn: &Connection, req: &request::Restore) -> Result<restore::Outcome> {
    if let (RestoreInto::File { path, .. }, true) = (&req.into, req.if_missing) {
        // Checked first: an existing database is not even looked at, nor the store opened.
        if std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
            return Ok(restore::Outcome::skipped(format!(
                "{} exists",
                path.display()
            )));
        }
    }
    let (store, name) = match &req.newest {
        None => open_backup(&req.location, &req.s3)?,
        Some(series) => {
            let store = open_location(&req.location, &req.s3)?;
            match newest(conn, store.as_ref(), series.as_ref())? {
                Some(name) => (store, name),
                None if req.missing_ok => return Ok(restore::Outcome::skipped("no backup")),
                None => {
                    let matching = series
                        .as_ref()
                        .map(|_| " matching option 'match'")
                        .unwrap_or_default();
                    return Err(Error::new(
                        Kind::NotFound,
                        format!(
                            "there is no backup{matching} in {}: pass '{{\"missing_ok\": true}}' \
                             when that is expected (a first deployment)",
                            req.location
                        ),
                    ));
                }
            }
        }
    };
    if req.missing_ok && store.head(&name)?.is_none() {
        return Ok(restore::Outcome::skipped("no backup"));
    }
    let report = match &req.into {
        RestoreInto::File { path, overwrite } => {
            live::refuse_live_file(&protected(conn)?, path)?;
            let identity = req.identity_file.as_deref();
            restore::to_file(
                store.as_ref(),
                &name,
                path,
                *overwrite,
                req.quick,
                conn,
                identity,
            )
        }
        RestoreInto::Connection {
            schema,
            busy_timeout_ms,
            temp_dir,
        } => restore::into_connection(
            conn,
            schema,
            store.as_ref(),
            &name,
            *busy_timeout_ms,
            temp_dir,
            req.quick,
            req.identity_file.as_deref(),
        ),
    }?;
    Ok(restore::Outcome::Restored(report))
}

/// The newest backup of `store` in `series`, in backup_list's order; names that are not a
/// backup (a live database, a `-wal`, a foreign file or object) are passed over.
fn newest(
    conn: &Connection,
    store: &dyn Store,
    series: Option<&naming::Series>,
) -> Result<Option<String>> {
    let listing = store.list()?;
    let mut rows = naming::select(series, listing.clone());
    rows.sort_by(crate::retention::newest_first);
    let listed = listing.iter().map(|e| e.name.as_str()).collect();
    let classes = prune::classify(store, &rows, &listed, &protected(conn)?);
    for (entry, class) in rows.into_iter().zip(classes) {
        // An S3 object without our metadata is read (its first bytes) only when it would win.
        let class = match class {
            Class::Unknown => prune::sniff(store, &entry),
            known => known,
        };
        if matches!(class, Class::Backup) {
            return Ok(Some(entry.name));
        }
    }
    Ok(None)
}

/// backup_list: the location's entries in the series, newest first, each classified
/// (a backup, never deleted by retention, or unknown without reading it), with the kind and
/// base of an incremental series' backups (read from their page lists, which are not rows
/// unless their backup is gone).
pub fn list(conn: &Connection, req: &request::List) -> Result<Vec<(Entry, Class, Option<Link>)>> {
    let store = open_location(&req.location, &req.s3)?;
    let listing = store.list()?;
    let listed = listing.iter().map(|e| e.name.as_str()).collect();
    let (mut rows, orphans) = crate::incremental::page_lists_apart(
        naming::select(req.series.as_ref(), listing.clone()),
        &listed,
    );
    // Newest first: the order a person looking for the latest backup wants, and prune's.
    rows.sort_by(crate::retention::newest_first);
    // The sha256 a backup records in its trailer, when the store keeps none (a one-pass S3
    // backup): shown, and it marks the object as ours as the metadata would.
    crate::trailer::fill(store.as_ref(), &mut rows);
    let classes = prune::classify(store.as_ref(), &rows, &listed, &protected(conn)?);
    let mut rows: Vec<(Entry, Class)> = rows.into_iter().zip(classes).collect();
    if let Some(identity) = &req.identity_file {
        plaintext_sha256(store.as_ref(), &mut rows, identity, &listed)?;
    }
    let mut out: Vec<(Entry, Class, Option<Link>)> = rows
        .into_iter()
        .map(|(mut entry, class)| {
            let mut link = crate::incremental::link_of(
                store.as_ref(),
                &entry.name,
                &listed,
                req.identity_file.as_deref(),
            );
            if let Some(sha256) = link.as_mut().and_then(|l| l.sha256.take()) {
                entry.sha256 = Some(sha256);
            }
            (entry, class, link)
        })
        .collect();
    for orphan in orphans {
        let why = "page list of an incremental backup that is not there".to_string();
        out.push((orphan, Class::Ignored(why), None));
    }
    Ok(out)
}

/// With an identity, the sha256 of an encrypted (`.age`) backup is its plaintext's, the one
/// its backup call reported: each is decrypted, decompressed and hashed, streaming. One the key
/// does not open (an older key) or a damaged one keeps NULL (verify_backup says what is wrong);
/// a key that opens none of them is most likely the wrong file, and an error.
fn plaintext_sha256(
    store: &dyn Store,
    rows: &mut [(Entry, Class)],
    identity: &std::path::Path,
    listed: &std::collections::HashSet<&str>,
) -> Result<()> {
    let mut key_checked = false;
    let mut opened = 0usize;
    let mut refused: Option<Error> = None;
    for (entry, class) in rows.iter_mut() {
        // A backup of an incremental series: its page list has the database's sha256.
        let chained = listed.contains(crate::incremental::format::pages_name(&entry.name).as_str());
        let candidate = crate::crypt::wanted(&entry.name)
            && entry.sha256.is_none()
            && !chained
            && !matches!(class, Class::Ignored(_));
        if !candidate {
            continue;
        }
        // A bad key file is one error, before any backup is read.
        if !key_checked {
            crate::crypt::check_identity_file(identity)?;
            key_checked = true;
        }
        // An S3 object without our metadata: only an age file is decrypted and hashed (its
        // first bytes tell), never another tool's object that happens to end in `.age`.
        if matches!(class, Class::Unknown) && prune::sniff(store, entry) != Class::Backup {
            continue;
        }
        match backup::content_sha256(store, &entry.name, Some(identity)) {
            Ok(hex) => {
                entry.sha256 = Some(hex);
                opened += 1;
            }
            Err(e) if e.kind == Kind::Interrupted => return Err(e),
            Err(e) if e.kind == Kind::Auth => {
                refused.get_or_insert(e);
            }
            Err(_) => {}
        }
    }
    match refused {
        Some(e) if opened == 0 => Err(e.context(format!(
            "identity_file {} opens none of the encrypted backups listed",
            identity.display()
        ))),
        _ => Ok(()),
    }
}

/// What backup_list shows of an incremental series' backup.
pub struct Link {
    pub kind: &'static str,
    /// The backup it builds on (none for a full).
    pub base: Option<String>,
    /// The database's sha256, from an encrypted page list read with identity_file (an
    /// incremental's object holds pages, not the database, so hashing it would be wrong).
    pub sha256: Option<String>,
}

/// backup_prune: the policy applied to the location.
pub fn prune(conn: &Connection, req: &request::Prune) -> Result<prune::Report> {
    let store = open_location(&req.location, &req.s3)?;
    prune::run(
        store.as_ref(),
        &prune::Request {
            policy: req.policy.clone(),
            series: req.series.clone(),
            dry_run: req.dry_run,
            now: req.now,
            utc: req.utc,
            protected: protected(conn)?,
            identity: req.identity_file.clone(),
        },
    )
}

/// The calling connection's database files, every schema (`PRAGMA database_list`): a backup
/// never lands on one and retention never deletes one.
fn protected(conn: &Connection) -> Result<Protected> {
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
