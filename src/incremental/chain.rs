//! A backup's chain: its page list, its base's, and so on back to the full backup. Read from
//! the page lists alone (never from backup data), for the next backup and for a restore.

use std::collections::HashMap;
use std::path::Path;

use super::format::{self, Header, Kind, PageList, Sink};
use crate::error::{Error, Kind as ErrorKind, Result};
use crate::store::Store;

/// The most links a chain may have: bounds the walk whatever the page lists say.
pub const MAX_LINKS: usize = 10_000;

/// One backup of a chain, as its page list describes it.
#[derive(Debug)]
pub struct Link {
    pub name: String,
    pub list: PageList,
    /// Whether its page list is an age file (the series is encrypted).
    pub encrypted: bool,
}

/// Reads the page list of `name` in one request; a full's hashes only with `full_hashes`.
/// An encrypted one (an age file) is decrypted with `identity`; also says which it was. The
/// entries go to `sink` and are not kept.
fn page_list<'d>(
    store: &dyn Store,
    name: &str,
    full_hashes: bool,
    identity: Option<&Path>,
    sink: &mut (dyn Sink + 'd),
) -> Result<(bool, PageList)> {
    let pages = format::pages_name(name);
    let url = store.url(&pages);
    let mut input = match store.get(&pages) {
        Ok(input) => input,
        Err(e) if e.kind == ErrorKind::NotFound => {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "the page list of backup {} ({url}) is missing",
                    store.url(name)
                ),
            ))
        }
        Err(e) => return Err(e),
    };
    let (encrypted, mut plain) = crate::crypt::open(Box::new(&mut input), identity, &url)?;
    format::read_page_list_into(&mut plain, &url, full_hashes, sink)
        .map(|header| PageList { header })
        .map(|list| (encrypted, list))
}

/// The chain that ends with `name`, full backup first, each link's entries (the full's only
/// with `full_hashes`: the next backup compares against them; a restore does without) handed
/// to `sink`, newest link first, and not kept: memory independent of the database's size.
pub fn walk<'d>(
    store: &dyn Store,
    name: &str,
    full_hashes: bool,
    identity: Option<&Path>,
    sink: &mut (dyn Sink + 'd),
) -> Result<Vec<Link>> {
    let mut links = Vec::new();
    let mut at = name.to_string();
    let mut expected_depth: Option<u32> = None;
    let mut full: Option<String> = None;
    // Names in page lists are relative to the location the backups were taken in; `name` may
    // carry more (an S3 prefix when one backup is opened by its URL): that part is kept.
    let mut prefix: Option<String> = None;
    loop {
        if links.len() >= MAX_LINKS {
            return Err(Error::corrupt(format!(
                "the chain of {} has over {MAX_LINKS} links: its page lists are damaged",
                store.url(name)
            )));
        }
        let (encrypted, list) = page_list(store, &at, full_hashes, identity, sink)?;
        let h = &list.header;
        let broken = |why: &str| {
            Error::corrupt(format!(
                "the page list of {} does not fit the chain of {}: {why}",
                store.url(&at),
                store.url(name)
            ))
        };
        if expected_depth.is_some_and(|d| d != h.depth) {
            return Err(broken("its depth is not one less than the next backup's"));
        }
        if full.as_deref().is_some_and(|f| f != h.full) {
            return Err(broken("it names another full backup"));
        }
        if (h.kind == Kind::Full) != (h.depth == 0) {
            return Err(broken("its kind and depth disagree"));
        }
        full = Some(h.full.clone());
        let prefix =
            prefix.get_or_insert_with(|| at.strip_suffix(&h.name).unwrap_or_default().to_string());
        let next = format!("{prefix}{}", h.base);
        let kind = h.kind;
        expected_depth = h.depth.checked_sub(1);
        links.push(Link {
            name: at.clone(),
            list,
            encrypted,
        });
        if kind == Kind::Full {
            break;
        }
        at = next;
    }
    links.reverse();
    Ok(links)
}

/// The base a new backup of a series would build on, and why not when it cannot.
pub fn usable(
    links: &[Link],
    sizes: &HashMap<String, u64>,
    store: &dyn Store,
) -> std::result::Result<(), String> {
    for link in links {
        for name in [link.name.clone(), format::pages_name(&link.name)] {
            if !sizes.contains_key(&name) {
                return Err(format!("{} is missing", store.url(&name)));
            }
        }
    }
    Ok(())
}

pub fn header_of(links: &[Link]) -> Option<&Header> {
    links.last().map(|l| &l.list.header)
}
