//! Applying a retention policy to a store: list, keep only names in the series, set aside
//! everything that is not recognisably a backup (or is a live database's file), plan with
//! `retention`, delete the rest (unless it is a dry run). Only backups are ever deleted.

use std::collections::HashSet;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::codec;
use crate::error::{Error, Result};
use crate::incremental;
use crate::live::{self, Protected};
use crate::naming::Series;
use crate::retention::{self, Policy};
use crate::store::{Entry, Store};

#[derive(Debug, Clone)]
pub struct Request {
    pub policy: Policy,
    /// Only names in this series are candidates; None: every backup in the location.
    pub series: Option<Series>,
    pub dry_run: bool,
    pub now: DateTime<Utc>,
    pub utc: bool,
    /// The calling connection's database files: never deleted.
    pub protected: Protected,
    /// Reads the encrypted page lists of an encrypted incremental series; without it their
    /// backups are all kept (retention cannot tell what builds on what).
    pub identity: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub kept: Vec<Item>,
    /// Deleted, or with `dry_run` the ones that would be.
    pub deleted: Vec<Item>,
    /// In the series but not recognisably a backup, or a live database's file: never deleted.
    pub ignored: Vec<Item>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub name: String,
    pub modified: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// Why an ignored entry was left alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Item {
    fn new(entry: &Entry, reasons: Vec<String>) -> Item {
        Item {
            name: entry.name.clone(),
            modified: iso(entry.modified),
            reasons,
            reason: None,
        }
    }

    fn ignored(entry: &Entry, reason: String) -> Item {
        Item {
            reason: Some(reason),
            ..Item::new(entry, Vec::new())
        }
    }
}

/// ISO 8601 UTC, as listings show times.
pub fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub const NOT_A_BACKUP: &str = "not a backup";

/// How old a page list without its backup must be before pruning removes it.
const ORPHAN_AGE: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// What an entry is, for retention.
#[derive(Debug, Clone, PartialEq)]
pub enum Class {
    /// Recognisably a backup: ours by its metadata, or a SQLite stream by its first bytes.
    Backup,
    /// Not known without reading it (an S3 object without our metadata).
    Unknown,
    /// Never deleted, with the reason.
    Ignored(String),
}

/// Classifies `entries` of `store`. `listed` is every name in the location (a `-wal` beside a
/// database shows it in use). Local files are read at once (a few bytes each); S3 objects
/// without our metadata stay [`Class::Unknown`], to be read with [`sniff`] only when needed.
pub fn classify(
    store: &dyn Store,
    entries: &[Entry],
    listed: &HashSet<&str>,
    protected: &Protected,
) -> Vec<Class> {
    entries
        .iter()
        .map(|entry| {
            let name = entry.name.as_str();
            let local = store.local_path(name);
            if live::is_side_name(name) {
                return Class::Ignored("journal file".into());
            }
            if local
                .as_deref()
                .is_some_and(|p| protected.find(p).is_some())
            {
                return Class::Ignored("database of this connection".into());
            }
            let side_listed = live::SIDE_SUFFIXES
                .iter()
                .any(|s| listed.contains(format!("{name}{s}").as_str()));
            let side_on_disk = local.as_deref().and_then(live::side_file_beside).is_some();
            if side_listed || side_on_disk {
                return Class::Ignored("database in use".into());
            }
            if entry.sha256.is_some() {
                return Class::Backup; // our own metadata
            }
            if local.is_some() {
                return sniff(store, entry);
            }
            Class::Unknown
        })
        .collect()
}

/// Reads the first bytes of `entry`: a SQLite stream is a backup, anything else (or anything
/// unreadable) is ignored.
pub fn sniff(store: &dyn Store, entry: &Entry) -> Class {
    if entry.size == 0 {
        return Class::Ignored(NOT_A_BACKUP.into());
    }
    let holds = store
        .read_head(&entry.name, codec::SNIFF_LIMIT)
        .map(|mut head| {
            // An encrypted backup (`.age` name) cannot be read without its key: its age
            // header is what marks it as one.
            if crate::crypt::wanted(&entry.name) {
                crate::crypt::is_age_file(&mut head)
            } else {
                codec::holds_sqlite(&mut head)
            }
        });
    match holds {
        Ok(true) => Class::Backup,
        Ok(false) => Class::Ignored(NOT_A_BACKUP.into()),
        Err(e) => Class::Ignored(format!("{NOT_A_BACKUP} (cannot read it: {})", e.message)),
    }
}

