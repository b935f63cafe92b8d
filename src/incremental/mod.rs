//! Incremental backups (`"incremental": true`): the first backup of a series is a full one (a
//! plain compressed database); the next ones store only the pages that changed since the
//! newest backup of the series. Every backup has a page list beside it (`<name>.pages`, see
//! `format`), so the next run compares page hashes without downloading any backup data.
//!
//! Pipeline: the pages in order (the online backup API keeps page numbers, VACUUM INTO does
//! not) — streamed through the page sink (method `stream`, see `stream_run`: nothing kept but
//! the changed pages) or a page copy in temp_dir (method `pages`, `copy_run`) → hash each page
//! (blake3) and the whole (sha256) → skip if unchanged (`if_changed`) → full or incremental by
//! policy → page list, then the object (a kill between leaves a page list without its backup,
//! which is never counted and which the next run removes).

pub mod chain;
pub mod format;
mod tally;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::backup::{
    compress, ms_since, stream_length, CountingWriter, Metered, Report, Request, Timings,
};
use crate::codec::{self, Codec};
use crate::dbfile;
use crate::error::{Error, Kind as ErrorKind, Result};
use crate::ffi::Connection;
use crate::retention::Within;
use crate::snapshot::{self, Method};
use crate::store::{Entry, PutMeta, Sha256Cell, Store};
use crate::temp::{self, NamedTemp};
use format::{Hash, Header, Kind, DELTA_MAGIC};
use tally::Tally;

/// How often a full backup is taken.
#[derive(Debug, Clone)]
pub enum FullEvery {
    /// Every n-th backup is a full one: a restore reads at most n backups.
    Count(u32),
    /// A full backup once the chain's full is this old.
    Age(Within),
}

pub const DEFAULT_FULL_EVERY: u32 = 24;

#[derive(Debug, Clone)]
pub struct Options {
    pub full_every: FullEvery,
}

/// What the result says about the incremental side of a backup.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    pub kind: &'static str,
    /// The backup this one applies on (none for a full).
    pub base: Option<String>,
    /// The full backup of its chain.
    pub full: String,
    /// Incrementals since the full (0 for a full).
    pub depth: u32,
    /// Pages stored: all of them for a full.
    pub changed_pages: u64,
    /// Stored bytes of the page list (included in `stored_bytes`).
    pub page_list_bytes: u64,
    /// Why a full backup was taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_reason: Option<String>,
}

pub fn run(
    conn: &Connection,
    store: &dyn Store,
    name: &str,
    req: &Request,
    opts: &Options,
) -> Result<(Report, Option<Info>)> {
    let started = Instant::now();
    let codec = Codec::for_name(crate::crypt::inner_name(name));
    let level = codec.level(req.level)?;
    let identity = req.identity_file.as_deref();
    // Encrypted (.age): the objects and the page lists go to the recipients, and continuing
    // the chain means decrypting its page lists. request.rs pairs name, recipients and key.
    let recipients = match (&req.recipients, crate::crypt::wanted(name), identity) {
        (Some(r), true, Some(id)) => {
            crate::crypt::check_identity_file(id)?;
            Some(r.as_ref())
        }
        (None, false, _) => None,
        _ => {
            return Err(Error::usage(
                "an encrypted incremental backup needs a name ending in .age, recipients and \
                 option 'identity_file'",
            ))
        }
    };
    let encrypted = recipients.is_some();
    // A backup that later ones build on must never be replaced: names must not repeat.
    store.check_put(name, true).map_err(|e| {
        if e.kind == ErrorKind::Exists {
            Error::new(
                e.kind,
                format!(
                    "{}: an incremental backup never replaces one (later backups may build on \
                     it): put the date and time in the pattern, like db-%Y%m%dT%H%M%S.zst",
                    e.message
                ),
            )
        } else {
            e
        }
    })?;
    let pages_name = format::pages_name(name);
    store.check_put(&pages_name, false)?;

    let listing = store.list()?;
    let sizes: HashMap<String, u64> = listing.iter().map(|e| (e.name.clone(), e.size)).collect();
    remove_orphans(store, &listing, &sizes, &req.series, name, identity);
    let members: Vec<Entry> = req
        .series
        .select(listing)
        .into_iter()
        .filter(|e| format::owner_of(&e.name).is_none())
        .collect();
    let (owned, why_full) = match crate::retention::newest(members) {
        None => (None, Some("the first backup of the series".to_string())),
        Some(entry) => {
            let chain = if sizes.contains_key(&format::pages_name(&entry.name)) {
                let mut map = BaseMap::new(&req.temp_dir)?;
                let walked = chain::walk(store, &entry.name, true, identity, &mut map);
                match walked.map(|links| (links, map)) {
                    Ok((links, _)) if links.iter().any(|l| l.encrypted != encrypted) => {
                        Err(format!(
                            "its chain is {}encrypted and this backup is {}",
                            if encrypted { "not " } else { "" },
                            if encrypted { "" } else { "not" }
                        ))
                    }
                    Ok((links, map)) => chain::usable(&links, &sizes, store).map(|()| (links, map)),
                    // A key that does not open the chain is a mistake to show, never a
                    // reason to start a new chain that would hide it.
                    Err(e) if e.kind == ErrorKind::Auth || e.message.starts_with(BASE_MAP) => {
                        return Err(e.context(format!(
                            "cannot continue the chain of {}",
                            store.url(&entry.name)
                        )))
                    }
                    // No key, and one was asked for: an encrypted chain, this backup plain.
                    Err(e) if identity.is_none() && e.kind == ErrorKind::Usage => {
                        Err("its chain is encrypted and this backup is not".to_string())
                    }
                    Err(e) => Err(format!("its chain cannot be read: {}", e.message)),
                }
            } else {
                Err("it is not part of an incremental chain".to_string())
            };
            match chain {
                Ok(chain) => (Some(chain), None),
                Err(why) => (
                    None,
                    Some(format!("the newest backup {}: {why}", entry.url)),
                ),
            }
        }
    };
    let mut base = Base { owned, why_full };
    let ctx = Ctx {
        conn,
        store,
        name,
        pages_name,
        req,
        opts,
        codec,
        level,
        recipients,
        sizes,
        started,
    };
    // Method `stream` where a plain backup streams by default (WAL, memory), or when asked.
    let streaming = match req.method {
        Some(Method::Stream) => true,
        Some(_) => false,
        None => crate::backup::stream_by_default(conn, &req.schema),
    };
    let mut fallback = None;
    if streaming {
        // Page 1 predicted from the source's (no first pass); when the copy commits another
        // page 1, nothing was stored yet: again with the first pass.
        let streamed = match stream_run(&ctx, &mut base, true) {
            Err(e) if e.message.contains(crate::stream::PAGE1_CHANGED) => {
                stream_run(&ctx, &mut base, false)
            }
            other => other,
        };
        match streamed? {
            Streamed::Done(done) => return Ok(*done),
            Streamed::Instead(why) => fallback = Some(why),
        }
    }
    copy_run(&ctx, &mut base, fallback)
}

/// One incremental backup's settings, resolved.
struct Ctx<'a> {
    conn: &'a Connection,
    store: &'a dyn Store,
    name: &'a str,
    pages_name: String,
    req: &'a Request,
    opts: &'a Options,
    codec: Codec,
    level: u32,
    recipients: Option<&'a crate::crypt::Recipients>,
    /// Every name in the location, with its stored size.
    sizes: HashMap<String, u64>,
    started: Instant,
}

/// The chain this backup may continue (its links and its base's page hashes), or why not.
struct Base {
    owned: Option<(Vec<chain::Link>, BaseMap)>,
    why_full: Option<String>,
}

/// What the chain says once the snapshot's page size is known.
struct ChainView<'m> {
    why_full: Option<String>,
    base_header: Option<Header>,
    base_link: String,
    /// Stored bytes of the chain's incrementals (objects and page lists), from the listing.
    chain_bytes: u64,
    full_header: Option<(String, Header)>,
    /// The base's page hashes (16 bytes a page) and its page count.
    base_map: Option<(&'m File, u64)>,
}

