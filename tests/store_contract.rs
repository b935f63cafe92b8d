//! One contract every `Store` keeps, run against each store: a directory (FileStore on a temp
//! dir) and S3 (S3Store on the local s3s-fs), the way restic runs one suite over every backend.
//! A new store is done when `contract` passes against it.
//!
//! What it checks: an upload is invisible until commit; abort (or drop) leaves nothing and
//! keeps a previous backup of the name; `create_only` is refused by `check_put` and at commit;
//! list/get/head/delete agree; a missing name is `None` for head and `NotFound` for get and
//! delete; the store's location may be nested; a large (multipart) upload round-trips.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use chrono::{TimeZone, Utc};
use common::s3server::S3Server;
use common::{sha256_hex, tempdir};
use sqlite_backup::error::{Kind, Result};
use sqlite_backup::store::file::FileStore;
use sqlite_backup::store::s3::S3Store;
use sqlite_backup::store::{Entry, PutMeta, Sha256Cell, Store, Stored, Upload};

/// s3s-fs, like AWS, refuses parts below 5 MiB (other than the last).
const PART: u64 = 5 << 20;

/// What differs between stores, and how to look behind one.
struct Subject<'a> {
    label: &'static str,
    /// The location's URL, which every `url` starts with (then the name).
    base: String,
    /// Names with '/' are keys below the location (S3); a directory holds file names only.
    nested_names: bool,
    /// Requests the large upload must take (S3 parts; a directory writes one file).
    large_parts: u32,
    /// Every name physically present at the location, hidden and temporary ones included,
    /// sorted: what "leaves nothing" is checked against.
    everything: &'a dyn Fn() -> Vec<String>,
}

fn meta(create_only: bool) -> PutMeta {
    PutMeta {
        sha256: Sha256Cell::ready("ab".repeat(32)),
        backup_time: Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, 0).unwrap(),
        create_only,
        temp_dir: std::env::temp_dir(),
    }
}

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0; len];
    fastrand::Rng::with_seed(seed).fill(&mut out);
    out
}

/// Streams `body` in 64 KiB writes, as the compressor would, and commits.
fn put(store: &dyn Store, name: &str, body: &[u8], create_only: bool) -> Result<Stored> {
    let mut up = store.put(name, &meta(create_only))?;
    for chunk in body.chunks(64 << 10) {
        up.write_all(chunk)
            .map_err(|e| sqlite_backup::error::Error::io("write", e))?;
    }
    up.commit()
}

