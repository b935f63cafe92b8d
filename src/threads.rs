//! Starting threads without panicking: `thread::spawn` and `Scope::spawn` panic when the
//! system refuses a thread (a process limit, or no address space for its stack), which would
//! reach the host as "internal error". `Builder` reports it; this makes it our error.

use std::io;
use std::thread::{Builder, Scope, ScopedJoinHandle};

use crate::error::{Error, Result};

/// A named scoped thread, or the error saying why it could not start.
pub fn spawn_scoped<'scope, T: Send + 'scope>(
    scope: &'scope Scope<'scope, '_>,
    name: &str,
    f: impl FnOnce() -> T + Send + 'scope,
) -> Result<ScopedJoinHandle<'scope, T>> {
    Builder::new()
        .name(name.to_string())
        .spawn_scoped(scope, f)
        .map_err(error)
}

/// The error for a thread that could not be started.
pub fn error(err: io::Error) -> Error {
    Error::io(
        "cannot start a thread (the process's thread or memory limit?): lower threads or \
         concurrency",
        err,
    )
}

/// ureq's default resolver looks a name up on a new `thread::spawn` whenever a timeout applies
/// (ours always do), which panics where no thread may start. This one answers IP literals
/// (127.0.0.1, most self-hosted endpoints) without a thread and looks other names up on a
/// thread started with `Builder`: a refused thread is an I/O error like a failed connection.
#[derive(Debug, Default)]
pub struct Resolver;

impl ureq::unversioned::resolver::Resolver for Resolver {
    fn resolve(
        &self,
        uri: &ureq::http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> std::result::Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        use ureq::unversioned::resolver::DefaultResolver;
        use ureq::unversioned::transport::time::Duration as Timeout;
        // With no timeout the default resolver looks up on the calling thread.
        let here = ureq::unversioned::transport::NextTimeout {
            after: Timeout::NotHappening,
            ..timeout
        };
        let literal = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .is_some_and(|h| h.parse::<std::net::IpAddr>().is_ok());
        if literal || timeout.after.is_not_happening() {
            return DefaultResolver::default().resolve(uri, config, here);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (uri_owned, config_owned) = (uri.clone(), config.clone());
        // Detached: a lookup that outlives the timeout ends on its own, and nothing waits.
        Builder::new()
            .name("dns-lookup".into())
            .spawn(move || {
                let found = DefaultResolver::default().resolve(&uri_owned, &config_owned, here);
                let _ = tx.send(found);
            })
            .map_err(|e| ureq::Error::Io(io::Error::new(e.kind(), error(e).message)))?;
        match rx.recv_timeout(*timeout.after) {
            Ok(found) => found,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                Err(ureq::Error::Timeout(timeout.reason))
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(ureq::Error::HostNotFound),
        }
    }
}