impl Base {
    fn view(&mut self, ctx: &Ctx, page_size: u32) -> Result<ChainView<'_>> {
        if let Some(head) = self.owned.as_ref().and_then(|(l, _)| chain::header_of(l)) {
            if head.page_size != page_size {
                self.why_full = Some(format!(
                    "the page size changed from {} to {page_size}",
                    head.page_size
                ));
                self.owned = None;
            }
        }
        let links = self.owned.as_ref().map(|(l, _)| l.as_slice());
        let base_header = links.and_then(chain::header_of).cloned();
        let base_link = links
            .and_then(|l| l.last())
            .map(|l| l.name.clone())
            .unwrap_or_default();
        let chain_bytes: u64 = links
            .map(|l| {
                l.iter()
                    .skip(1)
                    .flat_map(|link| [link.name.clone(), format::pages_name(&link.name)])
                    .filter_map(|n| ctx.sizes.get(&n))
                    .sum()
            })
            .unwrap_or(0);
        let full_header = links
            .and_then(|l| l.first())
            .map(|l| (l.name.clone(), l.list.header.clone()));
        let why_full = self.why_full.clone();
        let base_map = match &mut self.owned {
            Some((_, map)) => Some(map.finish()?),
            None => None,
        };
        Ok(ChainView {
            why_full,
            base_header,
            base_link,
            chain_bytes,
            full_header,
            base_map,
        })
    }
}

impl ChainView<'_> {
    /// Why this backup is a full one: no chain to continue, or by policy (count, age, or,
    /// once `changed` is known, the chain's size). None: an incremental.
    fn why_full(&self, ctx: &Ctx, page_size: u32, changed: Option<u64>) -> Option<String> {
        if self.why_full.is_some() {
            return self.why_full.clone();
        }
        let (Some(base), Some((full_name, full))) = (&self.base_header, &self.full_header) else {
            return Some("the first backup of the series".to_string());
        };
        match &ctx.opts.full_every {
            FullEvery::Count(n) if base.depth.saturating_add(1) >= *n => {
                Some(format!("full_every {n}: the chain has {n} backups"))
            }
            FullEvery::Age(within)
                if within
                    .cutoff(ctx.req.time)
                    .is_none_or(|cut| cut.timestamp() >= full.time) =>
            {
                Some("full_every: the chain's full backup is that old".to_string())
            }
            _ => {
                // This one's stored size, estimated at the full's compression ratio.
                let changed = changed?;
                let full_stored = ctx.sizes.get(full_name).copied().unwrap_or(0);
                let estimate = changed
                    .saturating_mul(u64::from(page_size))
                    .saturating_mul(full_stored)
                    / full.bytes().max(1);
                (self.chain_bytes.saturating_add(estimate) > full_stored)
                    .then(|| "the chain would store more than a new full backup".to_string())
            }
        }
    }

    /// The base backup that holds this very database, for `if_changed`.
    fn same_as(&self, ctx: &Ctx, sha256: &[u8; 32]) -> Result<Option<String>> {
        match &self.base_header {
            Some(h) => Ok((h.sha256 == *sha256).then(|| ctx.store.url(&self.base_link))),
            None => crate::backup::newest_with_same_content(
                ctx.store,
                &ctx.req.series,
                &dbfile::hex(sha256),
                ctx.req.identity_file.as_deref(),
            ),
        }
    }

    fn header(
        &self,
        ctx: &Ctx,
        why_full: &Option<String>,
        page_size: u32,
        page_count: u64,
        sha256: [u8; 32],
        changed: u64,
    ) -> Header {
        let kind = if why_full.is_some() {
            Kind::Full
        } else {
            Kind::Incremental
        };
        let (base, full, depth) = match (kind, &self.base_header, &self.full_header) {
            (Kind::Incremental, Some(b), Some((f, _))) => {
                (self.base_link.clone(), f.clone(), b.depth.saturating_add(1))
            }
            _ => (String::new(), ctx.name.to_string(), 0),
        };
        Header {
            kind,
            page_size,
            page_count,
            sha256,
            time: ctx.req.time.timestamp(),
            depth,
            name: ctx.name.to_string(),
            base,
            full,
            entries: match kind {
                Kind::Full => page_count,
                Kind::Incremental => changed,
            },
        }
    }
}

impl Ctx<'_> {
    fn report(
        &self,
        method: Method,
        fallback: Option<String>,
        bytes: u64,
        page_size: u32,
        page_count: u64,
    ) -> Report {
        Report {
            fallback,
            ..Report::begin(
                self.store.url(self.name),
                method,
                self.codec,
                self.recipients.is_some(),
                bytes,
                page_size,
                page_count,
            )
        }
    }

    fn skipped(
        &self,
        mut report: Report,
        timings: Timings,
        same: String,
    ) -> (Report, Option<Info>) {
        report.skipped = true;
        report.same_as = Some(same);
        report.elapsed_ms = ms_since(self.started);
        report.timings_ms = timings;
        (report, None)
    }

    /// Stores and commits the page list (before the object: a backup is only counted once
    /// its object exists). Returns its stored bytes.
    fn store_page_list(&self, header: &Header, map: &File, changed: &File) -> Result<u64> {
        crate::progress::phase("storing the page list", None);
        let store = self.store;
        let pages_name = &self.pages_name;
        let list_meta = PutMeta {
            sha256: Sha256Cell::ready(String::new()),
            backup_time: self.req.time,
            create_only: false,
            temp_dir: self.req.temp_dir.clone(),
        };
        let mut upload = store.put(pages_name, &list_meta)?;
        let entries = match header.kind {
            Kind::Full => Entries::new(map, Kind::Full, header.page_count),
            Kind::Incremental => Entries::new(changed, Kind::Incremental, header.entries),
        }
        .map_err(|e| Error::io("cannot read the page hashes back from their temp file", e))?;
        let mut counted = CountingWriter {
            inner: &mut upload,
            count: 0,
        };
        let list_fail = |e| Error::io(format!("cannot write {}", store.url(pages_name)), e);
        // Page hashes would let whoever reads the bucket test guesses of page content.
        let written = match self.recipients {
            None => format::write_page_list(header, entries, &mut counted).map_err(list_fail),
            Some(r) => crate::crypt::encrypt(r, &mut counted).and_then(|mut sealed| {
                format::write_page_list(header, entries, &mut sealed).map_err(list_fail)?;
                sealed
                    .finish()
                    .map(drop)
                    .map_err(|e| Error::io("cannot finish encryption", e))
            }),
        };
        let list_bytes = counted.count;
        if let Err(e) = written {
            upload.abort();
            return Err(e);
        }
        upload.commit()?;
        Ok(list_bytes)
    }

    /// The object's metadata; `sha256` empty when not known before the upload (a streamed
    /// full backup: its trailer records it).
    fn object_meta(&self, sha256: String) -> PutMeta {
        PutMeta {
            // An encrypted backup's plaintext hash would let whoever reads the bucket test a
            // guess of its content: the store gets an empty one, which it does not record.
            sha256: Sha256Cell::ready(if self.recipients.is_some() {
                String::new()
            } else {
                sha256
            }),
            backup_time: self.req.time,
            create_only: true,
            temp_dir: self.req.temp_dir.clone(),
        }
    }

    /// Compresses `input` into a new object and commits it.
    /// The page list is stored before its object: when the object fails, the list goes too
    /// (a kill between the two is cleaned up by the next run).
    fn without_list_if_failed<T>(&self, stored: Result<T>) -> Result<T> {
        stored.inspect_err(|_| {
            let _ = self.store.delete(&self.pages_name);
        })
    }

    fn store_object(
        &self,
        header: &Header,
        input: Box<dyn Read + Send + '_>,
        timings: &mut Timings,
    ) -> Result<(crate::store::Stored, u64)> {
        let meta = self.object_meta(dbfile::hex(&header.sha256));
        let step = Instant::now();
        let upload = self.store.put(self.name, &meta)?;
        let mut counted = CountingWriter {
            inner: upload,
            count: 0,
        };
        let meter = crate::progress::phase("compressing and storing", None);
        let mut input = Metered {
            inner: input,
            meter,
        };
        let compressed = compress(
            &mut input,
            &mut counted,
            self.codec,
            self.level,
            self.req.threads,
            self.recipients,
        );
        drop(input);
        let CountingWriter {
            inner: upload,
            count,
        } = counted;
        if let Err(e) = compressed.and_then(|_| crate::interrupt::check()) {
            upload.abort();
            return Err(e);
        }
        timings.compress = ms_since(step);
        let step = Instant::now();
        crate::progress::phase("committing", None);
        let stored = upload.commit()?;
        timings.commit = ms_since(step);
        Ok((stored, count))
    }

    /// The page list first, then the object `input` makes (a kill between the two leaves a
    /// page list the next run cleans up; a failed object takes its list with it). Returns the
    /// finished report.
    fn store_list_then_object<'a>(
        &self,
        report: Report,
        mut timings: Timings,
        header: &Header,
        why_full: Option<String>,
        (map, changed): (&File, &File),
        input: impl FnOnce() -> Result<Box<dyn Read + Send + 'a>>,
    ) -> Result<(Report, Option<Info>)> {
        let step = Instant::now();
        let list_bytes = self.store_page_list(header, map, changed)?;
        let stored = input().and_then(|input| self.store_object(header, input, &mut timings));
        let (stored, count) = self.without_list_if_failed(stored)?;
        timings.compress += ms_since(step).saturating_sub(timings.compress + timings.commit);
        Ok(self.done(report, timings, header, why_full, stored, count, list_bytes))
    }

    #[allow(clippy::too_many_arguments)]
    fn done(
        &self,
        mut report: Report,
        timings: Timings,
        header: &Header,
        why_full: Option<String>,
        stored: crate::store::Stored,
        count: u64,
        list_bytes: u64,
    ) -> (Report, Option<Info>) {
        report.sha256 = dbfile::hex(&header.sha256);
        report.destination = stored.url;
        report.stored_bytes = count + list_bytes;
        report.etag = stored.etag;
        report.parts = stored.parts;
        report.elapsed_ms = ms_since(self.started);
        report.timings_ms = timings;
        let kind = header.kind;
        let info = Info {
            kind: kind.name(),
            base: (kind == Kind::Incremental).then(|| header.base.clone()),
            full: header.full.clone(),
            depth: header.depth,
            changed_pages: header.entries,
            page_list_bytes: list_bytes,
            full_reason: why_full,
        };
        (report, Some(info))
    }
}

