//! The one error type of the crate. The SQL layer prefixes the function name, so messages here
//! say what went wrong and what to fix, never which SQL function was called.

use std::fmt;
use std::io;

/// What kind of failure this is: decides retries (transient) and lets tests assert without
/// matching message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A bad argument or option: the caller must change the call.
    Usage,
    /// Local disk or file-system failure.
    Io,
    /// SQLite refused something (open failure, SQL error).
    Sqlite,
    /// The database stayed locked past the caller's busy timeout (SQLITE_BUSY, SQLITE_LOCKED:
    /// told by result code, never by message text).
    Busy,
    /// The backup exists but is not a good database (bad archive, integrity errors).
    Corrupt,
    /// The backup, bucket or file does not exist.
    NotFound,
    /// The destination exists and may not be replaced.
    Exists,
    /// Credentials missing or rejected.
    Auth,
    /// A failure worth retrying: 5xx, 429, timeouts, dropped connections.
    Transient,
    /// The remote store answered with an error that retrying will not fix.
    Remote,
    /// The caller interrupted the call (sqlite3_interrupt): never retried.
    Interrupted,
}

#[derive(Debug)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        Error {
            kind,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Error {
        Error::new(Kind::Usage, message)
    }

    pub fn corrupt(message: impl Into<String>) -> Error {
        Error::new(Kind::Corrupt, message)
    }

    /// The call was interrupted (sqlite3_interrupt) and stopped before storing or changing
    /// anything.
    pub fn interrupted() -> Error {
        Error::new(
            Kind::Interrupted,
            "interrupted: stopped before finishing, nothing was stored or changed",
        )
    }

    /// An I/O error with what we were doing when it happened (`"cannot write /x/y"`).
    pub fn io(context: impl fmt::Display, err: io::Error) -> Error {
        // An io::Error may carry one of ours (raised inside a Write impl): keep its kind.
        if let Some(inner) = err.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
            return Error::new(inner.kind, inner.message.clone());
        }
        let kind = match err.kind() {
            io::ErrorKind::NotFound => Kind::NotFound,
            io::ErrorKind::AlreadyExists => Kind::Exists,
            _ => Kind::Io,
        };
        Error::new(kind, format!("{context}: {}", describe_io(&err)))
    }

    /// Adds context in front of the message, keeping the kind.
    pub fn context(self, context: impl fmt::Display) -> Error {
        Error::new(self.kind, format!("{context}: {}", self.message))
    }

    /// Wraps this error into an `io::Error`, for `Write`/`Read` impls; `Error::io` unwraps it.
    pub fn into_io(self) -> io::Error {
        io::Error::other(self)
    }
}

/// io::Error's Display appends "(os error 2)"; users want the plain sentence.
fn describe_io(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::NotFound => "no such file or directory".to_string(),
        io::ErrorKind::PermissionDenied => "permission denied".to_string(),
        io::ErrorKind::AlreadyExists => "already exists".to_string(),
        _ => {
            let text = err.to_string();
            match text.find(" (os error") {
                Some(at) => text[..at].to_string(),
                None => text,
            }
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_error_round_trips_through_io_error() {
        let ours = Error::new(Kind::Auth, "access denied");
        let back = Error::io("writing", ours.into_io());
        assert_eq!(back.kind, Kind::Auth);
        assert_eq!(back.message, "access denied");
    }

    #[test]
    fn io_error_message_has_no_os_error_suffix() {
        let err = Error::io("cannot open /x", io::Error::from_raw_os_error(2));
        assert_eq!(err.kind, Kind::NotFound);
        assert_eq!(err.message, "cannot open /x: no such file or directory");
    }
}
