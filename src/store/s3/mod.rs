//! Backups under an S3 prefix, over any S3-compatible server.
//!
//! rusty-s3 signs (SigV4 presigned URLs) and parses XML; ureq sends. One concern per file:
//! `config` (options > environment > shared files, resolved once), `aws_files` (reading
//! `~/.aws/{credentials,config}`), `credentials` (credential_process, web identity, container
//! endpoint, IMDS, and refreshing what they give before it expires), `request` (every S3 request: action → signed request → typed answer),
//! `client` (transport: the one retry loop, timeouts), `errors` (answers → messages), `upload`
//! (single PUT or multipart: the part state machine, with its `spool` and worker `pool`),
//! `download` (resumable GET).
//! Semantics mirror the directory store: an upload is invisible until `commit`, and `abort` or
//! a failure leaves nothing behind (no object, no incomplete multipart upload).

mod aws_files;
mod client;
mod config;
mod credentials;
mod download;
mod errors;
mod request;
mod sse;
mod upload;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub use config::{Environment, S3Options, BACKOFF_ENV, OPTION_KEYS};

use client::Client;
use errors::Target;
use request::Range;

use super::{check_bucket_name, Entry, PutMeta, Store, Upload};
use crate::error::{Error, Kind, Result};

/// HEADs run in parallel when listing, to fill in sha256 and backup time.
const LIST_HEAD_THREADS: usize = 8;

pub struct S3Store {
    client: Arc<Client>,
    bucket: String,
    /// Without leading or trailing '/'; empty for the bucket's root.
    prefix: String,
    sizes: upload::Sizes,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.client.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// A store over `s3://bucket/prefix`, configured from `opts`, then the process environment
    /// and `~/.aws/{credentials,config}`. Sends no request: a wrong bucket or key shows up at
    /// the first operation.
    pub fn open(bucket: &str, prefix: &str, opts: &S3Options) -> Result<S3Store> {
        S3Store::open_with_env(bucket, prefix, opts, &Environment::from_process()?)
    }

    /// Like `open`, with an explicit environment instead of the process's (tests, embedding).
    pub fn open_with_env(
        bucket: &str,
        prefix: &str,
        opts: &S3Options,
        env: &Environment,
    ) -> Result<S3Store> {
        check_bucket_name(bucket)?;
        let prefix = prefix.trim_matches('/').to_string();
        if !prefix.is_empty() {
            check_key(&prefix).map_err(|e| e.context(format!("prefix '{prefix}'")))?;
        }
        let cfg = config::resolve(opts, env, bucket)?;
        let client = Client::new(bucket, &cfg)?;
        Ok(S3Store {
            client: Arc::new(client),
            bucket: bucket.to_string(),
            prefix,
            sizes: upload::Sizes {
                part_size: cfg.part_size,
                threshold: cfg.multipart_threshold,
                concurrency: cfg.concurrency,
            },
        })
    }

    /// The object key of `name`: the prefix and the name joined by one '/'.
    pub fn key(&self, name: &str) -> Result<String> {
        check_name(name)?;
        let key = join_key(&self.prefix, name);
        check_key(&key)?;
        Ok(key)
    }

    fn target(&self, key: &str, create_only: bool) -> Target {
        Target {
            bucket: self.bucket.clone(),
            url: format!("s3://{}/{}", self.bucket, key),
            create_only,
        }
    }

    /// Every key below the prefix, with its size and last-modified time from the listing.
    fn list_keys(&self) -> Result<Vec<(String, u64, Option<String>)>> {
        let list_prefix = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let target = self.target(&self.prefix, false);
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_page(&list_prefix, token.as_deref(), &target)?;
            for item in page.contents {
                keys.push((item.key, item.size.unwrap_or(0), item.last_modified));
            }
            match page.next_continuation_token {
                Some(next) if Some(&next) != token.as_ref() => token = Some(next),
                _ => break,
            }
        }
        Ok(keys)
    }

    /// HeadObject on a key: `None` when it does not exist.
    fn head_key(&self, name: &str, key: &str) -> Result<Option<Entry>> {
        let head = self.client.head_object(key, &self.target(key, false))?;
        Ok(head.map(|head| Entry {
            name: name.to_string(),
            url: self.url(name),
            size: head.size,
            modified: head.modified,
            sha256: head.sha256,
        }))
    }
}