/// The header an incremental's object starts with.
fn delta_head(header: &Header) -> Result<Vec<u8>> {
    let mut first = Vec::new();
    header
        .write(DELTA_MAGIC, &mut first)
        .map_err(|e| Error::io("cannot encode the header", e))?;
    Ok(first)
}

/// Method `pages`: a page copy in temp_dir, hashed, then compressed (whole, or the changed
/// pages read back from it).
fn copy_run(
    ctx: &Ctx,
    base: &mut Base,
    fallback: Option<String>,
) -> Result<(Report, Option<Info>)> {
    let req = ctx.req;
    let snap = snapshot::take(
        ctx.conn,
        &req.schema,
        Some(Method::Pages),
        req.busy_timeout_ms,
        &req.temp_dir,
    )?;
    let mut timings = Timings {
        snapshot: ms_since(ctx.started),
        ..Timings::default()
    };
    let (page_size, page_count) = (snap.page_size, snap.page_count);
    let mut report = ctx.report(Method::Pages, fallback, snap.bytes, page_size, page_count);
    let view = base.view(ctx, page_size)?;

    let step = Instant::now();
    let hashed = hash_pages(
        &snap.file,
        page_size,
        page_count,
        view.base_map,
        &req.temp_dir,
    )?;
    timings.hash = ms_since(step);
    report.sha256 = dbfile::hex(&hashed.sha256);
    if req.if_changed {
        if let Some(same) = view.same_as(ctx, &hashed.sha256)? {
            return Ok(ctx.skipped(report, timings, same));
        }
    }
    let changed = hashed.changed_count;
    let why_full = view.why_full(ctx, page_size, Some(changed));
    let header = view.header(
        ctx,
        &why_full,
        page_size,
        page_count,
        hashed.sha256,
        changed,
    );

    let done = ctx.store_list_then_object(
        report,
        timings,
        &header,
        why_full,
        (&hashed.map, &hashed.changed),
        || {
            let file = snap
                .file
                .reopen()
                .map_err(|e| Error::io("cannot read the snapshot", e))?;
            Ok(match header.kind {
                Kind::Full => Box::new(file),
                Kind::Incremental => Box::new(Records {
                    file,
                    page_size: page_size as usize,
                    changed: Entries::new(&hashed.changed, Kind::Incremental, changed)
                        .map_err(|e| Error::io("cannot read the changed pages' temp file", e))?,
                    buf: delta_head(&header)?,
                    at: 0,
                }),
            })
        },
    )?;
    drop(snap);
    Ok(done)
}

enum Streamed {
    Done(Box<(Report, Option<Info>)>),
    /// The stream cannot zero the free pages: why, for the page copy instead.
    Instead(String),
}

/// Method `stream`: the pages come through the page sink (the read transaction, page 1 and
/// free-space zeroing of `stream`), hashed as they arrive on another thread; only the pages
/// that differ from the base are kept (an unnamed temp file), then compressed. A full backup
/// known before (first of a series, `full_every`) goes straight to compression in the same
/// pass; one found out after (the chain would outgrow a full one) takes a second pass in the
/// same read transaction. No copy of the database is written anywhere.
fn stream_run(ctx: &Ctx, base: &mut Base, predict: bool) -> Result<Streamed> {
    let req = ctx.req;
    let source = crate::stream::Source::open(ctx.conn, &req.schema, req.busy_timeout_ms)?;
    let crate::stream::Prepared {
        page1,
        header: head,
        free,
        tails,
    } = match source.prepare(predict, "method 'pages'")? {
        Ok(prepared) => prepared,
        Err(why) => return Ok(Streamed::Instead(why)),
    };
    let first_pass_ms = ms_since(ctx.started);
    let page_size = head.page_size as u32;
    let page_count = u64::from(head.page_count);
    let bytes = page_count * u64::from(page_size);
    let mut report = ctx.report(Method::Stream, None, bytes, page_size, page_count);
    let mut timings = Timings::default();
    let view = base.view(ctx, page_size)?;
    // In rollback-journal mode our read lock blocks every writer: the copy never waits for
    // what reads the pipe, it spills instead (WAL, memory: it waits).
    let spill = (source.is_own_file() && !head.wal).then(|| req.temp_dir.clone());
    let dir = &req.temp_dir;
    let hash_first = crate::backup::hash_first(
        req.if_changed,
        ctx.store,
        ctx.name,
        ctx.recipients.is_some(),
        ctx.codec,
    );
    let known_full = view.why_full(ctx, page_size, None);

    if known_full.is_none() || hash_first {
        let step = Instant::now();
        let meter = crate::progress::phase("taking a snapshot and hashing pages", Some(bytes));
        let tally = Tally::new(page_size as usize, view.base_map, known_full.is_none(), dir)
            .map_err(temp_fail(dir))?;
        let (tallied, copy_ms, spilled) = tally_pass(
            &source,
            &page1,
            &free,
            &tails,
            tally,
            meter,
            spill.clone(),
            dir,
        )?;
        timings.snapshot = first_pass_ms + copy_ms;
        timings.hash = ms_since(step).saturating_sub(copy_ms);
        if tallied.bytes != bytes {
            return Err(stream_length(tallied.bytes, bytes));
        }
        report.sha256 = dbfile::hex(&tallied.sha256);
        if req.if_changed {
            if let Some(same) = view.same_as(ctx, &tallied.sha256)? {
                return Ok(Streamed::Done(Box::new(ctx.skipped(report, timings, same))));
            }
        }
        let changed = tallied.changed_count;
        let why_full = known_full.or_else(|| view.why_full(ctx, page_size, Some(changed)));
        let header = view.header(
            ctx,
            &why_full,
            page_size,
            page_count,
            tallied.sha256,
            changed,
        );
        if header.kind == Kind::Incremental {
            // What is left comes from temp files: the read transaction ends here.
            drop(source);
            report.spilled_bytes = Some(spilled);
            let done = ctx.store_list_then_object(
                report,
                timings,
                &header,
                why_full,
                (&tallied.map, &tallied.changed),
                || {
                    let mut bodies = tallied.bodies.as_ref().ok_or_else(|| {
                        Error::new(ErrorKind::Io, "the changed pages were not kept")
                    })?;
                    bodies.seek(SeekFrom::Start(0)).map_err(temp_fail(dir))?;
                    Ok(Box::new(
                        io::Cursor::new(delta_head(&header)?)
                            .chain(BufReader::with_capacity(1 << 20, bodies)),
                    ))
                },
            )?;
            return Ok(Streamed::Done(Box::new(done)));
        }
        // A full one after all: a second pass, in the same read transaction, to compression.
        let meta_sha = if hash_first {
            report.sha256.clone()
        } else {
            String::new()
        };
        let known = Some(tallied.sha256);
        drop(tallied);
        report.spilled_bytes = Some(spilled);
        let done = full_pass(
            ctx, source, &page1, &free, &tails, report, timings, spill, meta_sha, known, why_full,
        )?;
        return Ok(Streamed::Done(Box::new(done)));
    }
    timings.snapshot = first_pass_ms;
    let done = full_pass(
        ctx,
        source,
        &page1,
        &free,
        &tails,
        report,
        timings,
        spill,
        String::new(),
        None,
        known_full,
    )?;
    Ok(Streamed::Done(Box::new(done)))
}