fn get(store: &dyn Store, name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    store
        .get(name)
        .unwrap_or_else(|e| panic!("get {name}: {e}"))
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn names(store: &dyn Store) -> Vec<String> {
    let mut names: Vec<String> = store.list().unwrap().into_iter().map(|e| e.name).collect();
    names.sort();
    names
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    names.sort();
    names
}

#[track_caller]
fn assert_missing(store: &dyn Store, name: &str, ctx: &str) {
    assert!(store.head(name).unwrap().is_none(), "{ctx}: head {name}");
    let err = store.get(name).err().expect("get of a missing name");
    assert_eq!(err.kind, Kind::NotFound, "{ctx}: get {name}: {err}");
    assert!(!names(store).contains(&name.to_string()), "{ctx}: listed");
}

/// The contract. The store must be empty at its location.
fn contract(store: &dyn Store, s: &Subject) {
    let ctx = s.label;
    assert!(names(store).is_empty(), "{ctx}: not empty");
    assert!((s.everything)().is_empty(), "{ctx}: {:?}", (s.everything)());

    // A missing name: no entry, NotFound to read or delete, free to write.
    assert_missing(store, "db-1.gz", ctx);
    let err = store.delete("db-1.gz").unwrap_err();
    assert_eq!(err.kind, Kind::NotFound, "{ctx}: delete: {err}");
    store.check_put("db-1.gz", true).unwrap();
    store.check_put("db-1.gz", false).unwrap();

    // An upload is invisible until commit.
    let first = data(300_000, 1);
    let mut up = store.put("db-1.gz", &meta(false)).unwrap();
    up.write_all(&first).unwrap();
    assert_missing(store, "db-1.gz", &format!("{ctx}, before commit"));
    let stored = up.commit().unwrap();
    assert_eq!(stored.url, format!("{}db-1.gz", s.base), "{ctx}");
    assert_eq!(stored.url, store.url("db-1.gz"), "{ctx}");
    assert_eq!(stored.parts, 1, "{ctx}");

    // list, head and get agree on what was committed.
    let head: Entry = store.head("db-1.gz").unwrap().expect("committed");
    assert_eq!(head.name, "db-1.gz", "{ctx}");
    assert_eq!(head.url, stored.url, "{ctx}");
    assert_eq!(head.size, first.len() as u64, "{ctx}");
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1, "{ctx}: {listed:?}");
    assert_eq!(listed[0].name, head.name, "{ctx}");
    assert_eq!(listed[0].url, head.url, "{ctx}");
    assert_eq!(listed[0].size, head.size, "{ctx}");
    assert_eq!(listed[0].modified, head.modified, "{ctx}");
    assert_eq!(listed[0].sha256, head.sha256, "{ctx}");
    assert_eq!(get(store, "db-1.gz"), first, "{ctx}");
    assert_eq!((s.everything)(), ["db-1.gz"], "{ctx}: after commit");

    // Abort, and dropping an upload, leave nothing, not even over an existing name.
    let mut up = store.put("db-2.gz", &meta(false)).unwrap();
    up.write_all(&data(200_000, 2)).unwrap();
    up.abort();
    let mut up = store.put("db-1.gz", &meta(false)).unwrap();
    up.write_all(&data(200_000, 3)).unwrap();
    up.abort();
    {
        let mut up = store.put("db-3.gz", &meta(false)).unwrap();
        up.write_all(&data(1000, 4)).unwrap();
    }
    assert_missing(store, "db-2.gz", &format!("{ctx}, aborted"));
    assert_missing(store, "db-3.gz", &format!("{ctx}, dropped"));
    assert_eq!(
        get(store, "db-1.gz"),
        first,
        "{ctx}: abort touched the old one"
    );
    assert_eq!(names(store), ["db-1.gz"], "{ctx}");
    assert_eq!((s.everything)(), ["db-1.gz"], "{ctx}: after aborts");

    // create_only: refused up front and at commit; the existing backup stays.
    let err = store.check_put("db-1.gz", true).unwrap_err();
    assert_eq!(err.kind, Kind::Exists, "{ctx}: check_put: {err}");
    assert!(
        err.message.contains(&format!(
            "{} already exists and create_only is set",
            stored.url
        )),
        "{ctx}: {err}"
    );
    store.check_put("db-1.gz", false).unwrap();
    let err = put(store, "db-1.gz", &data(1000, 5), true).unwrap_err();
    assert_eq!(err.kind, Kind::Exists, "{ctx}: commit: {err}");
    assert_eq!(
        get(store, "db-1.gz"),
        first,
        "{ctx}: create_only replaced it"
    );
    assert_eq!((s.everything)(), ["db-1.gz"], "{ctx}: after create_only");

    // Without create_only a commit replaces the backup whole.
    let second = data(100_000, 6);
    put(store, "db-1.gz", &second, false).unwrap();
    assert_eq!(get(store, "db-1.gz"), second, "{ctx}: replaced");
    assert_eq!(store.head("db-1.gz").unwrap().unwrap().size, 100_000);

    // Several names; delete removes exactly one, and a second delete is NotFound.
    put(store, "db-2.gz", b"two", false).unwrap();
    assert_eq!(names(store), ["db-1.gz", "db-2.gz"], "{ctx}");
    store.delete("db-1.gz").unwrap();
    assert_missing(store, "db-1.gz", &format!("{ctx}, deleted"));
    assert_eq!(names(store), ["db-2.gz"], "{ctx}");
    assert_eq!(get(store, "db-2.gz"), b"two", "{ctx}");
    let err = store.delete("db-1.gz").unwrap_err();
    assert_eq!(err.kind, Kind::NotFound, "{ctx}: delete twice: {err}");

    // Names below the location (S3 keys with '/'): listed by their full name below it.
    if s.nested_names {
        put(store, "sub/deeper/db-4.gz", b"four", false).unwrap();
        assert_eq!(names(store), ["db-2.gz", "sub/deeper/db-4.gz"], "{ctx}");
        let entry = store.head("sub/deeper/db-4.gz").unwrap().unwrap();
        assert_eq!(entry.url, format!("{}sub/deeper/db-4.gz", s.base), "{ctx}");
        assert_eq!(get(store, "sub/deeper/db-4.gz"), b"four", "{ctx}");
        assert_missing(store, "sub/db-4.gz", &format!("{ctx}, nested"));
        store.delete("sub/deeper/db-4.gz").unwrap();
        assert_missing(store, "sub/deeper/db-4.gz", &format!("{ctx}, nested"));
    }

    // A large upload (S3: several parts) round-trips byte for byte.
    let large = data(2 * PART as usize + 1, 7);
    let stored = put(store, "large.gz", &large, false).unwrap();
    assert_eq!(stored.parts, s.large_parts, "{ctx}");
    assert_eq!(
        store.head("large.gz").unwrap().unwrap().size,
        large.len() as u64
    );
    assert_eq!(
        sha256_hex(&get(store, "large.gz")),
        sha256_hex(&large),
        "{ctx}: large"
    );
    assert_eq!(names(store), ["db-2.gz", "large.gz"], "{ctx}");
    assert_eq!(
        (s.everything)(),
        sorted(&["db-2.gz", "large.gz"]),
        "{ctx}: at the end"
    );
}