/// (name, key) for each listed key that is a backup: "directory" markers (keys ending in '/')
/// and keys no name could produce are skipped.
fn names_under(prefix: &str, keys: impl Iterator<Item = String>) -> Vec<(String, String)> {
    let strip = if prefix.is_empty() {
        0
    } else {
        prefix.len() + 1
    };
    keys.filter(|key| !key.ends_with('/'))
        .filter_map(|key| {
            let name = key.get(strip..)?.to_string();
            check_name(&name).is_ok().then_some((name, key))
        })
        .collect()
}

fn join_key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

/// Names become URL paths: `.`/`..` segments would be resolved away (another key, or with
/// path-style another bucket), an empty name would address the bucket itself.
fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::usage("the name is empty"));
    }
    if key.len() > 1024 {
        return Err(Error::usage("the key is longer than S3's 1024 bytes"));
    }
    if key
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err(Error::usage(format!(
            "'{key}' has a '.' or '..' path segment"
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(Error::usage(format!(
            "'{}' contains control characters",
            key.escape_default()
        )));
    }
    Ok(())
}

fn check_name(name: &str) -> Result<()> {
    check_key(name)?;
    if name.starts_with('/') || name.ends_with('/') {
        return Err(Error::usage(format!(
            "'{name}' is not a file name: it starts or ends with '/'"
        )));
    }
    Ok(())
}

impl Store for S3Store {
    fn url(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket, join_key(&self.prefix, name))
    }

    fn check_put(&self, name: &str, create_only: bool) -> Result<()> {
        let key = self.key(name)?;
        if create_only && self.head_key(name, &key)?.is_some() {
            return Err(Error::new(
                Kind::Exists,
                format!("{} already exists and create_only is set", self.url(name)),
            ));
        }
        Ok(())
    }

    fn put(&self, name: &str, meta: &PutMeta) -> Result<Box<dyn Upload + '_>> {
        let key = self.key(name)?;
        let target = self.target(&key, meta.create_only);
        Ok(Box::new(upload::S3Upload::new(
            Arc::clone(&self.client),
            key,
            target,
            meta.clone(),
            self.sizes,
        )))
    }

    fn get(&self, name: &str) -> Result<Box<dyn std::io::Read + Send + '_>> {
        let key = self.key(name)?;
        let target = self.target(&key, false);
        Ok(Box::new(download::Download::open(
            Arc::clone(&self.client),
            key,
            target,
        )?))
    }

    fn head(&self, name: &str) -> Result<Option<Entry>> {
        let key = self.key(name)?;
        self.head_key(name, &key)
    }

    fn list(&self) -> Result<Vec<Entry>> {
        let keys = names_under(
            &self.prefix,
            self.list_keys()?.into_iter().map(|(key, _, _)| key),
        );

        // HEAD each key from a few threads: the listing has no user metadata.
        let next = AtomicUsize::new(0);
        let results: Mutex<Vec<Option<Result<Option<Entry>>>>> =
            Mutex::new((0..keys.len()).map(|_| None).collect());
        let started = std::thread::scope(|scope| {
            let mut started = Ok(0);
            for _ in 0..LIST_HEAD_THREADS.min(keys.len()) {
                let spawned = crate::threads::spawn_scoped(scope, "s3-head", || loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((name, key)) = keys.get(i) else {
                        return;
                    };
                    let result = self.head_key(name, key);
                    let failed = result.is_err();
                    if let Some(slot) = results.lock().ok().as_mut().and_then(|s| s.get_mut(i)) {
                        *slot = Some(result);
                    }
                    if failed {
                        next.store(keys.len(), Ordering::SeqCst); // stop the others early
                        return;
                    }
                });
                // One thread is enough to HEAD every key; none is an error, not "no entries".
                match (spawned, &mut started) {
                    (Ok(_), Ok(n)) => *n += 1,
                    (Err(e), Ok(0)) => started = Err(e),
                    _ => break,
                }
            }
            started
        });
        started?;
        let mut entries = Vec::new();
        let slots = results
            .into_inner()
            .map_err(|_| Error::new(Kind::Remote, "a listing thread failed"))?;
        for slot in slots.into_iter().flatten() {
            // None: deleted between the listing and the HEAD.
            if let Some(entry) = slot? {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    fn read_head(&self, name: &str, limit: u64) -> Result<Box<dyn std::io::Read + Send + '_>> {
        let key = self.key(name)?;
        let range = Range {
            from: 0,
            to: Some(limit.saturating_sub(1)),
            if_match: None,
        };
        let response = self
            .client
            .get_object(&key, &range, &self.target(&key, false))?;
        // A server that ignores the range still gets read no further than `limit`.
        Ok(Box::new(std::io::Read::take(
            response.into_body().into_reader(),
            limit,
        )))
    }

    fn read_tail(&self, name: &str, size: u64, limit: u64) -> Result<Vec<u8>> {
        let key = self.key(name)?;
        if size == 0 || limit == 0 {
            return Ok(Vec::new());
        }
        let range = Range {
            from: size.saturating_sub(limit),
            to: Some(size - 1),
            if_match: None,
        };
        let response = self
            .client
            .get_object(&key, &range, &self.target(&key, false))?;
        let mut tail = Vec::new();
        // A server that ignores the range is read no further than `limit`: then the bytes are
        // not the tail, and no trailer is found in them.
        std::io::Read::read_to_end(
            &mut std::io::Read::take(response.into_body().into_reader(), limit),
            &mut tail,
        )
        .map_err(|e| Error::io(format!("cannot read {}", self.url(name)), e))?;
        Ok(tail)
    }

    fn delete(&self, name: &str) -> Result<()> {
        let key = self.key(name)?;
        // S3 deletes missing keys silently; the directory store says NotFound, so do we.
        if self.head_key(name, &key)?.is_none() {
            return Err(Error::new(
                Kind::NotFound,
                format!("{} does not exist", self.url(name)),
            ));
        }
        self.client.delete_object(&key, &self.target(&key, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(prefix: &str, endpoint: &str, path_style: Option<bool>) -> S3Store {
        let opts = S3Options {
            endpoint: Some(endpoint.into()),
            access_key_id: Some("AKID".into()),
            secret_access_key: Some("SECRETVALUE".into()),
            path_style,
            ..S3Options::default()
        };
        S3Store::open_with_env("bkt", prefix, &opts, &Environment::empty()).unwrap()
    }

    #[test]
    fn keys_join_prefix_and_name() {
        let s = store("a/b", "http://127.0.0.1:9", None);
        assert_eq!(s.key("db.gz").unwrap(), "a/b/db.gz");
        assert_eq!(s.url("db.gz"), "s3://bkt/a/b/db.gz");
        let s = store("/a/b/", "http://127.0.0.1:9", None);
        assert_eq!(s.key("db.gz").unwrap(), "a/b/db.gz");
        let s = store("", "http://127.0.0.1:9", None);
        assert_eq!(s.key("db.gz").unwrap(), "db.gz");
        assert_eq!(s.url("db.gz"), "s3://bkt/db.gz");
        for bad in ["", "../x", "a/./b", "dir/", "/abs"] {
            assert_eq!(s.key(bad).unwrap_err().kind, Kind::Usage, "{bad:?}");
        }
        let opts = S3Options {
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            ..S3Options::default()
        };
        assert!(S3Store::open_with_env("bkt", "a/../b", &opts, &Environment::empty()).is_err());
        assert!(S3Store::open_with_env("Bad_Bucket", "", &opts, &Environment::empty()).is_err());
    }

    #[test]
    fn builds_virtual_host_and_path_style_urls() {
        let s = store("p", "https://s3.example.com", None);
        let url = s.client.bucket.object_url("p/db.gz");
        assert_eq!(url.as_str(), "https://bkt.s3.example.com/p/db.gz");
        let s = store("p", "https://s3.example.com", Some(true));
        let url = s.client.bucket.object_url("p/db.gz");
        assert_eq!(url.as_str(), "https://s3.example.com/bkt/p/db.gz");
        let s = store("p", "http://127.0.0.1:9000", None);
        let url = s.client.bucket.object_url("p/db.gz");
        assert_eq!(url.as_str(), "http://127.0.0.1:9000/bkt/p/db.gz");
        // Forcing virtual-host on an IP is a usage error, not a request to a strange host.
        let opts = S3Options {
            endpoint: Some("http://127.0.0.1:9000".into()),
            path_style: Some(false),
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            ..S3Options::default()
        };
        let err = S3Store::open_with_env("bkt", "", &opts, &Environment::empty()).unwrap_err();
        assert_eq!(err.kind, Kind::Usage);
        assert!(err.message.contains("path_style"), "{err}");
    }

    #[test]
    fn listing_skips_directory_markers() {
        let keys = ["p/", "p/a.gz", "p/sub/", "p/sub/b.gz", "p/./c"].map(String::from);
        let names: Vec<_> = names_under("p", keys.into_iter())
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, ["a.gz", "sub/b.gz"]);
    }

    #[test]
    fn debug_shows_no_secret() {
        let s = store("p", "http://127.0.0.1:9", None);
        let text = format!("{s:?}");
        assert!(
            text.contains("bkt") && !text.contains("SECRETVALUE"),
            "{text}"
        );
    }
}
