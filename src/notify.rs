//! Dead-man monitoring pings (Dead Man's Snitch, healthchecks.io and compatible services).
//!
//! The cron script this replaces did `curl -d s=$? https://nosnch.in/xxxx` under `set -e`, so a
//! failed backup never pinged. Here the caller pings after success *and* failure, and a ping
//! never fails the backup: every outcome, including an unreachable monitor, is a [`Ping`] value
//! the caller puts in its JSON result.
//!
//! Ping URLs are secrets (the token is the path), so nothing here ever shows one: messages and
//! [`Ping::url`] go through [`redact`].
//!
//! Requests:
//!
//! | style          | start                 | success                     | failure                          |
//! |----------------|-----------------------|-----------------------------|----------------------------------|
//! | `snitch`       | none                  | POST url, form `s=0&m=<msg>`| POST url, form `s=1&m=<error>`   |
//! | `healthchecks` | POST `<url>/start`    | POST url, body `<msg>`      | POST `<url>/fail`, body `<error>`|
//!
//! Snitch bodies are `application/x-www-form-urlencoded` (`m` is left out when the message is
//! empty); healthchecks bodies are `text/plain; charset=utf-8`. Messages longer than
//! [`MAX_MESSAGE`] bytes are cut (on a character boundary) and marked `…[truncated]`.
//!
//! Each ping gets one overall time budget (`timeout`, connect included). A connection failure,
//! HTTP 429 or 5xx is retried once after a short pause when the budget allows; a timeout is not
//! retried, so a ping never takes longer than `timeout`.

use std::io::Read;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::{Error, Result};

/// Default time budget of one ping.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest message sent, in bytes (healthchecks.io's historical body limit).
pub const MAX_MESSAGE: usize = 10_000;

const TRUNCATED: &str = "…[truncated]";
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// How much of a non-2xx reply body goes into `Ping::error`.
const MAX_REPLY_SHOWN: usize = 200;

/// Which monitoring protocol the URL speaks.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    /// Dead Man's Snitch: `s` (exit status) and `m` (message) form fields.
    #[default]
    Snitch,
    /// healthchecks.io: `/start`, `/fail` suffixes and a plain-text body.
    Healthchecks,
}

/// The outcome of one ping, reported to the user as is.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    /// The monitor answered 2xx.
    pub ok: bool,
    /// HTTP status of the last answer, when there was one.
    pub status: Option<u16>,
    /// Why the ping failed (`"connection refused"`, `"HTTP 500: ..."`, `"timed out after 10s"`).
    pub error: Option<String>,
    /// The endpoint pinged, redacted (`https://hc-ping.com/***/fail`).
    pub url: String,
}