/// Every file below `dir` (hidden ones too), relative to it, sorted.
fn walk(dir: &Path) -> Vec<String> {
    fn go(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                go(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap();
                out.push(rel.to_str().unwrap().to_string());
            }
        }
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn a_directory_keeps_the_store_contract() {
    let tmp = tempdir();
    let dir: PathBuf = tmp.path().join("a/b");
    std::fs::create_dir_all(&dir).unwrap();
    let store = FileStore::open(&dir).unwrap();
    let everything = || walk(&dir);
    contract(
        &store,
        &Subject {
            label: "directory",
            base: format!("{}/", dir.display()),
            nested_names: false,
            large_parts: 1,
            everything: &everything,
        },
    );
}

#[test]
fn s3_keeps_the_store_contract() {
    let server = S3Server::start();
    server.create_bucket("bkt");
    let mut opts = server.options();
    opts.part_size = Some(PART);
    let store = S3Store::open_with_env("bkt", "a/b", &opts, &server.env()).unwrap();
    let prefix = server.root().join("bkt").join("a/b");
    // Objects under the prefix, and multipart uploads s3s-fs has not completed or aborted.
    let everything = || {
        let mut all = walk(&prefix);
        all.extend(server.incomplete_uploads());
        all.sort();
        all
    };
    contract(
        &store,
        &Subject {
            label: "s3",
            base: "s3://bkt/a/b/".to_string(),
            nested_names: true,
            large_parts: 3,
            everything: &everything,
        },
    );
}

/// A directory whose uploads break the contract: abort commits instead of discarding.
struct CommitsOnAbort(FileStore);

struct Committing<'a>(Box<dyn Upload + 'a>);

impl Write for Committing<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Upload for Committing<'_> {
    fn commit(self: Box<Self>) -> Result<Stored> {
        self.0.commit()
    }
    fn abort(self: Box<Self>) {
        let _ = self.0.commit();
    }
}

impl Store for CommitsOnAbort {
    fn url(&self, name: &str) -> String {
        self.0.url(name)
    }
    fn check_put(&self, name: &str, create_only: bool) -> Result<()> {
        self.0.check_put(name, create_only)
    }
    fn put(&self, name: &str, meta: &PutMeta) -> Result<Box<dyn Upload + '_>> {
        Ok(Box::new(Committing(self.0.put(name, meta)?)))
    }
    fn get(&self, name: &str) -> Result<Box<dyn Read + Send + '_>> {
        self.0.get(name)
    }
    fn head(&self, name: &str) -> Result<Option<Entry>> {
        self.0.head(name)
    }
    fn list(&self) -> Result<Vec<Entry>> {
        self.0.list()
    }
    fn delete(&self, name: &str) -> Result<()> {
        self.0.delete(name)
    }
}

/// The contract is not vacuous: a store that keeps aborted uploads fails it.
#[test]
fn the_contract_fails_a_store_that_keeps_aborted_uploads() {
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let store = CommitsOnAbort(FileStore::open(&dir).unwrap());
    let everything = || walk(&dir);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        contract(
            &store,
            &Subject {
                label: "commits on abort",
                base: format!("{}/", dir.display()),
                nested_names: false,
                large_parts: 1,
                everything: &everything,
            },
        )
    }));
    let message = outcome.expect_err("the contract passed a broken store");
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(text.contains("aborted"), "{text}");
}