/// One pass of the stream into `tally` on another thread. Returns what it tallied, how long
/// the copy took and the bytes it spilled (rollback-journal mode).
#[allow(clippy::too_many_arguments)]
fn tally_pass(
    source: &crate::stream::Source,
    page1: &[u8],
    free: &crate::stream::FreeList,
    tails: &crate::stream::Tails,
    tally: Tally,
    meter: crate::progress::Meter,
    spill: Option<std::path::PathBuf>,
    dir: &Path,
) -> Result<(tally::Tallied, u64, u64)> {
    let pipe = crate::stream::Pipe::new(crate::stream::PIPE_BYTES, spill);
    std::thread::scope(|scope| {
        let mut reader = Metered {
            inner: crate::stream::PipeReader::new(&pipe),
            meter,
        };
        let mut tally = tally;
        let worker = crate::threads::spawn_scoped(scope, "backup-hash", move || {
            let mut buf = vec![0u8; 1 << 18];
            loop {
                let n = reader.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                tally.write_all(buf.get(..n).unwrap_or_default())?;
            }
            tally.finish()
        })?;
        let start = Instant::now();
        let streamed = source
            .emit(page1, free, tails, crate::stream::PipeWriter::new(&pipe))
            .map(|mut w| w.close(Ok(())));
        let copy_ms = ms_since(start);
        let joined = worker
            .join()
            .map_err(|_| Error::new(ErrorKind::Io, "the hashing thread failed"))?;
        match (streamed, joined) {
            (Ok(()), Ok(t)) => Ok((t, copy_ms, pipe.spilled().0)),
            // The hashing side stopped first (its temp files): that is the cause.
            (Err(e), Err(w)) if e.message.contains("compression stopped") => Err(temp_fail(dir)(w)),
            (Err(e), _) => Err(e),
            (Ok(()), Err(w)) => Err(temp_fail(dir)(w)),
        }
    })
}

/// A full backup streamed: the pages go through the page sink and a pipe to compression on
/// another thread, tallied (page hashes, sha256) on the way. The object is committed only
/// after its page list. `known`: the sha256 of an earlier pass of the same transaction,
/// which this one must match.
#[allow(clippy::too_many_arguments)]
fn full_pass(
    ctx: &Ctx,
    source: crate::stream::Source,
    page1: &[u8],
    free: &crate::stream::FreeList,
    tails: &crate::stream::Tails,
    mut report: Report,
    mut timings: Timings,
    spill: Option<std::path::PathBuf>,
    meta_sha: String,
    known: Option<[u8; 32]>,
    why_full: Option<String>,
) -> Result<(Report, Option<Info>)> {
    let req = ctx.req;
    let dir = &req.temp_dir;
    let (page_size, page_count, bytes) = (report.page_size, report.page_count, report.bytes);
    let pipe = crate::stream::Pipe::new(crate::stream::PIPE_BYTES, spill);
    let mut tally = Tally::new(page_size as usize, None, false, dir).map_err(temp_fail(dir))?;
    let step = Instant::now();
    let upload = ctx.store.put(ctx.name, &ctx.object_meta(meta_sha))?;
    let meter = crate::progress::phase("compressing and storing", Some(bytes));
    let (codec, level, threads, recipients) = (ctx.codec, ctx.level, req.threads, ctx.recipients);
    let (streamed, (compressed, counted)) = std::thread::scope(|scope| -> Result<_> {
        let reader = crate::stream::PipeReader::new(&pipe);
        let tally = &mut tally;
        let worker = crate::threads::spawn_scoped(scope, "backup-stream", move || {
            let mut input = tally::TallyReader {
                inner: Metered {
                    inner: reader,
                    meter,
                },
                tally,
            };
            let mut counted = CountingWriter {
                inner: upload,
                count: 0,
            };
            let result = compress(&mut input, &mut counted, codec, level, threads, recipients);
            // The trailer records the sha256 after the last block, as for any streamed backup.
            let result = result.and_then(|read| {
                if recipients.is_none() {
                    let hex = dbfile::hex(&input.tally.sha256());
                    crate::backup::append_trailer(&mut counted, codec, &hex, read)?;
                }
                Ok(read)
            });
            (result, counted)
        })?;
        source.stream_to(page1, free, tails, &pipe, worker)
    })?;
    let CountingWriter {
        inner: upload,
        count,
    } = counted;
    let tallied = tally.finish().map_err(temp_fail(dir));
    let checked = match (streamed, compressed, tallied) {
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Err(e),
        (Ok(copy_ms), Ok(read), Ok(t)) => {
            if read != bytes || t.bytes != bytes {
                Err(stream_length(read, bytes))
            } else if known.is_some_and(|k| k != t.sha256) {
                Err(Error::new(
                    ErrorKind::Io,
                    "the database changed between the hash and the copy (this should not \
                     happen within one read transaction): nothing was stored, try again",
                ))
            } else {
                Ok((copy_ms, t))
            }
        }
    };
    let (copy_ms, tallied) = match checked.and_then(|c| crate::interrupt::check().map(|()| c)) {
        Ok(c) => c,
        Err(e) => {
            upload.abort();
            return Err(e);
        }
    };
    timings.snapshot += copy_ms;
    timings.compress = ms_since(step);
    report.spilled_bytes = Some(report.spilled_bytes.unwrap_or(0) + pipe.spilled().0);
    let view_header = Header {
        kind: Kind::Full,
        page_size,
        page_count,
        sha256: tallied.sha256,
        time: req.time.timestamp(),
        depth: 0,
        name: ctx.name.to_string(),
        base: String::new(),
        full: ctx.name.to_string(),
        entries: page_count,
    };
    let list_bytes = match ctx.store_page_list(&view_header, &tallied.map, &tallied.changed) {
        Ok(n) => n,
        Err(e) => {
            upload.abort();
            return Err(e);
        }
    };
    let step = Instant::now();
    crate::progress::phase("committing", None);
    let stored = ctx.without_list_if_failed(upload.commit())?;
    timings.commit = ms_since(step);
    Ok(ctx.done(
        report,
        timings,
        &view_header,
        why_full,
        stored,
        count,
        list_bytes,
    ))
}

/// Removes page lists of the series whose backup is gone (a run killed between the two
/// writes, or a backup deleted by hand): never counted, and never left behind.
fn remove_orphans(
    store: &dyn Store,
    listing: &[Entry],
    sizes: &HashMap<String, u64>,
    series: &crate::naming::Series,
    current: &str,
    identity: Option<&Path>,
) {
    for entry in listing {
        if let Some(owner) = format::owner_of(&entry.name) {
            if owner != current
                && series.contains(owner)
                && !sizes.contains_key(owner)
                && is_page_list(store, &entry.name, identity)
            {
                let _ = store.delete(&entry.name);
            }
        }
    }
}

/// The most an incremental backup keeps in memory in proportion to the database's page count
/// (a bitmap of 1 bit per page while its base's hashes are gathered): everything else that
/// grows with the database (page hashes, changed pages) goes through unnamed temp files.
pub const MEMORY_BUDGET: u64 = 16 << 20;

fn memory_budget() -> u64 {
    // Lets a test show that memory does not grow with the database (debug builds only).
    #[cfg(debug_assertions)]
    if let Some(b) = std::env::var("SQLITE_BACKUP_TEST_MEMORY_BUDGET")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return b;
    }
    MEMORY_BUDGET
}

/// Refuses to hold `bytes` in memory for `what` when that passes the budget.
fn within_budget(bytes: u64, what: &str) -> Result<()> {
    let limit = memory_budget();
    if bytes > limit {
        return Err(Error::new(
            ErrorKind::Io,
            format!(
                "the {what} would take {bytes} bytes of memory, over the {limit} an incremental \
                 backup allows: use a larger page size (PRAGMA page_size, then VACUUM)"
            ),
        ));
    }
    Ok(())
}

/// How the errors of gathering the base's hashes (memory, temp files) begin: they are
/// shown, never taken for an unreadable chain (which would start a new full backup).
const BASE_MAP: &str = "gathering the base's page hashes: ";

/// An unnamed temp file in `dir` (nothing to clean after a kill), with the error other temp
/// files in `temp_dir` give.
fn unnamed(dir: &Path) -> Result<File> {
    temp::unnamed(dir)
        .map_err(|e| Error::io(format!("cannot create a file in {}", dir.display()), e))
}

fn temp_fail(dir: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |e| Error::io(format!("cannot use a temp file in {}", dir.display()), e)
}