/// Sends the pings of one backup run to one monitoring URL.
pub struct Notifier {
    base: Url,
    style: Style,
    timeout: Duration,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Notifier {
    // Hand-written so a `{:?}` can never print the secret URL.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("url", &redact_url(&self.base, ""))
            .field("style", &self.style)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Notifier {
    /// Checks `url` (http or https, with a host) and prepares an HTTP agent. Errors are
    /// `Kind::Usage` and show the URL redacted.
    pub fn new(url: &str, style: Style, timeout: Duration) -> Result<Notifier> {
        Notifier::build(url, style, timeout, true)
    }

    /// Like `new`, and a redirect is reported, never followed: the monitor's answer must not
    /// send the request somewhere SQLITE_BACKUP_ALLOW did not allow.
    pub fn confined(url: &str, style: Style, timeout: Duration) -> Result<Notifier> {
        let mut notifier = Notifier::build(url, style, timeout, true)?;
        notifier.agent = agent(timeout, true, false);
        Ok(notifier)
    }

    /// `env_proxy`: honour HTTP(S)_PROXY/NO_PROXY like curl does; tests turn it off so a proxy
    /// in the environment cannot capture their 127.0.0.1 requests.
    fn build(url: &str, style: Style, timeout: Duration, env_proxy: bool) -> Result<Notifier> {
        let invalid = |why: &str| {
            Error::usage(format!(
                "invalid monitoring URL '{}': {why}; use an http:// or https:// URL",
                redact(url)
            ))
        };
        let mut base = parse_http_url(url.trim()).map_err(invalid)?;
        if timeout.is_zero() {
            return Err(Error::usage(
                "the monitoring timeout must be more than 0 seconds",
            ));
        }
        // Fragments are never sent; drop it so it cannot end up anywhere.
        base.set_fragment(None);
        Ok(Notifier {
            base,
            style,
            timeout,
            agent: agent(timeout, env_proxy, true),
        })
    }

    /// The redacted base URL (tests check what reports would show).
    #[cfg(test)]
    pub fn redacted_url(&self) -> String {
        redact_url(&self.base, "")
    }

    /// Healthchecks: "the backup started" (lets the monitor measure run time and notice a hung
    /// run). Snitch has no such ping: `None`.
    pub fn start(&self) -> Option<Ping> {
        match self.style {
            Style::Snitch => None,
            Style::Healthchecks => Some(self.post("/start", PLAIN, String::new())),
        }
    }

    /// The backup succeeded; `message` is a short summary for the monitor's log.
    pub fn success(&self, message: &str) -> Ping {
        self.finish(true, message)
    }

    /// The backup failed; `message` is the error text.
    pub fn failure(&self, message: &str) -> Ping {
        self.finish(false, message)
    }

    fn finish(&self, ok: bool, message: &str) -> Ping {
        let message = truncate(message, MAX_MESSAGE);
        match self.style {
            Style::Snitch => self.post("", FORM, snitch_body(ok, &message)),
            Style::Healthchecks => {
                let suffix = if ok { "" } else { "/fail" };
                self.post(suffix, PLAIN, message.to_string())
            }
        }
    }

    /// POSTs `body` to the base URL with `suffix` appended to its path; never fails.
    fn post(&self, suffix: &str, content_type: &str, body: String) -> Ping {
        let endpoint = endpoint(&self.base, suffix);
        let shown = redact_url(&self.base, suffix);
        let secrets = secrets_of(&self.base, &endpoint);
        let started = Instant::now();
        let mut retried = false;
        loop {
            let budget = self.timeout.saturating_sub(started.elapsed());
            let outcome = self.attempt(&endpoint, content_type, &body, budget);
            let left = self.timeout.saturating_sub(started.elapsed());
            // One retry, and only when it still fits in the budget after the pause.
            if retried || !outcome.retryable || left <= RETRY_PAUSE * 2 {
                return Ping {
                    ok: outcome.ok,
                    status: outcome.status,
                    error: outcome.error.map(|e| scrub(&e, &secrets)),
                    url: shown,
                };
            }
            retried = true;
            std::thread::sleep(RETRY_PAUSE);
        }
    }

    fn attempt(&self, endpoint: &Url, content_type: &str, body: &str, budget: Duration) -> Attempt {
        let result = self
            .agent
            .post(endpoint.as_str())
            .header("content-type", content_type)
            .config()
            .timeout_global(Some(budget))
            .build()
            .send(body);
        match result {
            Ok(mut response) => {
                let status = response.status().as_u16();
                if (200..300).contains(&status) {
                    return Attempt {
                        ok: true,
                        status: Some(status),
                        error: None,
                        retryable: false,
                    };
                }
                // A short piece of the reply often says why ("not found", "rate limited").
                let mut reply = Vec::new();
                let _ = response
                    .body_mut()
                    .as_reader()
                    .take(MAX_REPLY_SHOWN as u64 * 4)
                    .read_to_end(&mut reply);
                let reply = one_line(&String::from_utf8_lossy(&reply), MAX_REPLY_SHOWN);
                let reason = response
                    .status()
                    .canonical_reason()
                    .map(|r| format!(" {r}"))
                    .unwrap_or_default();
                let mut error = format!("HTTP {status}{reason}");
                if !reply.is_empty() {
                    error.push_str(": ");
                    error.push_str(&reply);
                }
                Attempt {
                    ok: false,
                    status: Some(status),
                    error: Some(error),
                    retryable: status == 429 || status >= 500,
                }
            }
            Err(err) => {
                let (error, retryable) = describe(&err, self.timeout);
                Attempt {
                    ok: false,
                    status: None,
                    error: Some(error),
                    retryable,
                }
            }
        }
    }
}

struct Attempt {
    ok: bool,
    status: Option<u16>,
    error: Option<String>,
    retryable: bool,
}

const FORM: &str = "application/x-www-form-urlencoded";
const PLAIN: &str = "text/plain; charset=utf-8";

/// `s=0&m=<message>`: Dead Man's Snitch reads `s` as the exit status and `m` as the message.
fn snitch_body(ok: bool, message: &str) -> String {
    let mut form = url::form_urlencoded::Serializer::new(String::new());
    form.append_pair("s", if ok { "0" } else { "1" });
    if !message.is_empty() {
        form.append_pair("m", message);
    }
    form.finish()
}

/// The base URL with `suffix` appended to its path (a trailing slash of the base dropped
/// first); the query string stays after the path.
fn endpoint(base: &Url, suffix: &str) -> Url {
    let mut url = base.clone();
    if !suffix.is_empty() {
        let path = format!("{}{suffix}", base.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    url
}

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
fn truncate(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max.saturating_sub(TRUNCATED.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{TRUNCATED}", &text[..end]).into()
}

/// Text from a remote, made safe for a one-line report.
fn one_line(text: &str, max_chars: usize) -> String {
    let mut out: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max_chars)
        .collect();
    if text.trim().chars().count() > max_chars {
        out.push('…');
    }
    out
}

/// A short reason for a transport error, and whether one retry may help.
fn describe(err: &ureq::Error, timeout: Duration) -> (String, bool) {
    use std::io::ErrorKind;
    match err {
        ureq::Error::Timeout(_) => (format!("timed out after {}", seconds(timeout)), false),
        ureq::Error::Io(io) => {
            let retry = matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
            );
            let text = match io.kind() {
                ErrorKind::ConnectionRefused => "connection refused".to_string(),
                ErrorKind::ConnectionReset => "connection reset".to_string(),
                ErrorKind::UnexpectedEof => "the server closed the connection".to_string(),
                ErrorKind::TimedOut | ErrorKind::WouldBlock => {
                    return (format!("timed out after {}", seconds(timeout)), false)
                }
                _ => {
                    let text = io.to_string();
                    match text.find(" (os error") {
                        Some(at) => text[..at].to_string(),
                        None => text,
                    }
                }
            };
            (text, retry)
        }
        ureq::Error::HostNotFound => ("host not found".to_string(), false),
        ureq::Error::ConnectionFailed => ("connection failed".to_string(), true),
        // These carry the URL itself; say what happened without it.
        ureq::Error::BadUri(_) | ureq::Error::RequireHttpsOnly(_) => {
            ("invalid URL".to_string(), false)
        }
        ureq::Error::ConnectProxyFailed(_) => {
            ("the proxy refused the connection".to_string(), false)
        }
        ureq::Error::TooManyRedirects => ("too many redirects".to_string(), false),
        ureq::Error::Protocol(_) => (format!("bad HTTP answer: {err}"), false),
        other => (other.to_string(), false),
    }
}

fn seconds(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Pieces of the URL that must never be shown: the whole URL, credentials, path segments
/// (tokens) and query values. Longest first, so a full URL is masked before its parts.
fn secrets_of(base: &Url, endpoint: &Url) -> Vec<String> {
    let mut secrets = vec![endpoint.to_string(), base.to_string()];
    secrets.push(base.username().to_string());
    secrets.extend(base.password().map(str::to_string));
    secrets.extend(
        base.path_segments()
            .into_iter()
            .flatten()
            .map(str::to_string),
    );
    secrets.extend(base.query_pairs().map(|(_, v)| v.into_owned()));
    secrets.extend(base.query().map(str::to_string));
    // Short pieces ("api", "1") would mangle ordinary words and are no secret on their own.
    secrets.retain(|s| s.len() >= 6);
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.dedup();
    secrets
}

fn scrub(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_string(), |acc, secret| {
        acc.replace(secret.as_str(), "***")
    })
}

const NO_HOST: &str = "no host after scheme://";

/// The HTTP agent of one notifier: one time budget, our user agent, statuses as values.
fn agent(timeout: Duration, env_proxy: bool, follow_redirects: bool) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .timeout_connect(Some(timeout))
        .user_agent(concat!("sqlite-backup/", env!("CARGO_PKG_VERSION")));
    if !env_proxy {
        config = config.proxy(None);
    }
    if !follow_redirects {
        config = config.max_redirects(0);
    }
    // Our resolver: ureq's starts threads with a panicking `thread::spawn`.
    ureq::Agent::with_parts(
        config.build(),
        ureq::unversioned::transport::DefaultConnector::new(),
        crate::threads::Resolver,
    )
}

/// An http(s) URL as a person writes it, `scheme://host[:port]/path`, and nothing a URL parser
/// would repair: `http:/TOKEN`, `https:TOKEN`, `http:///TOKEN` and `http:\\TOKEN` all parse with the
/// token as the host name, which would then be looked up in DNS. Whitespace and control
/// characters (which parsers drop) are refused too.
pub fn parse_http_url(text: &str) -> std::result::Result<Url, &'static str> {
    written_out(text)?;
    let url = Url::parse(text).map_err(|_| "not a valid URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("unsupported scheme");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(NO_HOST);
    }
    Ok(url)
}

/// The text has the shape `scheme://host…` with no character a URL parser drops or rewrites.
fn written_out(text: &str) -> std::result::Result<(), &'static str> {
    if text
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return Err("whitespace, control characters or backslashes");
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err("not written as scheme://host/path");
    };
    if scheme.contains(['/', '?', '#']) {
        return Err("not written as scheme://host/path");
    }
    if rest.is_empty() || rest.starts_with('/') {
        return Err(NO_HOST);
    }
    Ok(())
}

