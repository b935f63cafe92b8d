//! The transport: signs nothing itself (`request` builds the signed requests, at each attempt), sends one
//! request with ureq, reads S3 errors, and retries transient failures in one place
//! (`with_retries`) with exponential backoff and full jitter.

use std::cell::Cell;
use std::io::Read;
use std::time::Duration;

use rusty_s3::Method;
use ureq::http::{HeaderMap, Response};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, DefaultConnector, NextTimeout, Transport,
};
use ureq::{Agent, Body};

use super::config::{display_endpoint, Resolved};
use super::errors::{self, Target, Timeouts};
use super::request::Request;
use crate::error::{Error, Kind, Result};

/// Largest non-streamed response we read (a ListObjectsV2 page of 1000 keys is ~300 KiB).
const MAX_SMALL_BODY: u64 = 16 << 20;

/// A fully read answer.
pub struct Reply {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

pub fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub struct Client {
    agent: Agent,
    /// For `request`, which signs.
    pub(super) bucket: rusty_s3::Bucket,
    /// Asked at every request `request` signs: temporary credentials are refreshed.
    pub(super) credentials: super::credentials::Provider,
    /// For messages: scheme, host, port, path; never credentials.
    pub endpoint: String,
    timeouts: Timeouts,
    pub retries: u32,
    backoff_base: Duration,
    backoff_cap: Duration,
    /// Encryption and storage-class headers, for `request`.
    pub(super) encryption: super::sse::Encryption,
}

impl Client {
    pub fn new(bucket_name: &str, cfg: &Resolved) -> Result<Client> {
        let style = if cfg.path_style {
            rusty_s3::UrlStyle::Path
        } else {
            rusty_s3::UrlStyle::VirtualHost
        };
        let endpoint = display_endpoint(&cfg.endpoint);
        let bucket = rusty_s3::Bucket::new(
            cfg.endpoint.clone(),
            style,
            bucket_name.to_string(),
            cfg.region.clone(),
        )
        .map_err(|_| {
            Error::usage(format!(
                "cannot address bucket '{bucket_name}' at {endpoint}{}",
                if cfg.path_style {
                    ""
                } else {
                    ": try the option path_style = true"
                }
            ))
        })?;
        let credentials = super::credentials::Provider::new(&cfg.secrets, cfg.refresh.clone());
        let config = Agent::config_builder()
            // 4xx/5xx are answers to read (S3's XML error), not transport errors.
            .http_status_as_error(false)
            // A redirect from S3 means a wrong region or endpoint: report it, don't follow it
            // (following would resend a signed PUT somewhere else).
            .max_redirects(0)
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_resolve(Some(cfg.connect_timeout))
            .timeout_per_read(Some(cfg.timeout))
            .timeout_per_write(Some(cfg.timeout))
            // Byte offsets for resumed downloads must be offsets of the stored bytes.
            .accept_encoding("identity")
            .user_agent(concat!("sqlite-backup/", env!("CARGO_PKG_VERSION")))
            .build();
        let connector = DefaultConnector::new().chain(HearRefusals);
        Ok(Client {
            // Our resolver: ureq's starts threads with a panicking `thread::spawn`.
            agent: Agent::with_parts(config, connector, crate::threads::Resolver),
            bucket,
            credentials,
            endpoint,
            timeouts: Timeouts {
                connect: cfg.connect_timeout,
                request: cfg.timeout,
            },
            retries: cfg.retries,
            backoff_base: cfg.backoff_base,
            backoff_cap: cfg.backoff_base * 25,
            encryption: cfg.encryption.clone(),
        })
    }

    /// Sends the request `sign` makes (with retries) and reads the whole answer. `sign` runs
    /// at each attempt: a retry is signed again, with credentials refreshed meanwhile.
    pub fn call<'r>(
        &self,
        sign: impl Fn() -> Result<Request<'r>>,
        target: &Target,
    ) -> Result<Reply> {
        self.with_retries(|| {
            let req = sign()?;
            let response = self.send_once(&req, target)?;
            let (parts, body) = response.into_parts();
            let body = body
                .into_with_config()
                .limit(MAX_SMALL_BODY)
                .read_to_vec()
                .map_err(|e| errors::from_transport(e, &self.endpoint, &self.timeouts))?;
            // CompleteMultipartUpload may answer 200 and then fail in the body.
            if req.method == Method::Post && body_is_error(&body) {
                let code = errors::error_code(&body);
                let status = match code.as_deref() {
                    Some("InternalError" | "SlowDown" | "ServiceUnavailable") | None => 500,
                    Some("PreconditionFailed") => 412,
                    Some(_) => 400,
                };
                return Err(errors::from_status(status, code.as_deref(), None, target));
            }
            Ok(Reply {
                headers: parts.headers,
                body,
            })
        })
    }

