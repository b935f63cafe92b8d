//! Confinement for hosts that run other people's SQL (Datasette, admin consoles): when the
//! environment variable `SQLITE_BACKUP_ALLOW` is set, every place a call reads, writes,
//! deletes or sends to must lie below one of its entries, or the call is refused before it
//! touches anything.
//!
//! The variable is a whitespace-separated list of entries, read at every call (a host may set
//! it before or after loading the extension):
//!
//! - an absolute directory, `/srv/backups`: paths below it (compared by path components, so
//!   `/srv/backups-evil` is outside), after resolving `.`, `..` and symbolic links;
//! - `s3://bucket` or `s3://bucket/prefix`: that bucket, keys below the prefix (by `/`
//!   segments);
//! - `http(s)://host[:port][/path]`: URLs with the same scheme, host and port and a path below
//!   it (notify URLs, and the S3 `endpoint` option).
//!
//! Unset: no confinement. Set but empty, or with an entry that is none of the above: every
//! call is refused (fail closed), with an error that says why.
//!
//! Paths are resolved the way the OS will: the longest existing ancestor is canonicalized
//! (symlinks and `..` resolved by the kernel), a dangling symlink is followed by hand, and the
//! rest, which does not exist yet, is appended; a `..` in that rest is refused. Relative paths
//! resolve against the process's current directory.

use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

use url::Url;

use crate::error::{Error, Result};
use crate::notify::{parse_http_url, redact};
use crate::store::s3::S3Options;
use crate::store::{check_bucket_name, Location};

pub const VAR: &str = "SQLITE_BACKUP_ALLOW";

/// Symlinks followed by hand before giving up (Linux's own limit is 40).
const MAX_LINKS: u32 = 40;

/// The allowed places, as parsed from the variable.
#[derive(Debug, Default)]
pub struct Policy {
    dirs: Vec<PathBuf>,
    /// (bucket, key prefix segments)
    buckets: Vec<(String, Vec<String>)>,
    urls: Vec<Url>,
}

/// The policy in force: `None` when the variable is unset.
pub fn current() -> Result<Option<Policy>> {
    match std::env::var_os(VAR) {
        None => Ok(None),
        Some(value) => Policy::parse_os(value).map(Some),
    }
}

/// Refuses `path` (a file or directory the call will use) when a policy is set and it lies
/// outside; `what` names it in the error ("destination", "option 'temp_dir'").
pub fn path(path: &Path, what: &str) -> Result<()> {
    match current()? {
        Some(policy) => policy.check_path(path, what),
        None => Ok(()),
    }
}

/// Like `path` for a location as the user wrote it: a local path or `s3://bucket/key`.
pub fn location(text: &str, what: &str) -> Result<()> {
    let Some(policy) = current()? else {
        return Ok(());
    };
    match Location::parse(text)? {
        Location::File(p) => policy.check_path(&p, what),
        Location::S3 { bucket, key } => policy.check_s3(&bucket, &key, what),
    }
}

/// Like `path` for an S3 bucket and key (or key prefix).
pub fn s3(bucket: &str, key: &str, what: &str) -> Result<()> {
    match current()? {
        Some(policy) => policy.check_s3(bucket, key, what),
        None => Ok(()),
    }
}

/// Like `path` for a URL requests will be sent to (notify, S3 endpoint).
pub fn url(text: &str, what: &str) -> Result<()> {
    match current()? {
        Some(policy) => policy.check_url(text, what),
        None => Ok(()),
    }
}

/// The S3 options that choose where requests go. `endpoint` sends them, signed with the host's
/// credentials, wherever it says: under a policy it must be an allowed URL prefix. `profile`
/// picks one of the host's profiles, with its own endpoint and account, where the same bucket
/// name is another bucket: refused under a policy (the host sets `AWS_PROFILE`). What the
/// host's own environment or AWS config says is its choice and is not checked.
pub fn s3_options(opts: &S3Options) -> Result<()> {
    let Some(policy) = current()? else {
        return Ok(());
    };
    if let Some(text) = opts.endpoint.as_deref().map(str::trim) {
        if !text.is_empty() {
            policy.check_url(text, "option 'endpoint'")?;
        }
    }
    if opts.profile.is_some() {
        return Err(Error::usage(format!(
            "option 'profile' is refused under {VAR}: the host chooses the profile (AWS_PROFILE)"
        )));
    }
    Ok(())
}