/// `url` with every secret masked: no userinfo, the path replaced by `/***` (ping tokens live
/// in the path), every query value replaced by `***`, no fragment. Scheme, host and port stay
/// so the user can tell which service it is. Text that is not a URL shows only what looks
/// like a scheme and host.
pub fn redact(url: &str) -> String {
    // No host as written (`https:///TOKEN`, `http:/TOKEN`): the parser would make the token
    // the host.
    let parsed = Url::parse(url.trim());
    if let (Err(_), Ok(parsed)) = (written_out(url.trim()), &parsed) {
        return format!("{}:***", parsed.scheme());
    }
    match parsed {
        Ok(parsed) => redact_url(&parsed, ""),
        Err(_) => redact_text(url.trim()),
    }
}

/// [`redact`] of a parsed URL, with `suffix` (`/start`, `/fail`) shown after the masked path.
fn redact_url(url: &Url, suffix: &str) -> String {
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return format!("{}:***", url.scheme());
    };
    let mut out = format!("{}://{host}", url.scheme());
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    if url.path().trim_matches('/').is_empty() {
        out.push_str(if suffix.is_empty() { "/" } else { suffix });
    } else {
        out.push_str("/***");
        out.push_str(suffix);
    }
    if let Some(query) = url.query() {
        out.push('?');
        out.push_str(&redact_query(query));
    }
    out
}

