//! A streaming GetObject that survives dropped connections: when the body breaks off, it asks
//! for the rest with `Range: bytes=N-` (pinned to the same object version with `If-Match`), so a
//! large download resumes instead of restarting. Resumptions share the request retry budget.

use std::io::{self, Read};
use std::sync::Arc;

use ureq::BodyReader;

use super::client::{header, Client};
use super::errors::Target;
use super::request::Range;
use crate::error::{Error, Kind, Result};

pub struct Download {
    client: Arc<Client>,
    key: String,
    target: Target,
    body: Option<BodyReader<'static>>,
    /// Bytes handed to the caller so far.
    offset: u64,
    /// Object length, from the first response.
    total: Option<u64>,
    etag: Option<String>,
    /// Resumptions left.
    retries_left: u32,
    retried: u32,
}

impl Download {
    /// Sends the first GET, so a missing object is an error here and not at the first read.
    pub fn open(client: Arc<Client>, key: String, target: Target) -> Result<Download> {
        let retries_left = client.retries;
        let mut download = Download {
            client,
            key,
            target,
            body: None,
            offset: 0,
            total: None,
            etag: None,
            retries_left,
            retried: 0,
        };
        download.request()?;
        Ok(download)
    }

    /// GET from `offset` on (with retries), leaving the body ready to read.
    fn request(&mut self) -> Result<()> {
        // A resumed GET asks for the rest of the same object (If-Match its ETag).
        let range = Range {
            from: self.offset,
            to: None,
            if_match: self.etag.as_deref().filter(|_| self.offset > 0),
        };
        let response = self.client.get_object(&self.key, &range, &self.target)?;
        let status = response.status().as_u16();
        let headers = response.headers();
        if self.etag.is_none() {
            self.etag = header(headers, "etag").map(str::to_string);
        }
        let range_start = header(headers, "content-range").and_then(range_start);
        if self.total.is_none() {
            self.total = header(headers, "content-length").and_then(|v| v.parse().ok());
        }
        let mut body = response.into_body().into_reader();
        if status == 206 {
            if range_start != Some(self.offset) {
                return Err(Error::new(
                    Kind::Remote,
                    format!(
                        "{}: the server resumed at the wrong offset",
                        self.target.url
                    ),
                ));
            }
        } else if self.offset > 0 {
            // The server ignored the range: skip what the caller already has.
            let skip = self.offset;
            let copied = io::copy(&mut (&mut body).take(skip), &mut io::sink())
                .map_err(|e| self.client.io_error(e))?;
            if copied != skip {
                return Err(Error::new(
                    Kind::Transient,
                    format!("{}: the download broke off", self.target.url),
                ));
            }
        }
        self.body = Some(body);
        Ok(())
    }

    /// After a broken body: wait, then ask for the rest, while the budget lasts.
    fn resume(&mut self, cause: Error) -> Result<()> {
        self.body = None;
        if cause.kind != Kind::Transient || self.retries_left == 0 {
            return Err(cause);
        }
        self.retries_left -= 1;
        self.retried += 1;
        self.client.backoff(self.retried);
        self.request()
    }
}

/// `bytes 100-199/200` → 100.
fn range_start(value: &str) -> Option<u64> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    rest.split('-').next()?.trim().parse().ok()
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(body) = self.body.as_mut() else {
                if self.total.is_some_and(|t| self.offset >= t) {
                    return Ok(0);
                }
                let cause = Error::new(
                    Kind::Transient,
                    format!("{}: the download broke off", self.target.url),
                );
                self.resume(cause).map_err(Error::into_io)?;
                continue;
            };
            match body.read(buf) {
                Ok(0) => {
                    self.body = None;
                    match self.total {
                        // Ended early without an error: ask for the rest.
                        Some(total) if self.offset < total => continue,
                        _ => return Ok(0),
                    }
                }
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let cause = self.client.io_error(e);
                    self.resume(cause).map_err(Error::into_io)?;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_content_range() {
        assert_eq!(super::range_start("bytes 100-199/200"), Some(100));
        assert_eq!(super::range_start("bytes */200"), None);
    }
}