fn outside(what: &str, shown: &str, why: &str) -> Error {
    Error::usage(format!(
        "{what} '{shown}' is outside {VAR} ({why}): use a location below one of its entries"
    ))
}

impl Policy {
    fn parse_os(value: OsString) -> Result<Policy> {
        let text = value.into_string().map_err(|_| {
            Error::usage(format!(
                "{VAR} is not valid UTF-8: everything is refused until it is fixed"
            ))
        })?;
        Policy::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Policy> {
        let mut policy = Policy::default();
        for entry in text.split_whitespace() {
            policy.add(entry).map_err(|why| {
                // A URL may carry a token; a path or bucket is shown as written.
                let shown = match strip_prefix_ignore_case(entry, "s3://") {
                    None if entry.contains(':') => redact(entry),
                    _ => entry.to_string(),
                };
                Error::usage(format!(
                    "{VAR} entry '{shown}' {why}: everything is refused until it is fixed"
                ))
            })?;
        }
        if policy.dirs.is_empty() && policy.buckets.is_empty() && policy.urls.is_empty() {
            return Err(Error::usage(format!(
                "{VAR} is set but empty, so everything is refused: list allowed directories, \
                 s3://bucket/prefix or URL prefixes, or unset it"
            )));
        }
        Ok(policy)
    }

    fn add(&mut self, entry: &str) -> std::result::Result<(), String> {
        const KINDS: &str =
            "is not an absolute directory, s3://bucket[/prefix] or http(s):// URL prefix";
        if let Some(rest) = strip_prefix_ignore_case(entry, "s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            check_bucket_name(bucket).map_err(|e| e.message)?;
            let prefix = segments(prefix).map_err(|e| e.to_string())?;
            self.buckets.push((bucket.to_string(), prefix));
        } else if entry.contains("://") {
            let url = parse_url(entry).map_err(|why| format!("{KINDS} ({why})"))?;
            if url.query().is_some() || url.fragment().is_some() {
                return Err(format!("{KINDS} (a prefix has no ?query or #fragment)"));
            }
            self.urls.push(url);
        } else if entry.starts_with('/') {
            let dir = resolve(Path::new(entry)).map_err(|e| e.message)?;
            self.dirs.push(dir);
        } else {
            return Err(KINDS.to_string());
        }
        Ok(())
    }

    pub fn check_path(&self, path: &Path, what: &str) -> Result<()> {
        // One answer for every refusal, whatever the reason (a `..` below a missing
        // directory, a link loop, a link out): the message must not map the host's files.
        let inside = resolve(path)
            .is_ok_and(|resolved| self.dirs.iter().any(|dir| resolved.starts_with(dir)));
        if inside {
            return Ok(());
        }
        Err(outside(
            what,
            &path.display().to_string(),
            "after resolving '..' and symbolic links",
        ))
    }

    pub fn check_s3(&self, bucket: &str, key: &str, what: &str) -> Result<()> {
        let shown = format!("s3://{bucket}/{key}");
        let key = segments(key).map_err(|why| outside(what, &shown, why))?;
        let inside = self
            .buckets
            .iter()
            .any(|(b, prefix)| b == bucket && key.starts_with(prefix));
        if inside {
            Ok(())
        } else {
            Err(outside(what, &shown, "bucket or prefix not listed"))
        }
    }

    pub fn check_url(&self, text: &str, what: &str) -> Result<()> {
        let shown = redact(text);
        let url = parse_url(text).map_err(|why| outside(what, &shown, why))?;
        let inside = self.urls.iter().any(|allowed| {
            allowed.scheme() == url.scheme()
                && allowed.host_str() == url.host_str()
                && allowed.port_or_known_default() == url.port_or_known_default()
                && path_below(url.path(), allowed.path())
        });
        if inside {
            Ok(())
        } else {
            Err(outside(
                what,
                &shown,
                "scheme, host, port or path not listed",
            ))
        }
    }
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

/// An S3 key's `/` segments (empty ones dropped); `.` and `..` are refused, since some
/// servers map keys to files.
fn segments(key: &str) -> std::result::Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    for segment in key.split('/').filter(|s| !s.is_empty()) {
        if segment == "." || segment == ".." {
            return Err("a key with a '.' or '..' segment");
        }
        out.push(segment.to_string());
    }
    Ok(out)
}

/// `path` equals `prefix` or lies below it, by `/` segments.
fn path_below(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// An http(s) URL written out in full (see `notify::parse_http_url`), without credentials.
fn parse_url(text: &str) -> std::result::Result<Url, &'static str> {
    let url = parse_http_url(text)?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL");
    }
    Ok(url)
}