    /// Sends the request `sign` makes (with retries, each signed again) and returns the
    /// successful response with its body unread, for streaming downloads.
    pub fn open<'r>(
        &self,
        sign: impl Fn() -> Result<Request<'r>>,
        target: &Target,
    ) -> Result<Response<Body>> {
        self.with_retries(|| self.send_once(&sign()?, target))
    }

    /// The one retry loop: `attempt` is tried up to `1 + retries` times while it fails with
    /// `Kind::Transient`; other errors return at once.
    fn with_retries<T>(&self, mut attempt: impl FnMut() -> Result<T>) -> Result<T> {
        let mut tries = 0;
        loop {
            tries += 1;
            match attempt() {
                Err(e) if e.kind == Kind::Transient && tries <= self.retries => {
                    self.backoff(tries);
                }
                Err(e) if e.kind == Kind::Transient && tries > 1 => {
                    return Err(Error::new(
                        e.kind,
                        format!("{} (gave up after {tries} attempts)", e.message),
                    ));
                }
                other => return other,
            }
        }
    }

    /// Sleeps before retry number `retry` (1-based): uniform in [0, min(cap, base·2^(retry-1))].
    pub fn backoff(&self, retry: u32) {
        std::thread::sleep(backoff_delay(
            self.backoff_base,
            self.backoff_cap,
            retry,
            fastrand::f64(),
        ));
    }

    fn transport_error(&self, err: ureq::Error) -> Error {
        errors::from_transport(err, &self.endpoint, &self.timeouts)
    }

    pub fn io_error(&self, err: std::io::Error) -> Error {
        errors::from_io(err, &self.endpoint, &self.timeouts)
    }

    /// One attempt: a 2xx response, or the error for whatever happened instead.
    fn send_once(&self, req: &Request<'_>, target: &Target) -> Result<Response<Body>> {
        self.send(req, target, !req.body.is_empty())
    }

    /// `send_once`, with or without `Expect: 100-continue`.
    fn send(&self, req: &Request<'_>, target: &Target, expect: bool) -> Result<Response<Body>> {
        SEND_CUT_SHORT.with(|cut| cut.set(false));
        let url = req.url.as_str();
        let result = match req.method {
            Method::Get | Method::Head | Method::Delete => {
                let mut builder = match req.method {
                    Method::Get => self.agent.get(url),
                    Method::Head => self.agent.head(url),
                    _ => self.agent.delete(url),
                };
                for (name, value) in &req.headers {
                    builder = builder.header(*name, value.as_str());
                }
                builder.call()
            }
            Method::Put | Method::Post => {
                let mut builder = match req.method {
                    Method::Put => self.agent.put(url),
                    _ => self.agent.post(url),
                };
                for (name, value) in &req.headers {
                    builder = builder.header(*name, value.as_str());
                }
                // S3 refuses a request (a bad signature: 403) as soon as it has the headers and
                // closes; a body still going out then fails with a broken pipe and the answer
                // is lost. With "100-continue" ureq sends the body only once S3 says "go on",
                // and reads the refusal instead (after 1 s of silence it sends it anyway).
                if expect {
                    builder = builder.header("expect", "100-continue");
                }
                // A byte slice has a known length: ureq sends Content-Length.
                builder.send(req.body)
            }
        };
        let mut response = result.map_err(|e| self.transport_error(e))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            // A success for a body the server never got whole is a broken server: retry.
            if SEND_CUT_SHORT.with(Cell::take) {
                return Err(Error::new(
                    Kind::Transient,
                    format!(
                        "{}: the connection to {} broke while sending the request",
                        target.url, self.endpoint
                    ),
                ));
            }
            // S3 answers every upload with the ETag of what it stored. A broken server or
            // proxy may say 200 after part of a body that fitted in the socket buffers: with
            // no ETag that success is not believed either.
            if req.method == Method::Put
                && !req.body.is_empty()
                && header(response.headers(), "etag").is_none()
            {
                return Err(Error::new(
                    Kind::Transient,
                    format!(
                        "{}: the connection to {} answered the upload with a success that \
                         carries no ETag, so the server cannot be trusted to hold it",
                        target.url, self.endpoint
                    ),
                ));
            }
            return Ok(response);
        }
        // A server or proxy that does not do "100-continue" may say so (RFC 9110 §10.1.1):
        // send again without it, as curl does.
        if status == 417 && expect {
            return self.send(req, target, false);
        }
        let body = if req.method == Method::Head {
            Vec::new()
        } else {
            // Best effort: a broken error body still leaves the status to report.
            let mut body = Vec::new();
            let _ = response
                .body_mut()
                .as_reader()
                .take(64 << 10)
                .read_to_end(&mut body);
            body
        };
        let code = errors::error_code(&body);
        let region = header(response.headers(), "x-amz-bucket-region");
        Err(errors::from_status(status, code.as_deref(), region, target))
    }
}

