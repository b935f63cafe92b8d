//! verify_backup(location [, options]) and restore_backup(location [, dest_path [, options]]).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::backup::{protected, temp_dir, DEFAULT_BUSY_TIMEOUT_MS};
use super::{json, options, Call};
use crate::allow;
use crate::error::{Error, Result};
use crate::live;
use crate::restore;
use crate::store::{open_backup, Location};
use crate::temp::parent_dir;
use crate::verify;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyOptions {
    quick: Option<bool>,
    temp_dir: Option<String>,
    progress: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestoreOptions {
    overwrite: Option<bool>,
    quick: Option<bool>,
    schema: Option<String>,
    busy_timeout_ms: Option<u64>,
    temp_dir: Option<String>,
    progress: Option<bool>,
}

pub fn verify(call: &Call) -> Result<String> {
    call.arity(1, 2, "(location [, options])")?;
    let location = call.text(0, "location")?;
    let mut map = call.options(1)?;
    let s3 = options::take_s3(&mut map, Location::parse(&location)?.is_s3())?;
    let opts: VerifyOptions = options::decode(map)?;
    let _progress = crate::progress::show(call.name, opts.progress);
    allow::location(&location, "location")?;
    allow::s3_options(&s3)?;
    if let Some(dir) = &opts.temp_dir {
        allow::path(Path::new(dir), "option 'temp_dir'")?;
    }
    let (store, name) = open_backup(&location, &s3)?;
    let checked = verify::fetch_checked(
        store.as_ref(),
        &name,
        &temp_dir(opts.temp_dir.as_deref()),
        opts.quick.unwrap_or(false),
        Some(&call.connection()),
    )?;
    json(&checked.report)
}

pub fn restore(call: &Call) -> Result<String> {
    call.arity(1, 3, "(location [, dest_path [, options]])")?;
    let location = call.text(0, "location")?;
    let dest = call.optional_text(1, "dest_path")?;
    let mut map = call.options(2)?;
    let s3 = options::take_s3(&mut map, Location::parse(&location)?.is_s3())?;
    let opts: RestoreOptions = options::decode(map)?;
    let _progress = crate::progress::show(call.name, opts.progress);
    allow::location(&location, "location")?;
    allow::s3_options(&s3)?;
    if let Some(dir) = &opts.temp_dir {
        allow::path(Path::new(dir), "option 'temp_dir'")?;
    }
    match &dest {
        Some(dest) => {
            // The directory too: the restored copy is written beside its destination first.
            allow::path(parent_dir(Path::new(dest)), "dest_path directory")?;
            allow::path(Path::new(dest), "dest_path")?;
        }
        // Restoring into this connection replaces its database file.
        None => {
            let schema = opts.schema.as_deref().unwrap_or("main");
            if let Some(file) = call.connection().filename(schema)? {
                allow::path(&file, "the database restored into")?;
            }
        }
    }
    let (store, name) = open_backup(&location, &s3)?;
    let quick = opts.quick.unwrap_or(false);
    let report = match dest {
        Some(dest) => {
            // A file is restored through a temp file beside it (one rename, same file
            // system) and never waits for a lock: these options would do nothing.
            for (given, key) in [
                (opts.schema.is_some(), "schema"),
                (opts.temp_dir.is_some(), "temp_dir"),
                (opts.busy_timeout_ms.is_some(), "busy_timeout_ms"),
            ] {
                if given {
                    return Err(Error::usage(format!(
                        "option '{key}' applies when restoring into this connection \
                         (dest_path NULL); a file is restored through a temp file beside it"
                    )));
                }
            }
            // Never over a file of this connection's databases or a live database's journal.
            let dest = PathBuf::from(dest);
            live::refuse_live_file(&protected(&call.connection())?, &dest)?;
            restore::to_file(
                store.as_ref(),
                &name,
                &dest,
                opts.overwrite.unwrap_or(false),
                quick,
                &call.connection(),
            )?
        }
        None => {
            if opts.overwrite.is_some() {
                return Err(Error::usage(
                    "option 'overwrite' applies to a dest_path; restoring into this connection always replaces it",
                ));
            }
            restore::into_connection(
                &call.connection(),
                opts.schema.as_deref().unwrap_or("main"),
                store.as_ref(),
                &name,
                opts.busy_timeout_ms.unwrap_or(DEFAULT_BUSY_TIMEOUT_MS),
                &temp_dir(opts.temp_dir.as_deref()),
                quick,
            )?
        }
    };
    json(&report)
}
