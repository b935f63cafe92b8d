//! A backup's chain: its page list, its base's, and so on back to the full backup. Read from
//! the page lists alone (never from backup data), for the next backup and for a restore.

use std::collections::HashMap;
use std::path::Path;

use super::format::{self, Hash, Header, Kind, PageList};
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
/// An encrypted one (an age file) is decrypted with `identity`; also says which it was.
pub fn page_list(
    store: &dyn Store,
    name: &str,
    full_hashes: bool,
    identity: Option<&Path>,
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
    format::read_page_list(&mut plain, &url, full_hashes).map(|list| (encrypted, list))
}

/// The chain that ends with `name`, full backup first. With `full_hashes` the full's page
/// hashes are read too (the next backup compares against them); a restore does without.
pub fn walk(
    store: &dyn Store,
    name: &str,
    full_hashes: bool,
    identity: Option<&Path>,
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
        let (encrypted, list) = page_list(store, &at, full_hashes, identity)?;
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

/// The page hashes of the database the last link restores to, indexed by page number - 1.
pub fn hashes(links: Vec<Link>) -> Result<Vec<Hash>> {
    let mut links = links.into_iter();
    let Some(full) = links.next() else {
        return Ok(Vec::new());
    };
    let mut map = full.list.hashes;
    for link in links {
        let count = usize::try_from(link.list.header.page_count)
            .map_err(|_| Error::corrupt("a page count is too large"))?;
        if count > map.len() {
            map.try_reserve_exact(count - map.len())
                .map_err(|_| Error::new(ErrorKind::Io, "out of memory for the page hashes"))?;
        }
        map.resize(count, [0; format::HASH_LEN]);
        for (page, hash) in link.list.pages.iter().zip(link.list.hashes) {
            if let Some(slot) = (*page as usize).checked_sub(1).and_then(|i| map.get_mut(i)) {
                *slot = hash;
            }
        }
    }
    Ok(map)
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