/// `a=1&b=2` → `a=***&b=***`; a bare item (no `=`) might itself be a token: `***`.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .filter(|item| !item.is_empty())
        .map(|item| match item.split_once('=') {
            Some((key, _)) => format!("{key}=***"),
            None => "***".to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Best effort for text the URL parser rejects: keep a plausible scheme and host only.
fn redact_text(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return "***".to_string();
    };
    let plausible = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    };
    if !plausible(scheme) {
        return "***".to_string();
    }
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    // Userinfo ends at the last '@' of the authority.
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = if plausible(&host.replace([':', '[', ']'], "")) {
        host
    } else {
        "***"
    };
    let tail = if rest.len() > authority_end {
        "/***"
    } else {
        ""
    };
    format!("{scheme}://{host}{tail}")
}

// The integration tests' loopback HTTP server (tests/common/http.rs), for the unit tests here.
#[cfg(test)]
#[path = "../tests/common/http.rs"]
mod test_http;
// And their secret-leak assertion (tests/common/secret.rs).
#[cfg(test)]
#[path = "../tests/common/secret.rs"]
mod test_secret;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;
    use std::net::TcpListener;

    // The tests' one loopback HTTP server, shared with the integration tests.
    use super::test_http::{HttpServer as Server, Reply};
    use super::test_secret::assert_no_secret;

    fn notifier(url: &str, style: Style) -> Notifier {
        Notifier::build(url, style, Duration::from_secs(5), false).unwrap()
    }

    const TOKEN: &str = "5f0e9b1c-2d3a-4c8e-9f7b-1a2b3c4d5e6f";

    // ---- snitch ----

    #[test]
    fn snitch_success_posts_status_0_and_the_message() {
        let server = Server::replying(&[Reply::Status(202)]);
        let n = notifier(&format!("{}/{TOKEN}", server.base()), Style::Snitch);
        assert_eq!(n.start(), None);
        let ping = n.success("backup db-20.gz: 12 MB in 3.2 s & ok=yes");
        assert!(ping.ok, "{ping:?}");
        assert_eq!(ping.status, Some(202));
        assert_eq!(ping.error, None);
        let port = server.port();
        assert_eq!(ping.url, format!("http://127.0.0.1:{port}/***"));
        let request = server.only_request();
        assert_eq!(request.method, "POST");
        assert_eq!(request.target, format!("/{TOKEN}"));
        assert_eq!(request.header("content-type").unwrap(), FORM);
        assert_eq!(
            request.body,
            "s=0&m=backup+db-20.gz%3A+12+MB+in+3.2+s+%26+ok%3Dyes"
        );
    }

    #[test]
    fn snitch_failure_posts_status_1_and_the_error() {
        let server = Server::replying(&[Reply::Status(200)]);
        let n = notifier(&format!("{}/{TOKEN}", server.base()), Style::Snitch);
        let ping = n.failure("disk full: cannot write /var/backups/db.gz\nsecond line");
        assert!(ping.ok);
        let request = server.only_request();
        assert_eq!(request.method, "POST");
        assert_eq!(request.target, format!("/{TOKEN}"));
        assert_eq!(
            request.body,
            "s=1&m=disk+full%3A+cannot+write+%2Fvar%2Fbackups%2Fdb.gz%0Asecond+line"
        );
    }

    #[test]
    fn snitch_body_forms() {
        assert_eq!(snitch_body(true, ""), "s=0");
        assert_eq!(snitch_body(false, "é ü"), "s=1&m=%C3%A9+%C3%BC");
    }

    // ---- healthchecks ----

    #[test]
    fn healthchecks_start_success_and_failure() {
        let server = Server::replying(&[Reply::Status(200)]);
        let n = notifier(
            &format!("{}/ping/{TOKEN}/", server.base()),
            Style::Healthchecks,
        );

        let start = n.start().expect("healthchecks has a start ping");
        assert!(start.ok, "{start:?}");
        assert!(start.url.ends_with("/***/start"), "{}", start.url);
        let ok = n.success("backup done: 12 MB");
        assert!(ok.ok);
        let fail = n.failure("integrity_check failed: page 12");
        assert!(fail.ok);
        assert!(fail.url.ends_with("/***/fail"), "{}", fail.url);

        let requests = server.requests();
        let seen: Vec<_> = requests
            .iter()
            .map(|r| (r.method.as_str(), r.target.clone(), r.body.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("POST", format!("/ping/{TOKEN}/start"), ""),
                ("POST", format!("/ping/{TOKEN}/"), "backup done: 12 MB"),
                (
                    "POST",
                    format!("/ping/{TOKEN}/fail"),
                    "integrity_check failed: page 12"
                ),
            ]
        );
        assert_eq!(requests[1].header("content-type").unwrap(), PLAIN);
        assert!(requests[1]
            .header("user-agent")
            .unwrap()
            .starts_with("sqlite-backup/"));
    }

    #[test]
    fn healthchecks_keeps_the_query_after_the_suffix() {
        let server = Server::replying(&[Reply::Status(201)]);
        let n = notifier(
            &format!("{}/{TOKEN}?create=1", server.base()),
            Style::Healthchecks,
        );
        let ping = n.failure("boom");
        assert!(ping.ok);
        assert_eq!(ping.status, Some(201));
        assert!(ping.url.ends_with("/***/fail?create=***"), "{}", ping.url);
        assert_eq!(
            server.only_request().target,
            format!("/{TOKEN}/fail?create=1")
        );
    }

    #[test]
    fn endpoints_are_built_from_the_base() {
        let at =
            |base: &str, suffix: &str| endpoint(&Url::parse(base).unwrap(), suffix).to_string();
        assert_eq!(
            at("https://hc-ping.com/uuid?create=1", "/fail"),
            "https://hc-ping.com/uuid/fail?create=1"
        );
        assert_eq!(
            at("https://hc-ping.com/uuid/", "/fail"),
            "https://hc-ping.com/uuid/fail"
        );
        assert_eq!(
            at("https://hc-ping.com/uuid/", ""),
            "https://hc-ping.com/uuid/"
        );
        assert_eq!(
            at("https://hc.example.com/ping/key/slug", "/start"),
            "https://hc.example.com/ping/key/slug/start"
        );
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let server = Server::replying(&[Reply::Status(200)]);
        let n = notifier(&format!("{}/{TOKEN}", server.base()), Style::Healthchecks);
        let long = "é".repeat(30_000); // 60 KB, two bytes per char
        assert!(n.failure(&long).ok);
        let body = server.only_request().body;
        assert!(body.len() <= MAX_MESSAGE, "{}", body.len());
        assert!(body.len() > MAX_MESSAGE - 20);
        assert!(body.ends_with(TRUNCATED));
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(
            truncate("abcdefghijklmnopqrstuvwxyz", 20),
            "abcdef…[truncated]" // the marker is 14 bytes: 6 + 14 = 20
        );
    }

    // ---- failures never raise ----

    #[test]
    fn http_500_is_not_ok_and_is_retried_once() {
        let server = Server::replying(&[Reply::Body(500, "something broke")]);
        let n = notifier(&format!("{}/{TOKEN}", server.base()), Style::Snitch);
        let ping = n.success("done");
        assert!(!ping.ok);
        assert_eq!(ping.status, Some(500));
        assert_eq!(
            ping.error.as_deref(),
            Some("HTTP 500 Internal Server Error: something broke")
        );
        assert_eq!(server.requests().len(), 2);
    }

    #[test]
    fn a_retry_that_succeeds_is_ok() {
        let server = Server::replying(&[Reply::Status(503), Reply::Status(200)]);
        let n = notifier(&format!("{}/{TOKEN}", server.base()), Style::Healthchecks);
        let ping = n.success("done");
        assert!(ping.ok, "{ping:?}");
        assert_eq!(ping.status, Some(200));
        assert_eq!(server.requests().len(), 2);
    }

    #[test]
    fn http_404_is_not_ok_and_not_retried() {
        let server = Server::replying(&[Reply::Status(404)]);
        let n = notifier(&format!("{}/{TOKEN}", server.base()), Style::Healthchecks);
        let ping = n.failure("x");
        assert!(!ping.ok);
        assert_eq!(ping.status, Some(404));
        assert_eq!(server.requests().len(), 1);
    }

    #[test]
    fn unreachable_monitor_is_not_ok_and_fast() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        }; // closed here: nothing listens on the port any more
        let n = notifier(&format!("http://127.0.0.1:{port}/{TOKEN}"), Style::Snitch);
        let started = Instant::now();
        let ping = n.failure("backup failed");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert!(!ping.ok);
        assert_eq!(ping.status, None);
        assert_eq!(ping.error.as_deref(), Some("connection refused"));
        assert_eq!(ping.url, format!("http://127.0.0.1:{port}/***"));
    }

    #[test]
    fn stalled_monitor_times_out_within_the_budget() {
        let server = Server::replying(&[Reply::Stall(Duration::from_secs(10))]);
        let timeout = Duration::from_millis(600);
        let n = Notifier::build(
            &format!("{}/{TOKEN}", server.base()),
            Style::Snitch,
            timeout,
            false,
        )
        .unwrap();
        let started = Instant::now();
        let ping = n.success("done");
        let took = started.elapsed();
        assert!(!ping.ok);
        assert_eq!(ping.status, None);
        assert_eq!(ping.error.as_deref(), Some("timed out after 600ms"));
        assert!(
            took >= timeout && took < timeout + Duration::from_millis(900),
            "{took:?}"
        );
        assert_eq!(server.requests().len(), 1);
    }

    // ---- construction and redaction ----

    #[test]
    fn new_rejects_bad_urls_without_echoing_them() {
        for bad in [
            format!("ftp://nosnch.in/{TOKEN}"),
            format!("nosnch.in/{TOKEN}"),
            format!("file:///{TOKEN}"),
            format!("https://user:{TOKEN}@/x"),
            String::new(),
            // Each of these parses with the token as the host name.
            format!("http:/{TOKEN}"),
            format!("https:{TOKEN}"),
            format!("http:///{TOKEN}"),
            format!("HTTP:/{TOKEN}"),
            format!("http:\\\\{TOKEN}/x"),
            format!("http:/\\{TOKEN}/x"),
            format!("http://\t/{TOKEN}"),
        ] {
            let err = Notifier::new(&bad, Style::Snitch, DEFAULT_TIMEOUT).unwrap_err();
            assert_eq!(err.kind, Kind::Usage, "{bad}");
            assert_no_secret(&err.message, &[TOKEN]);
            assert!(
                err.message.contains("http:// or https://"),
                "{}",
                err.message
            );
        }
        let err = Notifier::new("https://x.io/a", Style::Snitch, Duration::ZERO).unwrap_err();
        assert_eq!(err.kind, Kind::Usage);
        let n = Notifier::new(
            &format!("https://nosnch.in/{TOKEN}#frag"),
            Style::Snitch,
            DEFAULT_TIMEOUT,
        )
        .unwrap();
        assert_eq!(n.redacted_url(), "https://nosnch.in/***");
        assert_no_secret(&format!("{n:?}"), &[TOKEN]);
    }

    #[test]
    fn redact_hides_userinfo_tokens_and_query_values() {
        assert_eq!(
            redact(&format!("https://nosnch.in/{TOKEN}")),
            "https://nosnch.in/***"
        );
        assert_eq!(
            redact(&format!("https://hc-ping.com/{TOKEN}?create=1&rid=abc")),
            "https://hc-ping.com/***?create=***&rid=***"
        );
        assert_eq!(
            redact("https://admin:hunter2@hc.example.com:8443/ping/key/slug?x"),
            "https://hc.example.com:8443/***?***"
        );
        assert_eq!(redact("http://[::1]:8000/abc"), "http://[::1]:8000/***");
        assert_eq!(redact("https://example.com"), "https://example.com/");
        assert_eq!(redact("mailto:someone@example.com"), "mailto:***");
        // Unparseable text: only a plausible scheme and host survive.
        assert_eq!(
            redact("https://us er:pw@exa mple.com/tok"),
            "https://***/***"
        );
        assert_eq!(
            redact("https://user:pw@example.com:99999/tok"),
            "https://example.com:99999/***"
        );
        assert_eq!(redact(TOKEN), "***");
        assert_eq!(redact(""), "***");
        for text in [
            redact(&format!("https://u:{TOKEN}@h.io/p")),
            redact(&format!("https://h.io/p?k={TOKEN}")),
            redact(&format!("https://h.io/{TOKEN}/x")),
            redact(&format!("https://h.io/p#{TOKEN}")),
        ] {
            assert_no_secret(&text, &[TOKEN]);
        }
    }

    #[test]
    fn scrub_masks_url_pieces_in_error_text() {
        let base = Url::parse(&format!(
            "https://u:pass123456@h.io/ping/{TOKEN}?key=verysecret"
        ))
        .unwrap();
        let end = endpoint(&base, "/fail");
        let secrets = secrets_of(&base, &end);
        let text = format!("error for {end} with {TOKEN} and verysecret and pass123456 at ping");
        let clean = scrub(&text, &secrets);
        assert_eq!(clean, "error for *** with *** and *** and *** at ping");
    }

    #[test]
    fn notifier_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Notifier>();
    }

    #[test]
    fn style_deserializes_lowercase_and_defaults_to_snitch() {
        assert_eq!(Style::default(), Style::Snitch);
        assert_eq!(
            serde_json::from_str::<Style>("\"snitch\"").unwrap(),
            Style::Snitch
        );
        assert_eq!(
            serde_json::from_str::<Style>("\"healthchecks\"").unwrap(),
            Style::Healthchecks
        );
        assert!(serde_json::from_str::<Style>("\"Snitch\"").is_err());
    }

    #[test]
    fn ping_serializes_for_the_json_result() {
        let ping = Ping {
            ok: false,
            status: Some(500),
            error: Some("HTTP 500".into()),
            url: "https://nosnch.in/***".into(),
        };
        assert_eq!(
            serde_json::to_string(&ping).unwrap(),
            r#"{"ok":false,"status":500,"error":"HTTP 500","url":"https://nosnch.in/***"}"#
        );
    }
}
