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