/// The base's page hashes, gathered from its chain's page lists (newest link first, as the
/// walk reads them) into an unnamed temp file, 16 bytes per page at (page - 1) * 16: a page
/// takes its hash from the newest link that lists it. Memory: 1 bit per page, and a buffer.
struct BaseMap {
    file: File,
    dir: std::path::PathBuf,
    /// The newest link's page count: the base's.
    count: Option<u64>,
    /// Pages whose hash a newer link gave.
    seen: PageBits,
    /// Consecutive hashes not yet written, and the offset of the first.
    pending: Vec<u8>,
    pending_at: u64,
}

impl BaseMap {
    fn new(dir: &Path) -> Result<BaseMap> {
        Ok(BaseMap {
            file: unnamed(dir)?,
            dir: dir.to_path_buf(),
            count: None,
            seen: PageBits::default(),
            pending: Vec::with_capacity(1 << 16),
            pending_at: 0,
        })
    }

    fn flush(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            temp::write_all_at(&self.file, &self.pending, self.pending_at)
                .map_err(temp_fail(&self.dir))?;
            self.pending.clear();
        }
        Ok(())
    }

    /// The file and the base's page count, once the walk is done.
    fn finish(&mut self) -> Result<(&File, u64)> {
        self.flush()?;
        Ok((&self.file, self.count.unwrap_or(0)))
    }
}

impl format::Sink for BaseMap {
    fn start(&mut self, header: &Header) -> Result<()> {
        self.start_link(header)
            .map_err(|e| Error::new(e.kind, format!("{BASE_MAP}{}", e.message)))
    }
    fn entry(&mut self, page: u32, hash: &Hash) -> Result<()> {
        self.add(page, hash)
            .map_err(|e| Error::new(e.kind, format!("{BASE_MAP}{}", e.message)))
    }
}

impl BaseMap {
    fn start_link(&mut self, header: &Header) -> Result<()> {
        self.flush()?;
        if self.count.is_none() {
            let count = header.page_count;
            self.seen = PageBits::sized(
                count,
                "map of the base's pages",
                Error::usage("the database has too many pages for this machine"),
            )?;
            self.count = Some(count);
        }
        Ok(())
    }

    fn add(&mut self, page: u32, hash: &Hash) -> Result<()> {
        let i = u64::from(page.saturating_sub(1));
        // Pages past the base's count are not in it; a page listed again is kept once.
        if self.seen.set(i) != Some(true) {
            return Ok(());
        }
        let offset = i * format::HASH_LEN as u64;
        if self.pending.len() >= 1 << 16
            || (!self.pending.is_empty() && self.pending_at + self.pending.len() as u64 != offset)
        {
            self.flush()?;
        }
        if self.pending.is_empty() {
            self.pending_at = offset;
        }
        self.pending.extend_from_slice(hash);
        Ok(())
    }
}

/// (page number, hash) entries read back from a temp file: every page's hash in page order
/// (16 bytes each), or changed pages' records (u32 page number, 16-byte hash).
struct Entries<'a> {
    input: BufReader<&'a File>,
    kind: Kind,
    next: u32,
    left: u64,
}

impl<'a> Entries<'a> {
    fn new(file: &'a File, kind: Kind, count: u64) -> io::Result<Entries<'a>> {
        let mut f = file;
        f.seek(SeekFrom::Start(0))?;
        Ok(Entries {
            input: BufReader::with_capacity(1 << 16, file),
            kind,
            next: 1,
            left: count,
        })
    }
}

impl Iterator for Entries<'_> {
    type Item = io::Result<(u32, Hash)>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let page = match self.kind {
            Kind::Full => Ok(self.next),
            Kind::Incremental => format::array::<4>(&mut self.input).map(u32::from_le_bytes),
        };
        self.next = self.next.saturating_add(1);
        Some(
            page.and_then(|p| {
                format::array::<{ format::HASH_LEN }>(&mut self.input).map(|h| (p, h))
            }),
        )
    }
}

struct Hashed {
    sha256: [u8; 32],
    /// Page hashes of the snapshot in page order, 16 bytes each (an unnamed temp file).
    map: File,
    /// Pages that differ from the base (every page when there is none): (u32, hash) records.
    changed: File,
    changed_count: u64,
}

/// One pass over the snapshot for each hash, side by side: its sha256 on a thread of its own,
/// and on this one each page's hash and the pages that differ from `base` (the previous
/// backup's hashes and page count; none for none), read beside the snapshot in page order.
fn hash_pages(
    snap: &NamedTemp,
    page_size: u32,
    page_count: u64,
    base: Option<(&File, u64)>,
    dir: &Path,
) -> Result<Hashed> {
    let fail = |e| Error::io("cannot read the snapshot", e);
    let mut whole = snap.reopen().map_err(fail)?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let stop = &stop;
        let sha = crate::threads::spawn_scoped(scope, "backup-sha256", move || {
            let mut sha = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err(Error::interrupted());
                }
                let n = whole.read(&mut buf).map_err(fail)?;
                if n == 0 {
                    return Ok(<[u8; 32]>::from(sha.finalize()));
                }
                sha.update(buf.get(..n).unwrap_or_default());
            }
        })?;
        let pages = page_hashes(snap, page_size, page_count, base, dir);
        if pages.is_err() {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let sha256 = sha
            .join()
            .unwrap_or_else(|_| Err(Error::new(ErrorKind::Io, "hashing the snapshot failed")));
        let (map, changed, changed_count) = pages?;
        Ok(Hashed {
            sha256: sha256?,
            map,
            changed,
            changed_count,
        })
    })
}

/// Each page's hash (to a temp file), and the pages that differ from `base` (to another).
fn page_hashes(
    snap: &NamedTemp,
    page_size: u32,
    count: u64,
    base: Option<(&File, u64)>,
    dir: &Path,
) -> Result<(File, File, u64)> {
    let fail = |e| Error::io("cannot read the snapshot", e);
    let tmp = temp_fail(dir);
    let (base, had) = match base {
        Some((file, had)) => {
            let mut f = file;
            f.seek(SeekFrom::Start(0)).map_err(&tmp)?;
            (Some(BufReader::with_capacity(1 << 16, file)), had)
        }
        None => (None, 0),
    };
    let mut base = base;
    let mut map = io::BufWriter::with_capacity(1 << 16, unnamed(dir)?);
    let mut changed = io::BufWriter::with_capacity(1 << 16, unnamed(dir)?);
    let mut changed_count = 0u64;
    let mut input = BufReader::with_capacity(1 << 20, snap.reopen().map_err(fail)?);
    let mut page = vec![0u8; page_size as usize];
    let meter = crate::progress::phase("hashing pages", Some(count * u64::from(page_size)));
    for i in 0..count {
        if i % 4096 == 0 {
            crate::interrupt::check()?;
        }
        input.read_exact(&mut page).map_err(fail)?;
        let h = format::page_hash(&page);
        let same = match &mut base {
            Some(b) if i < had => format::array::<{ format::HASH_LEN }>(b).map_err(&tmp)? == h,
            _ => false,
        };
        if !same {
            let number = u32::try_from(i + 1).map_err(|_| Error::usage("too many pages"))?;
            changed.write_all(&number.to_le_bytes()).map_err(&tmp)?;
            changed.write_all(&h).map_err(&tmp)?;
            changed_count += 1;
        }
        map.write_all(&h).map_err(&tmp)?;
        meter.add(u64::from(page_size));
    }
    let map = map.into_inner().map_err(|e| tmp(e.into_error()))?;
    let changed = changed.into_inner().map_err(|e| tmp(e.into_error()))?;
    Ok((map, changed, changed_count))
}

/// The records of an incremental's object: the header, then (u32 page number, page) for each
/// changed page, read from the snapshot in page order.
struct Records<'a> {
    file: File,
    page_size: usize,
    changed: Entries<'a>,
    buf: Vec<u8>,
    at: usize,
}

impl Read for Records<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at >= self.buf.len() {
            let Some(entry) = self.changed.next() else {
                return Ok(0);
            };
            let (page, _) = entry?;
            self.buf.clear();
            self.buf.extend_from_slice(&page.to_le_bytes());
            self.buf.resize(4 + self.page_size, 0);
            let offset = u64::from(page.saturating_sub(1)) * self.page_size as u64;
            self.file.seek(SeekFrom::Start(offset))?;
            self.file
                .read_exact(self.buf.get_mut(4..).unwrap_or_default())?;
            self.at = 0;
        }
        let rest = self.buf.get(self.at..).unwrap_or_default();
        let n = rest.len().min(out.len());
        out.get_mut(..n)
            .unwrap_or_default()
            .copy_from_slice(rest.get(..n).unwrap_or_default());
        self.at += n;
        Ok(n)
    }
}

// ---- restore and verify ----