thread_local! {
    /// Set when `RefusalTransport` let a failed write pass, for `send` to check (ureq does a
    /// request's I/O on the calling thread).
    static SEND_CUT_SHORT: Cell<bool> = const { Cell::new(false) };
}

/// For servers that ignore "100-continue" (the `expect` header above): they refuse a request as
/// soon as they have its headers, then close while its body is still going out, and the write
/// fails with a broken pipe or a reset. The answer may well be here already: the transport
/// pretends the rest of the body went out, so that ureq reads it. With no answer the read fails
/// too, and that failure (transient, retried) is reported.
/// (ureq's `unversioned` transport API: Cargo.toml holds ureq to 3.5.x for it.)
#[derive(Debug)]
struct HearRefusals;

impl Connector<Box<dyn Transport>> for HearRefusals {
    type Out = RefusalTransport;

    fn connect(
        &self,
        _: &ConnectionDetails,
        chained: Option<Box<dyn Transport>>,
    ) -> std::result::Result<Option<RefusalTransport>, ureq::Error> {
        Ok(chained.map(|inner| RefusalTransport {
            inner,
            write_failed: false,
        }))
    }
}

#[derive(Debug)]
struct RefusalTransport {
    inner: Box<dyn Transport>,
    write_failed: bool,
}

impl Transport for RefusalTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(
        &mut self,
        amount: usize,
        timeout: NextTimeout,
    ) -> std::result::Result<(), ureq::Error> {
        if self.write_failed {
            return Ok(());
        }
        match self.inner.transmit_output(amount, timeout) {
            Err(ureq::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                self.write_failed = true;
                SEND_CUT_SHORT.with(|cut| cut.set(true));
                Ok(())
            }
            other => other,
        }
    }

    fn await_input(&mut self, timeout: NextTimeout) -> std::result::Result<bool, ureq::Error> {
        self.inner.await_input(timeout)
    }

    fn is_open(&mut self) -> bool {
        // Never pooled again after a failed write.
        !self.write_failed && self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

fn body_is_error(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    let text = text.trim_start();
    let text = match text.strip_prefix("<?xml") {
        Some(rest) => rest
            .split_once("?>")
            .map(|(_, r)| r.trim_start())
            .unwrap_or(""),
        None => text,
    };
    text.starts_with("<Error>")
}

/// Full jitter: `random` in [0, 1) scales the capped exponential delay.
pub fn backoff_delay(base: Duration, cap: Duration, retry: u32, random: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << retry.saturating_sub(1).min(20));
    exp.min(cap).mul_f64(random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(200);
        let cap = Duration::from_secs(5);
        assert_eq!(backoff_delay(base, cap, 1, 1.0), base);
        assert_eq!(backoff_delay(base, cap, 3, 1.0), Duration::from_millis(800));
        assert_eq!(backoff_delay(base, cap, 30, 1.0), cap);
        assert_eq!(backoff_delay(base, cap, 3, 0.0), Duration::ZERO);
        assert!(backoff_delay(base, cap, 3, 0.5) <= Duration::from_millis(400));
    }

    #[test]
    fn error_in_200_body_is_detected() {
        assert!(body_is_error(
            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code></Error>"
        ));
        assert!(!body_is_error(
            b"<?xml version=\"1.0\"?><CompleteMultipartUploadResult></CompleteMultipartUploadResult>"
        ));
    }
}