pub fn run(store: &dyn Store, req: &Request) -> Result<Report> {
    // A bad policy fails before anything is listed or deleted.
    req.policy.check()?;
    let listing = store.list()?;
    let listed: HashSet<&str> = listing.iter().map(|e| e.name.as_str()).collect();
    // Page lists of incremental backups go with their backup; not candidates themselves.
    let (members, orphans) = incremental::page_lists_apart(
        crate::naming::select(req.series.as_ref(), listing.clone()),
        &listed,
    );
    let classes = classify(store, &members, &listed, &req.protected);
    let mut ignored = Vec::new();
    let mut candidates = Vec::new();
    let mut unknown = HashSet::new();
    for (entry, class) in members.into_iter().zip(classes) {
        match class {
            Class::Ignored(reason) => ignored.push(Item::ignored(&entry, reason)),
            Class::Unknown => {
                unknown.insert(entry.name.clone());
                candidates.push(entry);
            }
            Class::Backup => candidates.push(entry),
        }
    }
    // An unknown entry counts as a backup until the plan would delete it; only then is it
    // read. Taking out entries the plan deletes cannot change what it keeps (every rule keeps
    // from the newest down, and a deleted entry was skipped or past the count), so one plan
    // serves, and each entry is read once at most.
    let names: Vec<&str> = candidates.iter().map(|e| e.name.as_str()).collect();
    let identity = req.identity.as_deref();
    let chains = incremental::kinds(store, &names, &listed, identity)?;
    let mut plan = retention::plan(candidates, &req.policy, req.now, req.utc)?;
    incremental::keep_needed(&mut plan, &chains);
    plan.delete.retain(|entry| {
        if !unknown.contains(&entry.name) {
            return true;
        }
        // Our trailer marks it ours, as backup_list shows it: a few bytes from the end
        // instead of the first 132 KiB.
        if crate::trailer::read(store, &entry.name, entry.size).is_some() {
            return true;
        }
        match sniff(store, entry) {
            Class::Ignored(reason) => {
                ignored.push(Item::ignored(entry, reason));
                false
            }
            _ => true,
        }
    });
    ignored.sort_by(|a, b| a.name.cmp(&b.name));
    let kept = plan
        .keep
        .iter()
        .map(|k| Item::new(&k.entry, k.reasons.clone()))
        .collect();
    let mut deleted = Vec::new();
    let old_orphans = orphans.iter().filter(|e| {
        e.modified < req.now - ORPHAN_AGE && incremental::is_page_list(store, &e.name, identity)
    });
    for entry in old_orphans {
        // A page list whose backup is gone (a backup killed between its two writes); a
        // recent one may be a backup still being stored.
        if !req.dry_run {
            store.delete(&entry.name)?;
        }
        deleted.push(Item::new(entry, Vec::new()));
    }
    for entry in &plan.delete {
        if !req.dry_run {
            let pages = incremental::format::pages_name(&entry.name);
            // The backup, then its page list: a page list alone is never counted.
            let deleted_one = store.delete(&entry.name).and_then(|()| {
                if listed.contains(pages.as_str())
                    && incremental::is_page_list(store, &pages, identity)
                {
                    store.delete(&pages)
                } else {
                    Ok(())
                }
            });
            deleted_one.map_err(|e| {
                Error::new(
                    e.kind,
                    format!(
                        "deleted {} of {} old backups, then: {}",
                        deleted.len(),
                        plan.delete.len(),
                        e.message
                    ),
                )
            })?;
        }
        deleted.push(Item::new(entry, Vec::new()));
    }
    Ok(Report {
        dry_run: req.dry_run,
        kept,
        deleted,
        ignored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::FileStore;
    use chrono::TimeZone;
    use std::fs;

    #[test]
    fn prunes_only_matching_names_and_dry_run_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        for day in 1..=10u32 {
            let p = dir.path().join(format!("db-{day:02}.gz"));
            fs::write(&p, crate::dbfile::SQLITE_MAGIC).unwrap();
            let t = now - chrono::Duration::days(i64::from(day));
            fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t.into())
                .unwrap();
        }
        fs::write(dir.path().join("other.txt"), b"keep me").unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let mut req = Request {
            policy: Policy {
                keep_last: Some(3),
                ..Policy::default()
            },
            series: Some(Series::glob("db-*.gz").unwrap()),
            protected: Protected::default(),
            identity: None,
            dry_run: true,
            now,
            utc: true,
        };
        let report = run(&store, &req).unwrap();
        assert_eq!(report.kept.len(), 3);
        assert_eq!(report.deleted.len(), 7);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 11);

        req.dry_run = false;
        let report = run(&store, &req).unwrap();
        let kept: Vec<_> = report.kept.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(kept, ["db-01.gz", "db-02.gz", "db-03.gz"]);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 4);
        assert!(dir.path().join("other.txt").exists());
    }

    #[test]
    fn a_policy_that_keeps_nothing_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("db-1.gz"), crate::dbfile::SQLITE_MAGIC).unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let req = Request {
            policy: Policy::default(),
            series: None,
            protected: Protected::default(),
            identity: None,
            dry_run: false,
            now: Utc::now(),
            utc: true,
        };
        assert!(run(&store, &req).is_err());
        assert!(dir.path().join("db-1.gz").exists());
    }

    /// A store like S3: no local paths, entries may carry our metadata (sha256), and every
    /// read of an entry's first bytes is counted.
    struct Remote {
        objects: std::sync::Mutex<Vec<(Entry, Vec<u8>)>>,
        reads: std::sync::Mutex<Vec<String>>,
    }

    impl Store for Remote {
        fn url(&self, name: &str) -> String {
            format!("s3://b/{name}")
        }
        fn check_put(&self, _: &str, _: bool) -> Result<()> {
            unreachable!()
        }
        fn put(
            &self,
            _: &str,
            _: &crate::store::PutMeta,
        ) -> Result<Box<dyn crate::store::Upload + '_>> {
            unreachable!()
        }
        fn get(&self, name: &str) -> Result<Box<dyn std::io::Read + Send + '_>> {
            self.reads.lock().unwrap().push(name.to_string());
            let objects = self.objects.lock().unwrap();
            let body = objects
                .iter()
                .find(|(e, _)| e.name == name)
                .unwrap()
                .1
                .clone();
            Ok(Box::new(std::io::Cursor::new(body)))
        }
        fn head(&self, _: &str) -> Result<Option<Entry>> {
            unreachable!()
        }
        fn list(&self) -> Result<Vec<Entry>> {
            Ok(self
                .objects
                .lock()
                .unwrap()
                .iter()
                .map(|(e, _)| e.clone())
                .collect())
        }
        fn delete(&self, name: &str) -> Result<()> {
            self.objects.lock().unwrap().retain(|(e, _)| e.name != name);
            Ok(())
        }
    }

    #[test]
    fn remote_entries_without_metadata_are_read_only_when_they_would_be_deleted() {
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap();
        let sqlite = crate::dbfile::SQLITE_MAGIC.to_vec();
        let object = |name: &str, days: i64, ours: bool, body: &[u8]| {
            let entry = Entry {
                name: name.into(),
                url: format!("s3://b/{name}"),
                size: body.len() as u64,
                modified: now - chrono::Duration::days(days),
                sha256: ours.then(|| "00".into()),
            };
            (entry, body.to_vec())
        };
        let store = Remote {
            objects: std::sync::Mutex::new(vec![
                object("foreign-new.txt", 1, false, b"newest, holds the keep slot"),
                object("ours-2.gz", 2, true, b"not read"),
                object("ours-3.gz", 3, true, b"not read"),
                object("foreign-old.txt", 4, false, b"hello"),
                object("raw-old.db", 5, false, &sqlite),
                object("empty", 6, false, b""),
            ]),
            reads: Default::default(),
        };
        let req = Request {
            policy: Policy {
                keep_last: Some(2),
                ..Policy::default()
            },
            series: None,
            dry_run: false,
            now,
            utc: true,
            protected: Protected::default(),
            identity: None,
        };
        let report = run(&store, &req).unwrap();
        let names = |items: &[Item]| items.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&report.kept), ["foreign-new.txt", "ours-2.gz"]);
        assert_eq!(names(&report.deleted), ["ours-3.gz", "raw-old.db"]);
        assert_eq!(names(&report.ignored), ["empty", "foreign-old.txt"]);
        assert_eq!(report.ignored[1].reason.as_deref(), Some(NOT_A_BACKUP));
        // Read: only the entries without metadata that the plan would delete (not the empty
        // one, nor the kept one, nor ours).
        let mut reads = store.reads.lock().unwrap().clone();
        reads.sort();
        assert_eq!(reads, ["foreign-old.txt", "raw-old.db"]);
        let left: Vec<_> = store.list().unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(
            left,
            ["foreign-new.txt", "ours-2.gz", "foreign-old.txt", "empty"]
        );
    }
}