/// A database rebuilt from a chain, in a temp file.
pub struct Rebuilt {
    pub file: NamedTemp,
    pub sha256: String,
    pub bytes: u64,
    /// Stored bytes read: every backup of the chain.
    pub stored_bytes: u64,
    pub page_size: u32,
    pub codec: Codec,
}

/// Whether decompressed bytes are an incremental's object.
pub fn is_incremental(head: &[u8]) -> bool {
    head.starts_with(DELTA_MAGIC)
}

/// Rebuilds the database incremental backup `name` restores to, in a temp file in `dir`. The
/// page lists say which link holds the final content of each page (the newest that has it,
/// else the full backup), so every page is written once: the full backup is streamed on this
/// thread while the incrementals are read on another, each writing only its own pages (every
/// page read is checked against its page list). Then the file is cut to the page count and
/// the whole checked against the sha256 recorded when the backup was taken. A missing or
/// damaged link is an error naming it. Memory: 1 bit per page (the page lists go through
/// unnamed temp files, see `LinkLists`).
/// An encrypted chain's page lists and objects are decrypted with `identity`.
pub fn rebuild(
    store: &dyn Store,
    name: &str,
    dir: &Path,
    identity: Option<&Path>,
) -> Result<Rebuilt> {
    let target = store.url(name);
    let mut lists = LinkLists::new(dir)?;
    let links = chain::walk(store, name, false, identity, &mut lists)
        .map_err(|e| e.context(format!("cannot rebuild {target} from its chain")))?;
    let (seen, count, entries) = lists.finish()?;
    // Full first, like `links`; the full's list holds no entries.
    let Some((_, entries)) = entries.split_first() else {
        return Err(Error::corrupt(format!("{target} has an empty chain")));
    };
    let Some((full, rest)) = links.split_first() else {
        return Err(Error::corrupt(format!("{target} has an empty chain")));
    };
    let Some(last) = links.last() else {
        return Err(Error::corrupt(format!("{target} has an empty chain")));
    };
    let page_size = last.list.header.page_size;
    if rest.iter().any(|l| l.list.header.page_size != page_size)
        || full.list.header.page_size != page_size
    {
        return Err(Error::corrupt(format!(
            "the chain of {target} mixes page sizes: its page lists are damaged"
        )));
    }
    let file = temp::named(dir, temp::Ext::Db)?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let ctx = Apply {
        store,
        target: &target,
        name,
        dir,
        file: file.as_file(),
        seen: &seen,
        count,
        page_size: page_size as usize,
        stop: &stop,
        identity,
    };
    let (full_read, incrementals) = std::thread::scope(|scope| -> Result<_> {
        let ctx = &ctx;
        let others = crate::threads::spawn_scoped(scope, "restore-incrementals", move || {
            let mut read = 0u64;
            let mut codec = None;
            for (link, entries) in rest.iter().zip(entries) {
                let (n, c) = ctx.incremental(link, entries)?;
                read += n;
                codec = Some(c);
            }
            Ok::<_, Error>((read, codec))
        })?;
        let full_read = ctx.full(full);
        if full_read.is_err() {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let incrementals = others.join().unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Io,
                "applying the incrementals failed",
            ))
        });
        // The full's error first: the incrementals' thread may only have been stopped by it.
        let full_read = full_read?;
        Ok((full_read, incrementals?))
    })?;
    let (full_bytes, codec_full) = full_read;
    let (inc_bytes, codec_last) = incrementals;
    let write_fail = |e| Error::io(format!("cannot write a temp file in {}", dir.display()), e);
    file.as_file()
        .set_len(last.list.header.bytes())
        .map_err(write_fail)?;

    // The whole, against what was recorded when the backup was taken.
    crate::progress::phase("checking the rebuilt database", None);
    let mut whole = file.reopen().map_err(write_fail)?;
    whole.seek(SeekFrom::Start(0)).map_err(write_fail)?;
    let sha256 = dbfile::sha256_reader(&mut whole, "the rebuilt database")?;
    if sha256 != dbfile::hex(&last.list.header.sha256) {
        return Err(Error::corrupt(format!(
            "backup {} (needed by {target}) is damaged: the database rebuilt for {target} does \
             not match the sha256 recorded when it was taken, and every page of the \
             incrementals matched its page list",
            store.url(&full.name)
        )));
    }
    file.as_file()
        .sync_all()
        .map_err(|e| Error::io("cannot sync the temp file", e))?;
    Ok(Rebuilt {
        file,
        sha256,
        bytes: last.list.header.bytes(),
        stored_bytes: full_bytes + inc_bytes,
        page_size,
        codec: codec_last.unwrap_or(codec_full),
    })
}

/// A record of an incremental's page list as a rebuild keeps it: page number, hash, and
/// whether this link holds the page's final content (1) or a newer one does (0).
const LINK_RECORD: usize = 4 + format::HASH_LEN + 1;

/// One bit a page (page `i + 1` at bit `i`), sized once from a page count within the memory
/// budget.
#[derive(Default)]
struct PageBits(Vec<u64>);

impl PageBits {
    fn sized(count: u64, what: &str, too_many: Error) -> Result<PageBits> {
        within_budget(count.div_ceil(8), what)?;
        let words = usize::try_from(count.div_ceil(64)).map_err(|_| too_many)?;
        let mut bits = Vec::new();
        bits.try_reserve_exact(words)
            .map_err(|_| Error::new(ErrorKind::Io, "out of memory for the page map"))?;
        bits.resize(words, 0);
        Ok(PageBits(bits))
    }

    fn get(&self, i: u64) -> bool {
        usize::try_from(i / 64)
            .ok()
            .and_then(|w| self.0.get(w))
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Sets bit `i`: whether it was clear; None past the end.
    fn set(&mut self, i: u64) -> Option<bool> {
        let word = usize::try_from(i / 64)
            .ok()
            .and_then(|w| self.0.get_mut(w))?;
        let clear = *word & (1 << (i % 64)) == 0;
        *word |= 1 << (i % 64);
        Some(clear)
    }
}

/// Each link's page list, read newest first, into an unnamed temp file of its own, each entry
/// marked with whether it is the newest of its page; and the pages some incremental holds (1
/// bit a page, below the restored database's page count). Memory independent of the size of
/// the database and of the page lists.
struct LinkLists {
    dir: std::path::PathBuf,
    count: Option<u64>,
    seen: PageBits,
    files: Vec<File>,
    writing: Option<io::BufWriter<File>>,
}

impl LinkLists {
    fn new(dir: &Path) -> Result<LinkLists> {
        Ok(LinkLists {
            dir: dir.to_path_buf(),
            count: None,
            seen: PageBits::default(),
            files: Vec::new(),
            writing: None,
        })
    }

    fn close(&mut self) -> Result<()> {
        if let Some(w) = self.writing.take() {
            let file = w
                .into_inner()
                .map_err(|e| temp_fail(&self.dir)(e.into_error()))?;
            self.files.push(file);
        }
        Ok(())
    }

    /// The bitmap, the page count, and the files full first.
    fn finish(mut self) -> Result<(PageBits, u64, Vec<File>)> {
        self.close()?;
        self.files.reverse();
        Ok((self.seen, self.count.unwrap_or(0), self.files))
    }
}

impl format::Sink for LinkLists {
    fn start(&mut self, header: &Header) -> Result<()> {
        self.close()?;
        if self.count.is_none() {
            let count = header.page_count;
            self.seen = PageBits::sized(
                count,
                "map of the chain's pages",
                Error::corrupt("the chain has too many pages for this machine"),
            )?;
            self.count = Some(count);
        }
        let file = unnamed(&self.dir)?;
        self.writing = Some(io::BufWriter::with_capacity(1 << 16, file));
        Ok(())
    }

    fn entry(&mut self, page: u32, hash: &Hash) -> Result<()> {
        let i = u64::from(page.saturating_sub(1));
        let mine = i < self.count.unwrap_or(0) && self.seen.set(i) == Some(true);
        let Some(w) = self.writing.as_mut() else {
            return Ok(());
        };
        let fail = temp_fail(&self.dir);
        w.write_all(&page.to_le_bytes())
            .and_then(|()| w.write_all(hash))
            .and_then(|()| w.write_all(&[u8::from(mine)]))
            .map_err(fail)
    }
}

/// What both threads of a rebuild share.
struct Apply<'a> {
    store: &'a dyn Store,
    target: &'a str,
    name: &'a str,
    dir: &'a Path,
    file: &'a File,
    /// Pages an incremental holds the final content of (1 bit each), below `count`.
    seen: &'a PageBits,
    count: u64,
    page_size: usize,
    stop: &'a std::sync::atomic::AtomicBool,
    identity: Option<&'a Path>,
}

