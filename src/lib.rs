//! sqlite-backup: a SQLite loadable extension that makes, checks and restores compressed backups.
//!
//! `sql` is the only layer that talks to SQLite's function API; everything else is plain Rust
//! over the safe wrappers in `ffi`. The core modules are public so integration tests can drive
//! them directly; they are not a stable Rust API.

pub mod error;
pub mod notify;
pub mod retention;
pub mod store;