/// The absolute path `path` names once the OS has followed every symlink and `..` in it, for
/// paths that do not exist yet too.
fn resolve(path: &Path) -> Result<PathBuf> {
    resolve_links(path, MAX_LINKS)
}

fn resolve_links(path: &Path, links_left: u32) -> Result<PathBuf> {
    let absolute = std::path::absolute(path)
        .map_err(|e| Error::io("cannot resolve the current directory", e))?;
    let components: Vec<Component> = absolute.components().collect();
    let mut existing = components.len();
    let base = loop {
        let head: PathBuf = components.iter().take(existing).collect();
        if let Ok(real) = head.canonicalize() {
            break real;
        }
        // A symlink whose target does not exist (yet): opening it creates the target.
        if existing > 0 && head.symlink_metadata().is_ok_and(|m| m.is_symlink()) {
            if links_left == 0 {
                return Err(Error::usage("too many levels of symbolic links"));
            }
            let target = std::fs::read_link(&head)
                .map_err(|e| Error::io(format!("cannot read the link {}", head.display()), e))?;
            let parent = head.parent().unwrap_or(Path::new("/"));
            break resolve_links(&parent.join(target), links_left - 1)?;
        }
        if existing <= 1 {
            // Not even the root resolves: nothing to compare.
            return Err(Error::usage("cannot be resolved"));
        }
        existing -= 1;
    };
    let mut resolved = base;
    for component in components.iter().skip(existing) {
        match component {
            Component::Normal(name) => resolved.push(name),
            Component::CurDir => {}
            _ => {
                return Err(Error::usage(
                    "has a '..' below a directory that does not exist",
                ))
            }
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn paths_by_component_after_links_and_dots() {
        let tmp = dir();
        let root = tmp.path().canonicalize().unwrap();
        let allowed = root.join("b");
        std::fs::create_dir(&allowed).unwrap();
        std::fs::create_dir(root.join("bad")).unwrap();
        std::os::unix::fs::symlink(&root, allowed.join("up")).unwrap();
        std::os::unix::fs::symlink(root.join("bad/new.gz"), allowed.join("dangling")).unwrap();
        let policy = Policy::parse(&format!("  {}\n", allowed.display())).unwrap();
        let ok = |p: PathBuf| policy.check_path(&p, "destination").is_ok();
        assert!(ok(allowed.clone()));
        assert!(ok(allowed.join("x.gz")));
        assert!(ok(allowed.join("new/dir/x.gz")));
        assert!(ok(allowed.join("./x.gz")));
        assert!(!ok(root.join("bad/x.gz")), "prefix sibling");
        assert!(!ok(root.join("b-evil")), "prefix sibling");
        assert!(!ok(allowed.join("../bad/x.gz")), "dot-dot");
        assert!(!ok(allowed.join("up/bad/x.gz")), "symlink out");
        assert!(!ok(allowed.join("dangling")), "dangling symlink out");
        assert!(
            !ok(allowed.join("new/../../bad")),
            "dot-dot below a missing dir"
        );
        assert!(!ok(root.clone()));
        let err = policy
            .check_path(&root.join("bad/x.gz"), "destination")
            .unwrap_err();
        assert!(
            err.message.contains("is outside SQLITE_BACKUP_ALLOW"),
            "{}",
            err.message
        );
    }

    #[test]
    fn symlink_loops_are_an_error() {
        let tmp = dir();
        let a = tmp.path().join("a");
        std::os::unix::fs::symlink(&a, &a).unwrap();
        let policy = Policy::parse(tmp.path().to_str().unwrap()).unwrap();
        assert!(policy.check_path(&a.join("x"), "destination").is_err());
        assert!(policy.check_path(&a, "destination").is_err());
    }

    #[test]
    fn s3_by_bucket_and_segments() {
        let policy = Policy::parse("s3://bkt/backups/db1 s3://whole").unwrap();
        let ok = |b: &str, k: &str| policy.check_s3(b, k, "location").is_ok();
        assert!(ok("bkt", "backups/db1"));
        assert!(ok("bkt", "backups/db1/"));
        assert!(ok("bkt", "backups/db1/x.gz"));
        assert!(ok("whole", ""));
        assert!(ok("whole", "a/b"));
        assert!(!ok("bkt", "backups/db1-evil/x.gz"));
        assert!(!ok("bkt", "backups"));
        assert!(!ok("bkt", "backups/db1/../x"));
        assert!(!ok("bkt2", "backups/db1/x"));
        assert!(!ok("whole2", "x"));
    }

    #[test]
    fn urls_by_origin_and_path() {
        let policy =
            Policy::parse("https://hc-ping.com/ http://127.0.0.1:9000/s3 https://x.io/a/").unwrap();
        let ok = |u: &str| policy.check_url(u, "notify URL").is_ok();
        assert!(ok("https://hc-ping.com/TOKEN"));
        assert!(ok("https://HC-PING.com:443/TOKEN"));
        assert!(ok("http://127.0.0.1:9000/s3"));
        assert!(ok("http://127.0.0.1:9000/s3/x"));
        assert!(ok("https://x.io/a/b"));
        assert!(!ok("http://hc-ping.com/TOKEN"), "scheme");
        assert!(!ok("https://hc-ping.com.evil.io/TOKEN"), "host");
        assert!(!ok("https://hc-ping.com@evil.io/TOKEN"), "userinfo");
        assert!(!ok("http://127.0.0.1:9001/s3"), "port");
        assert!(!ok("http://127.0.0.1:9000/s3-evil"), "path sibling");
        assert!(!ok("http://127.0.0.1:9000/s3/../x"), "dot-dot");
        assert!(!ok("http://127.0.0.1:9000/s3/%2e%2e/x"), "encoded dot-dot");
        assert!(!ok("https://x.io/ab"));
        assert!(!ok("http:/127.0.0.1:9000/s3"), "no //");
        assert!(!ok("http:\\\\127.0.0.1:9000/s3"), "backslashes");
        let err = policy
            .check_url("https://evil.io/SECRET", "notify URL")
            .unwrap_err();
        assert!(!err.message.contains("SECRET"), "{}", err.message);
    }

    #[test]
    fn empty_or_malformed_refuses_everything() {
        for text in [
            "",
            "  \n ",
            "relative/dir",
            "ftp://x/",
            "s3://Bad_Bucket",
            "https:///x",
        ] {
            let err = Policy::parse(text).unwrap_err();
            assert!(err.message.contains(VAR), "{text}: {}", err.message);
        }
        let err = Policy::parse("/srv https://u:SECRET@host/").unwrap_err();
        assert!(!err.message.contains("SECRET"), "{}", err.message);
    }
}