impl Apply<'_> {
    fn missing(&self, link: &str, e: Error) -> Error {
        if e.kind == ErrorKind::NotFound {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "backup {} is missing, and {} builds on it: restore an older backup, or a \
                     newer full one",
                    self.store.url(link),
                    self.target
                ),
            )
        } else {
            e
        }
    }

    fn damaged(&self, link: &str, why: String) -> Error {
        let needed = if link == self.name {
            String::new()
        } else {
            format!(" (needed by {})", self.target)
        };
        Error::corrupt(format!(
            "backup {}{needed} is damaged: {why}",
            self.store.url(link)
        ))
    }

    fn write(&self, page: u32, bytes: &[u8]) -> Result<()> {
        let offset = u64::from(page.saturating_sub(1)) * self.page_size as u64;
        temp::write_all_at(self.file, bytes, offset).map_err(|e| {
            Error::io(
                format!("cannot write a temp file in {}", self.dir.display()),
                e,
            )
        })
    }

    /// Streams the full backup, writing the pages no incremental replaces. Returns the stored
    /// bytes read and its codec.
    fn full(&self, full: &chain::Link) -> Result<(u64, Codec)> {
        let limit = full.list.header.bytes();
        crate::progress::phase("reading the full backup", Some(limit));
        let mut counted = CountingReader {
            inner: self
                .store
                .get(&full.name)
                .map_err(|e| self.missing(&full.name, e))?,
            count: 0,
        };
        let url = self.store.url(&full.name);
        let (_, plain) = crate::crypt::open(Box::new(&mut counted), self.identity, &url)?;
        let (codec, reader) = codec::decoder(plain)?;
        let mut reader = BufReader::with_capacity(1 << 20, reader);
        let mut page = vec![0u8; self.page_size];
        let pages = full.list.header.page_count;
        for number in 1..=pages {
            if number % 4096 == 0 {
                crate::interrupt::check()?;
            }
            reader.read_exact(&mut page).map_err(|e| {
                self.damaged(&full.name, format!("cannot read page {number} ({e})"))
            })?;
            if number <= self.count && !self.seen.get(number - 1) {
                self.write(u32::try_from(number).unwrap_or(u32::MAX), &page)?;
            }
        }
        let mut extra = [0u8; 1];
        match reader.read(&mut extra) {
            Ok(0) => {}
            Ok(_) => {
                return Err(self.damaged(
                    &full.name,
                    format!("it is longer than its page list says ({limit} bytes)"),
                ))
            }
            Err(e) => return Err(self.damaged(&full.name, format!("cannot read it ({e})"))),
        }
        drop(reader);
        Ok((counted.count, codec))
    }

    /// Reads incremental `link` (number `id` in the chain), checking every page against its
    /// page list and writing those it holds the final content of.
    fn incremental(&self, link: &chain::Link, entries: &File) -> Result<(u64, Codec)> {
        let url = self.store.url(&link.name);
        let bad = |what: String| self.damaged(&link.name, what);
        let mut counted = CountingReader {
            inner: self
                .store
                .get(&link.name)
                .map_err(|e| self.missing(&link.name, e))?,
            count: 0,
        };
        let (_, plain) = crate::crypt::open(Box::new(&mut counted), self.identity, &url)?;
        let (codec, reader) = codec::decoder(plain)?;
        let mut reader = BufReader::with_capacity(1 << 20, reader);
        let header = Header::read(DELTA_MAGIC, &mut reader, &url)?;
        if header != link.list.header {
            return Err(bad("its header does not match its page list".into()));
        }
        let mut page = vec![0u8; self.page_size];
        let temp = |e| {
            Error::io(
                format!("cannot read a temp file in {}", self.dir.display()),
                e,
            )
        };
        let mut list = BufReader::with_capacity(1 << 16, entries);
        list.seek(SeekFrom::Start(0)).map_err(temp)?;
        for i in 0..link.list.header.entries {
            if i % 1024 == 0 && self.stop.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Error::interrupted());
            }
            let record = format::array::<{ LINK_RECORD }>(&mut list).map_err(temp)?;
            let (number, rest) = record.split_at(4);
            let (hash, mine) = rest.split_at(format::HASH_LEN);
            let number = u32::from_le_bytes(number.try_into().unwrap_or_default());
            let mut n = [0u8; 4];
            reader
                .read_exact(&mut n)
                .and_then(|()| reader.read_exact(&mut page))
                .map_err(|e| bad(format!("cannot read it ({e})")))?;
            if u32::from_le_bytes(n) != number || format::page_hash(&page) != hash {
                return Err(bad(format!("page {number} does not match its page list")));
            }
            if mine == [1] {
                self.write(number, &page)?;
            }
        }
        let mut extra = [0u8; 1];
        match reader.read(&mut extra) {
            Ok(0) => {}
            Ok(_) => return Err(bad("it has data after its last page".into())),
            Err(e) => return Err(bad(format!("cannot read it ({e})"))),
        }
        drop(reader);
        Ok((counted.count, codec))
    }
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

// ---- listing and retention ----

/// The chains retention must not break: the header of each page list read, and the
/// backups whose page list is encrypted with no identity that reads it (with why).
#[derive(Debug, Default)]
pub struct Chains {
    pub headers: HashMap<String, Header>,
    pub locked: HashMap<String, &'static str>,
}

/// The kind and base of each backup in `names` that has a page list (read from the page
/// list's header), for backup_list and retention. `listed` is every name in the location.
/// Encrypted page lists are read with `identity`; those it does not open (an older key's)
/// are locked, but a key that opens none of them is an error (most likely the wrong file).
pub fn kinds(
    store: &dyn Store,
    names: &[&str],
    listed: &HashSet<&str>,
    identity: Option<&Path>,
) -> Result<Chains> {
    let mut out = Chains::default();
    let mut opened = 0usize;
    let mut refused: Option<Error> = None;
    for name in names {
        let pages = format::pages_name(name);
        if !listed.contains(pages.as_str()) {
            continue;
        }
        let url = store.url(&pages);
        match open_list(store, &pages, identity) {
            Ok(Opened::List(encrypted, mut input)) => {
                let header = format::read_page_list_header(&mut input, &url)?;
                out.headers
                    .insert(name.to_string(), relative_to(name, header));
                opened += usize::from(encrypted);
            }
            Ok(Opened::Locked) => {
                out.locked.insert(name.to_string(), LOCKED);
            }
            // Someone else's file that merely ends in .pages: the backup is not in a chain.
            Ok(Opened::Foreign) => {}
            Err(e) if e.kind == ErrorKind::Auth => {
                out.locked.insert(name.to_string(), NOT_OPENED);
                refused.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    match refused {
        Some(e) if opened == 0 => Err(e),
        _ => Ok(out),
    }
}

/// What a file named like a page list turned out to be.
enum Opened<'a> {
    /// A page list (decrypted when it was an age file: true), from its first byte.
    List(bool, Box<dyn Read + Send + 'a>),
    /// An age file, and no identity to tell whether it is an encrypted page list.
    Locked,
    /// Not a page list: someone else's file.
    Foreign,
}

/// Opens page list `pages`: a plain one reads at most its header's size; an encrypted one (an
/// age file) is decrypted with `identity` and its magic checked after decryption.
fn open_list<'a>(store: &'a dyn Store, pages: &str, identity: Option<&Path>) -> Result<Opened<'a>> {
    let url = store.url(pages);
    let fail = |e| Error::io(format!("cannot read {url}"), e);
    let mut input = store.read_head(pages, format::MAX_HEADER)?;
    let mut first = Vec::new();
    (&mut input)
        .take(32)
        .read_to_end(&mut first)
        .map_err(fail)?;
    if first.starts_with(format::PAGES_MAGIC) {
        return Ok(Opened::List(
            false,
            Box::new(io::Cursor::new(first).chain(input)),
        ));
    }
    if !crate::crypt::detect(&first) {
        return Ok(Opened::Foreign);
    }
    if identity.is_none() {
        return Ok(Opened::Locked);
    }
    drop(input);
    let (_, mut plain) = crate::crypt::open(store.get(pages)?, identity, &url)?;
    let mut magic = Vec::new();
    (&mut plain)
        .take(16)
        .read_to_end(&mut magic)
        .map_err(fail)?;
    if magic != format::PAGES_MAGIC {
        return Ok(Opened::Foreign);
    }
    Ok(Opened::List(
        true,
        Box::new(io::Cursor::new(magic).chain(plain)),
    ))
}

/// Splits page lists off `entries`: the rest, and the page lists whose backup is not in
/// `listed` (orphans). Page lists of listed backups go with them and are dropped here.
pub fn page_lists_apart(entries: Vec<Entry>, listed: &HashSet<&str>) -> (Vec<Entry>, Vec<Entry>) {
    let mut rest = Vec::new();
    let mut orphans = Vec::new();
    for entry in entries {
        match format::owner_of(&entry.name) {
            Some(owner) if listed.contains(owner) => {}
            Some(_) => orphans.push(entry),
            None => rest.push(entry),
        }
    }
    (rest, orphans)
}

/// Retention never breaks a chain: every backup that a kept one builds on (directly or
/// through others) is kept too, with the reason "needed by <name>".
pub fn keep_needed(plan: &mut crate::retention::Plan, chains: &Chains) {
    // A page list that cannot be read might be needed by any kept backup: kept, whole chains.
    let (locked, delete): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut plan.delete)
        .into_iter()
        .partition(|e| chains.locked.contains_key(&e.name));
    plan.delete = delete;
    for entry in locked {
        let why = chains.locked.get(&entry.name).copied().unwrap_or(LOCKED);
        plan.keep.push(crate::retention::Kept {
            entry,
            reasons: vec![why.to_string()],
        });
    }
    let chains = &chains.headers;
    let mut queue: Vec<String> = plan.keep.iter().map(|k| k.entry.name.clone()).collect();
    let mut seen: HashSet<String> = queue.iter().cloned().collect();
    while let Some(name) = queue.pop() {
        let Some(base) = chains.get(&name).map(|h| h.base.clone()) else {
            continue;
        };
        if base.is_empty() {
            continue;
        }
        let reason = format!("needed by {name}");
        if let Some(at) = plan.delete.iter().position(|e| e.name == base) {
            let entry = plan.delete.remove(at);
            plan.keep.push(crate::retention::Kept {
                entry,
                reasons: vec![reason],
            });
        } else if let Some(kept) = plan.keep.iter_mut().find(|k| k.entry.name == base) {
            if !kept.reasons.contains(&reason) {
                kept.reasons.push(reason);
            }
        }
        if seen.insert(base.clone()) {
            queue.push(base);
        }
    }
    plan.keep
        .sort_by(|a, b| crate::retention::newest_first(&a.entry, &b.entry));
}

