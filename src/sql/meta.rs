//! backup_version() and backup_debug().

use super::Call;
use crate::error::Result;
use crate::ffi;

pub fn version(call: &Call) -> Result<String> {
    call.arity(0, 0, "()")?;
    Ok(format!("v{}", env!("CARGO_PKG_VERSION")))
}

pub fn debug(call: &Call) -> Result<String> {
    call.arity(0, 0, "()")?;
    Ok(format!(
        "Version: v{}\nCommit: {}\nSQLite: {}\nTarget: {}",
        env!("CARGO_PKG_VERSION"),
        env!("SQLITE_BACKUP_COMMIT"),
        ffi::libversion(),
        env!("SQLITE_BACKUP_TARGET"),
    ))
}
