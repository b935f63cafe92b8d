//! Applying a retention policy to a store: list, keep only names matching the series glob,
//! plan with `retention`, delete the rest (unless it is a dry run).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::retention::{self, Policy};
use crate::store::{Entry, Store};

#[derive(Debug, Clone)]
pub struct Request {
    pub policy: Policy,
    /// Only names matching this glob are candidates; None: every backup in the location.
    pub match_glob: Option<String>,
    pub dry_run: bool,
    pub now: DateTime<Utc>,
    pub utc: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub kept: Vec<Item>,
    /// Deleted, or with `dry_run` the ones that would be.
    pub deleted: Vec<Item>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub name: String,
    pub modified: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

impl Item {
    fn new(entry: &Entry, reasons: Vec<String>) -> Item {
        Item {
            name: entry.name.clone(),
            modified: iso(entry.modified),
            reasons,
        }
    }
}

/// ISO 8601 UTC, as listings show times.
pub fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub fn run(store: &dyn Store, req: &Request) -> Result<Report> {
    // A bad policy fails before anything is listed or deleted.
    req.policy.check()?;
    let candidates = retention::select(store.list()?, req.match_glob.as_deref())?;
    let plan = retention::plan(candidates, &req.policy, req.now, req.utc)?;
    let kept = plan
        .keep
        .iter()
        .map(|k| Item::new(&k.entry, k.reasons.clone()))
        .collect();
    let mut deleted = Vec::new();
    for entry in &plan.delete {
        if !req.dry_run {
            store.delete(&entry.name).map_err(|e| {
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
            fs::write(&p, b"x").unwrap();
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
            match_glob: Some("db-*.gz".into()),
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
        fs::write(dir.path().join("db-1.gz"), b"x").unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        let req = Request {
            policy: Policy::default(),
            match_glob: None,
            dry_run: false,
            now: Utc::now(),
            utc: true,
        };
        assert!(run(&store, &req).is_err());
        assert!(dir.path().join("db-1.gz").exists());
    }
}