/// Why retention keeps a backup whose page list it cannot read.
pub const LOCKED: &str = "its page list is encrypted and there is no identity_file to read it: \
                          kept, since a kept backup may build on it";
const NOT_OPENED: &str = "its page list is encrypted to a key that identity_file does not hold: \
                          kept, since a kept backup may build on it";

/// The kind and base of `name` for backup_list, when it has a page list; a page list that
/// cannot be read shows as kind `damaged`, an encrypted one without (or not opened by) the
/// identity as kind `encrypted`.
pub fn link_of(
    store: &dyn Store,
    name: &str,
    listed: &HashSet<&str>,
    identity: Option<&Path>,
) -> Option<crate::job::Link> {
    let pages = format::pages_name(name);
    if !listed.contains(pages.as_str()) {
        return None;
    }
    let locked = crate::job::Link {
        kind: "encrypted",
        base: None,
        sha256: None,
    };
    let mut encrypted = false;
    let header = match open_list(store, &pages, identity) {
        Ok(Opened::List(sealed, mut input)) => {
            encrypted = sealed;
            format::read_page_list_header(&mut input, &store.url(&pages))
                .map(|h| relative_to(name, h))
        }
        Ok(Opened::Locked) => return Some(locked),
        Ok(Opened::Foreign) => return None,
        Err(e) if e.kind == ErrorKind::Auth => return Some(locked),
        Err(e) => Err(e),
    };
    Some(match header {
        Ok(h) => crate::job::Link {
            kind: h.kind.name(),
            sha256: encrypted.then(|| dbfile::hex(&h.sha256)),
            base: (h.kind == Kind::Incremental).then_some(h.base),
        },
        Err(_) => crate::job::Link {
            kind: "damaged",
            base: None,
            sha256: None,
        },
    })
}

/// A header's base and full names as seen from where `name` (the backup, as listed) is: page
/// lists record names relative to the location the backup was taken in, which may be below
/// the one listed (an S3 prefix listed from the bucket).
fn relative_to(name: &str, mut header: Header) -> Header {
    let prefix = name.strip_suffix(&header.name).unwrap_or_default();
    if !header.base.is_empty() {
        header.base = format!("{prefix}{}", header.base);
    }
    header.full = format!("{prefix}{}", header.full);
    header
}

/// Whether `name` starts with a page list's magic (after decryption with `identity`, for an
/// encrypted one): only then is it ours to delete.
pub fn is_page_list(store: &dyn Store, name: &str, identity: Option<&Path>) -> bool {
    matches!(open_list(store, name, identity), Ok(Opened::List(..)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, minute: i64) -> Entry {
        Entry {
            name: name.to_string(),
            url: format!("/b/{name}"),
            size: 1,
            modified: chrono::DateTime::from_timestamp(minute * 60, 0).unwrap_or_default(),
            sha256: None,
        }
    }

    fn header(kind: Kind, page_count: u64) -> Header {
        Header {
            kind,
            page_size: 512,
            page_count,
            sha256: [0; 32],
            time: 0,
            depth: 0,
            name: "n".into(),
            base: String::new(),
            full: "f".into(),
            entries: 0,
        }
    }

    /// The newest link that lists a page gives its hash; pages past the newest count are out.
    /// Links come newest first, as the walk reads them.
    #[test]
    fn the_base_map_and_link_lists_take_each_page_from_the_newest_link() {
        use format::Sink;
        let dir = tempfile::tempdir().unwrap();
        let links: [(Kind, u64, Vec<u32>); 3] = [
            (Kind::Incremental, 5, vec![2, 5]),
            (Kind::Incremental, 6, vec![2, 3, 6]),
            (Kind::Full, 4, vec![1, 2, 3, 4]),
        ];
        let hash = |link: usize, page: u32| [link as u8 * 16 + page as u8; 16];
        let mut map = BaseMap::new(dir.path()).unwrap();
        let mut lists = LinkLists::new(dir.path()).unwrap();
        for (l, (kind, count, pages)) in links.iter().enumerate() {
            map.start(&header(*kind, *count)).unwrap();
            lists.start(&header(*kind, *count)).unwrap();
            for &p in pages {
                map.entry(p, &hash(l, p)).unwrap();
                if *kind == Kind::Incremental {
                    lists.entry(p, &hash(l, p)).unwrap();
                }
            }
        }
        let (file, count) = map.finish().unwrap();
        assert_eq!(count, 5);
        let got: Vec<Hash> = Entries::new(file, Kind::Full, count)
            .unwrap()
            .map(|e| e.unwrap().1)
            .collect();
        assert_eq!(
            got,
            [hash(2, 1), hash(0, 2), hash(1, 3), hash(2, 4), hash(0, 5)]
        );
        let (seen, count, files) = lists.finish().unwrap();
        assert_eq!(count, 5);
        let owned: Vec<bool> = (0..5).map(|i| seen.get(i)).collect();
        assert_eq!(owned, [false, true, true, false, true]);
        // Full first; each record marked with whether it is the newest of its page.
        assert_eq!(files.len(), 3);
        let marks = |f: &File| {
            let mut bytes = Vec::new();
            let mut f = f;
            f.seek(SeekFrom::Start(0)).unwrap();
            f.read_to_end(&mut bytes).unwrap();
            bytes
                .chunks(LINK_RECORD)
                .map(|r| (r[0], r[LINK_RECORD - 1]))
                .collect::<Vec<_>>()
        };
        assert_eq!(marks(&files[0]), []);
        assert_eq!(marks(&files[1]), [(2, 0), (3, 1), (6, 0)]);
        assert_eq!(marks(&files[2]), [(2, 1), (5, 1)]);
    }

    /// A backup whose page list cannot be read is never deleted: any kept one may need it.
    #[test]
    fn locked_page_lists_are_kept_with_the_reason() {
        let mut plan = crate::retention::Plan {
            keep: vec![crate::retention::Kept {
                entry: entry("c.zst.age", 3),
                reasons: vec!["last 1".into()],
            }],
            delete: vec![entry("b.zst.age", 2), entry("a.zst", 1)],
        };
        let mut chains = Chains::default();
        chains.locked.insert("b.zst.age".into(), LOCKED);
        keep_needed(&mut plan, &chains);
        let kept: Vec<&str> = plan.keep.iter().map(|k| k.entry.name.as_str()).collect();
        assert_eq!(kept, ["c.zst.age", "b.zst.age"]);
        assert_eq!(plan.keep[1].reasons, [LOCKED]);
        // A plain backup without a page list is no one's base: retention decides alone.
        assert_eq!(plan.delete, [entry("a.zst", 1)]);
    }
}
