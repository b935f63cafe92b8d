//! Credentials that are not static keys: the `credential_process` of a profile, web identity
//! (STS AssumeRoleWithWebIdentity), the container endpoint (ECS, EKS Pod Identity) and the EC2
//! instance metadata service (IMDSv2). `config::resolve` asks these only after the static sources
//! (options, environment, credentials file) found nothing, in botocore's order. Whatever these
//! return is a secret: no message here ever quotes a command's output or an endpoint's answer.
//! They return their `Expiration` too, and `Provider` (held by the client) asks the same source
//! again before it comes, so that a long upload does not fail half-way with ExpiredToken.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, PoisonError, TryLockError};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use serde::Deserialize;

use super::config::Secrets;
use crate::error::{Error, Kind, Result};

/// A credential answer is a few hundred bytes; anything far larger is not one.
const MAX_ANSWER: u64 = 64 << 10;
/// The SDKs give the container endpoint 1 s to connect and 2 s in all (botocore: 2 s, 3 tries).
const CONTAINER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const CONTAINER_TIMEOUT: Duration = Duration::from_secs(2);
const CONTAINER_ATTEMPTS: u32 = 3;
/// STS is an ordinary AWS API: the S3 client's defaults are too patient for a credential fetch.
const STS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const STS_TIMEOUT: Duration = Duration::from_secs(30);
const STS_ATTEMPTS: u32 = 3;
/// botocore's metadata_service_timeout (1 s, one attempt): off EC2 the chain ends quickly.
const IMDS_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs `command` (split like a shell would, but without one, as botocore does) and reads the
/// JSON it prints: `{"Version": 1, "AccessKeyId", "SecretAccessKey", "SessionToken"?, ...}`.
pub fn from_process(command: &str, profile: &str) -> Result<Secrets> {
    let what = format!("credential_process of profile '{profile}'");
    let argv = split_command(command)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| Error::usage(format!("{what} is not a valid command line")))?;
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Error::usage(format!("{what} is empty")))?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::io(format!("cannot run the {what} ({program})"), e))?;
    let mut out = Vec::new();
    let read = child
        .stdout
        .take()
        .map(|s| s.take(MAX_ANSWER).read_to_end(&mut out));
    let status = child
        .wait()
        .map_err(|e| Error::io(format!("cannot run the {what}"), e))?;
    if !status.success() {
        return Err(Error::new(
            Kind::Auth,
            format!("the {what} ({program}) failed ({status})"),
        ));
    }
    if !matches!(read, Some(Ok(_))) {
        return Err(Error::new(
            Kind::Auth,
            format!("cannot read the output of the {what}"),
        ));
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        version: Option<u64>,
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
        session_token: Option<String>,
        expiration: Option<String>,
    }
    // serde's message could quote the output: say only what is wrong with it.
    let answer: Answer = serde_json::from_slice(&out).map_err(|_| {
        Error::new(
            Kind::Auth,
            format!("the {what} did not print a JSON object of credentials"),
        )
    })?;
    if answer.version != Some(1) {
        return Err(Error::new(
            Kind::Auth,
            format!("the {what} printed an unsupported Version (must be 1)"),
        ));
    }
    secrets(
        answer.access_key_id,
        answer.secret_access_key,
        answer.session_token,
        answer.expiration.as_deref(),
        &what,
    )
}

/// `AWS_CONTAINER_CREDENTIALS_FULL_URI` (or `_RELATIVE_URI` under 169.254.170.2) with the
/// token of `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE` or `AWS_CONTAINER_AUTHORIZATION_TOKEN`.
pub fn from_container(url: &str, token: Option<&str>) -> Result<Secrets> {
    let what = "the container credentials endpoint";
    let parsed = url::Url::parse(url).map_err(|_| {
        Error::usage("AWS_CONTAINER_CREDENTIALS_FULL_URI is not a valid http(s) URL")
    })?;
    if !container_host_allowed(&parsed) {
        return Err(Error::usage(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI must be https, or http to a loopback address, \
             169.254.170.2, 169.254.170.23 or fd00:ec2::23 (as the AWS SDKs require)",
        ));
    }
    if token.is_some_and(|t| t.contains(['\r', '\n'])) {
        return Err(Error::usage(
            "the container authorization token contains a line break",
        ));
    }
    let agent = agent(
        ureq::Agent::config_builder()
            .timeout_connect(Some(CONTAINER_CONNECT_TIMEOUT))
            .timeout_global(Some(CONTAINER_TIMEOUT))
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(0)
            .build(),
    );
    let mut last = String::new();
    for _ in 0..CONTAINER_ATTEMPTS {
        let mut request = agent
            .get(parsed.as_str())
            .header("Accept", "application/json");
        if let Some(token) = token {
            request = request.header("Authorization", token);
        }
        match request.call() {
            Ok(mut response) => {
                let status = response.status().as_u16();
                if !(200..300).contains(&status) {
                    last = format!("HTTP {status}");
                    if (400..500).contains(&status) {
                        break; // a refused token stays refused
                    }
                    continue;
                }
                let body = response
                    .body_mut()
                    .with_config()
                    .limit(MAX_ANSWER)
                    .read_to_vec()
                    .map_err(|_| Error::new(Kind::Auth, format!("cannot read {what}'s answer")))?;
                return container_answer(&body, what);
            }
            Err(ureq::Error::Timeout(_)) => last = "timed out".to_string(),
            Err(_) => last = "cannot connect".to_string(),
        }
    }
    Err(Error::new(
        Kind::Auth,
        format!("no credentials from {what} ({last})"),
    ))
}

/// STS `AssumeRoleWithWebIdentity` (EKS IRSA, GitHub Actions OIDC): the token of `token_file`
/// exchanged for temporary credentials of `role_arn`. Unsigned, as the API is.
pub fn from_web_identity(
    sts: &str,
    token_file: &str,
    role_arn: &str,
    session_name: &str,
) -> Result<Secrets> {
    let what = "STS AssumeRoleWithWebIdentity";
    let url = url::Url::parse(sts)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| Error::usage("the STS endpoint is not a valid http(s) URL"))?;
    let mut file = std::fs::File::open(token_file).map_err(|e| {
        Error::io(
            format!("cannot read the web identity token file {token_file}"),
            e,
        )
    })?;
    let mut token = String::new();
    file.by_ref()
        .take(MAX_ANSWER)
        .read_to_string(&mut token)
        .map_err(|e| {
            Error::io(
                format!("cannot read the web identity token file {token_file}"),
                e,
            )
        })?;
    let token = token.trim();
    if token.is_empty() {
        return Err(Error::usage(format!(
            "the web identity token file {token_file} is empty"
        )));
    }
    let body = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", "AssumeRoleWithWebIdentity")
        .append_pair("Version", "2011-06-15")
        .append_pair("RoleArn", role_arn)
        .append_pair("RoleSessionName", session_name)
        .append_pair("WebIdentityToken", token)
        .finish();
    let agent = agent(
        ureq::Agent::config_builder()
            .timeout_connect(Some(STS_CONNECT_TIMEOUT))
            .timeout_global(Some(STS_TIMEOUT))
            .http_status_as_error(false)
            .max_redirects(0)
            .build(),
    );
    let mut last = String::new();
    for _ in 0..STS_ATTEMPTS {
        let sent = agent
            .post(url.as_str())
            .header(
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            )
            .send(body.as_str());
        let mut response = match sent {
            Ok(response) => response,
            Err(ureq::Error::Timeout(_)) => {
                last = "timed out".to_string();
                continue;
            }
            Err(_) => {
                last = "cannot connect".to_string();
                continue;
            }
        };
        let status = response.status().as_u16();
        let answer = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_string()
            .unwrap_or_default();
        if (200..300).contains(&status) {
            let field = |name: &str| xml_field(&answer, name);
            return secrets(
                field("AccessKeyId"),
                field("SecretAccessKey"),
                field("SessionToken"),
                field("Expiration").as_deref(),
                what,
            );
        }
        // The code names the problem (InvalidIdentityToken, AccessDenied); the message might
        // quote the token.
        let code = xml_field(&answer, "Code")
            .filter(|c| c.len() <= 64 && c.chars().all(|c| c.is_ascii_alphanumeric()))
            .map(|c| format!(", {c}"))
            .unwrap_or_default();
        last = format!("HTTP {status}{code}");
        if status < 500 {
            return Err(Error::new(
                Kind::Auth,
                format!("{what} for {role_arn} was refused ({last}): check the role's trust policy and the token"),
            ));
        }
    }
    Err(Error::new(
        Kind::Auth,
        format!(
            "no credentials from {what} at {} ({last})",
            super::config::display_endpoint(&url)
        ),
    ))
}

/// The text of the first `<name>` element, XML entities decoded.
fn xml_field(xml: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml.get(start..)?.find(&format!("</{name}>"))?;
    let raw = xml.get(start..end)?.trim();
    Some(
        raw.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

/// EC2 instance profile through IMDSv2: a session token (PUT), the role's name, its credentials.
/// `Ok(None)` when no metadata service answers (not on EC2), as the SDKs treat it. A service
/// that refuses tokens (403, 404, 405) is asked without one (IMDSv1), as botocore does.
pub fn from_imds(base: &str) -> Result<Option<Secrets>> {
    let what = "the EC2 instance metadata service";
    let base = url::Url::parse(base)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| {
            Error::usage("AWS_EC2_METADATA_SERVICE_ENDPOINT is not a valid http(s) URL")
        })?;
    let at = |path: &str| {
        base.join(path)
            .map_err(|_| Error::usage("bad metadata endpoint"))
    };
    let agent = agent(
        ureq::Agent::config_builder()
            .timeout_connect(Some(IMDS_TIMEOUT))
            .timeout_global(Some(IMDS_TIMEOUT))
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(0)
            .build(),
    );
    let read = |response: &mut ureq::http::Response<ureq::Body>| {
        response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_string()
            .map_err(|_| Error::new(Kind::Auth, format!("cannot read {what}'s answer")))
    };
    let token = match agent
        .put(at("latest/api/token")?.as_str())
        .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
        .send_empty()
    {
        Err(_) => return Ok(None), // nothing there: not on EC2
        Ok(mut r) => match r.status().as_u16() {
            200..=299 => Some(read(&mut r)?.trim().to_string()),
            403..=405 => None,
            status => {
                return Err(Error::new(
                    Kind::Auth,
                    format!("{what} refused a session token (HTTP {status})"),
                ))
            }
        },
    };
    if token.as_deref().is_some_and(|t| t.contains(['\r', '\n'])) {
        return Err(Error::new(Kind::Auth, format!("{what} sent a bad token")));
    }
    let get = |path: &str| -> Result<Option<String>> {
        let mut request = agent.get(at(path)?.as_str());
        if let Some(token) = &token {
            request = request.header("X-aws-ec2-metadata-token", token.as_str());
        }
        match request.call() {
            Err(ureq::Error::Timeout(_)) => {
                Err(Error::new(Kind::Auth, format!("{what} timed out")))
            }
            Err(_) => Err(Error::new(Kind::Auth, format!("{what} stopped answering"))),
            Ok(mut r) if r.status().is_success() => read(&mut r).map(Some),
            Ok(r) if r.status().as_u16() == 404 => Ok(None),
            Ok(r) => Err(Error::new(
                Kind::Auth,
                format!("{what} answered HTTP {}", r.status().as_u16()),
            )),
        }
    };
    let prefix = "latest/meta-data/iam/security-credentials/";
    // 404: the instance has no role.
    let Some(roles) = get(prefix)? else {
        return Ok(None);
    };
    let Some(role) = roles.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return Ok(None);
    };
    if !role
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c))
    {
        return Err(Error::new(
            Kind::Auth,
            format!("{what} named an invalid role"),
        ));
    }
    let Some(body) = get(&format!("{prefix}{role}"))? else {
        return Ok(None);
    };
    container_answer(body.as_bytes(), what).map(Some)
}

/// An agent with our resolver: ureq's own starts its lookup threads with a panicking
/// `thread::spawn`, and a refresh runs on an upload's worker threads too.
fn agent(config: ureq::config::Config) -> ureq::Agent {
    ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::new(),
        crate::threads::Resolver,
    )
}

fn container_answer(body: &[u8], what: &str) -> Result<Secrets> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        access_key_id: Option<String>,
        secret_access_key: Option<String>,
        token: Option<String>,
        expiration: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body).map_err(|_| {
        Error::new(
            Kind::Auth,
            format!("{what} did not answer a JSON object of credentials"),
        )
    })?;
    secrets(
        answer.access_key_id,
        answer.secret_access_key,
        answer.token,
        answer.expiration.as_deref(),
        what,
    )
}

fn container_host_allowed(url: &url::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(url::Host::Ipv4(ip)) => {
                ip.is_loopback()
                    || ip == std::net::Ipv4Addr::new(169, 254, 170, 2)
                    || ip == std::net::Ipv4Addr::new(169, 254, 170, 23)
            }
            Some(url::Host::Ipv6(ip)) => {
                ip.is_loopback()
                    || ip == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)
            }
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            None => false,
        },
        _ => false,
    }
}

fn secrets(
    key: Option<String>,
    secret: Option<String>,
    token: Option<String>,
    expiration: Option<&str>,
    what: &str,
) -> Result<Secrets> {
    let present = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    let expires = match expiration.map(str::trim).filter(|e| !e.is_empty()) {
        None => None,
        Some(text) => Some(parse_expiration(text).ok_or_else(|| {
            Error::new(
                Kind::Auth,
                format!("{what} gave an Expiration that is not an ISO 8601 time"),
            )
        })?),
    };
    match (present(key), present(secret)) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Secrets {
            access_key_id,
            secret_access_key,
            session_token: present(token),
            expires,
        }),
        _ => Err(Error::new(
            Kind::Auth,
            format!("{what} gave no AccessKeyId and SecretAccessKey"),
        )),
    }
}

/// `2026-01-02T03:04:05Z` (STS, IMDS, ECS, with or without fractions or an offset); a time
/// without a zone is UTC.
fn parse_expiration(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
}

/// botocore's windows (`RefreshableCredentials`): 15 minutes before the expiry one caller
/// refreshes while the others keep signing, and a failure keeps the current credentials; in the
/// last 10 minutes every request waits for fresh ones, and a failure is an error while the
/// current ones are still good enough to sign the abort of an upload with.
pub const ADVISORY_REFRESH: TimeDelta = TimeDelta::minutes(15);
pub const MANDATORY_REFRESH: TimeDelta = TimeDelta::minutes(10);

/// How to ask a source of temporary credentials again.
#[derive(Clone)]
pub struct Refresh {
    /// The source, for messages: "the container credentials endpoint".
    pub what: String,
    pub fetch: Arc<dyn Fn() -> Result<Secrets> + Send + Sync>,
}

#[derive(Debug, PartialEq)]
enum Window {
    Fresh,
    Advisory,
    Mandatory,
    Expired,
}

fn window(expires: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Window {
    let Some(expires) = expires else {
        return Window::Fresh;
    };
    let left = expires.signed_duration_since(now);
    if left <= TimeDelta::zero() {
        Window::Expired
    } else if left < MANDATORY_REFRESH {
        Window::Mandatory
    } else if left < ADVISORY_REFRESH {
        Window::Advisory
    } else {
        Window::Fresh
    }
}

/// What signs requests now, and until when.
#[derive(Clone)]
struct Held {
    credentials: Arc<rusty_s3::Credentials>,
    expires: Option<DateTime<Utc>>,
}

impl Held {
    fn new(secrets: &Secrets) -> Held {
        let s = secrets;
        let credentials = match &s.session_token {
            Some(token) => {
                rusty_s3::Credentials::new_with_token(&s.access_key_id, &s.secret_access_key, token)
            }
            None => rusty_s3::Credentials::new(&s.access_key_id, &s.secret_access_key),
        };
        Held {
            credentials: Arc::new(credentials),
            expires: s.expires,
        }
    }
}

/// The credentials a client signs with, shared by the threads of an upload. Static keys never
/// change; temporary ones are fetched again from their source in the windows above, one fetch at
/// a time.
pub struct Provider {
    held: Mutex<Held>,
    refresh: Option<Refresh>,
    /// Taken by the one caller that refreshes.
    turn: Mutex<()>,
    clock: Box<dyn Fn() -> DateTime<Utc> + Send + Sync>,
}

impl Provider {
    pub fn new(secrets: &Secrets, refresh: Option<Refresh>) -> Provider {
        Provider::with_clock(secrets, refresh, Box::new(Utc::now))
    }

    fn with_clock(
        secrets: &Secrets,
        refresh: Option<Refresh>,
        clock: Box<dyn Fn() -> DateTime<Utc> + Send + Sync>,
    ) -> Provider {
        Provider {
            held: Mutex::new(Held::new(secrets)),
            refresh,
            turn: Mutex::new(()),
            clock,
        }
    }

    /// The credentials to sign a request with now, refreshed first when they expire soon.
    pub fn current(&self) -> Result<Arc<rusty_s3::Credentials>> {
        let held = self.held();
        let Some(refresh) = &self.refresh else {
            return Ok(held.credentials);
        };
        match window(held.expires, (self.clock)()) {
            Window::Fresh => Ok(held.credentials),
            Window::Advisory => {
                // Someone else is refreshing: these are good for 10 minutes more.
                let _turn = match self.turn.try_lock() {
                    Ok(turn) => turn,
                    Err(TryLockError::Poisoned(p)) => p.into_inner(),
                    Err(TryLockError::WouldBlock) => return Ok(held.credentials),
                };
                match self.fetch_if_needed(refresh, Window::Advisory) {
                    Ok(fresh) => Ok(fresh),
                    // Still good for 10 minutes: the next request tries again.
                    Err(_) => Ok(held.credentials),
                }
            }
            Window::Mandatory | Window::Expired => {
                let _turn = self.turn.lock().unwrap_or_else(PoisonError::into_inner);
                self.fetch_if_needed(refresh, Window::Mandatory)
            }
        }
    }

    /// `current`, or, when it fails, what is held: for an abort, which is better sent with
    /// soon-to-expire credentials than not at all.
    pub fn current_or_held(&self) -> Arc<rusty_s3::Credentials> {
        self.current().unwrap_or_else(|_| self.held().credentials)
    }

    fn held(&self) -> Held {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// With the turn taken: asks the source unless the caller before us already did (what is
    /// held is no longer in `from` or later), and keeps the answer.
    fn fetch_if_needed(
        &self,
        refresh: &Refresh,
        from: Window,
    ) -> Result<Arc<rusty_s3::Credentials>> {
        let held = self.held();
        let now = (self.clock)();
        let needed = match window(held.expires, now) {
            Window::Fresh => false,
            Window::Advisory => from == Window::Advisory,
            Window::Mandatory | Window::Expired => true,
        };
        if !needed {
            return Ok(held.credentials);
        }
        let what = &refresh.what;
        let fresh = match (refresh.fetch)() {
            Ok(fresh) => fresh,
            Err(e) => {
                let when = match window(held.expires, now) {
                    Window::Expired => "expired".to_string(),
                    _ => format!(
                        "expire in {} s",
                        held.expires
                            .map_or(0, |t| t.signed_duration_since(now).num_seconds())
                    ),
                };
                return Err(Error::new(
                    Kind::Auth,
                    format!(
                        "temporary credentials from {what} {when} and could not be refreshed: {}",
                        e.message
                    ),
                ));
            }
        };
        if window(fresh.expires, (self.clock)()) == Window::Expired {
            return Err(Error::new(
                Kind::Auth,
                format!(
                    "temporary credentials from {what} were refreshed but have already expired: \
                     check this machine's clock"
                ),
            ));
        }
        let fresh = Held::new(&fresh);
        let credentials = Arc::clone(&fresh.credentials);
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(credentials)
    }
}

/// POSIX-shell-like word splitting without a shell: quotes and backslashes, no expansion.
/// `None` for an unterminated quote.
fn split_command(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => word.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => word.push(c),
                            c => {
                                word.push('\\');
                                word.push(c);
                            }
                        },
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next()?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split_command(r#"/bin/tool --a 'b c' "d \"e\"" f\ g"#).unwrap(),
            ["/bin/tool", "--a", "b c", "d \"e\"", "f g"]
        );
        assert!(split_command("tool 'open").is_none());
        assert!(split_command("   ").unwrap().is_empty());
    }

    #[test]
    fn process_output_checked_without_quoting_it() {
        let ok = from_process(
            r#"printf '{"Version":1,"AccessKeyId":"AK","SecretAccessKey":"SK","SessionToken":"ST"}'"#,
            "p",
        )
        .unwrap();
        assert_eq!(ok.access_key_id, "AK");
        assert_eq!(ok.session_token.as_deref(), Some("ST"));
        for bad in [
            r#"printf '{"Version":2,"AccessKeyId":"AK","SecretAccessKey":"HIDDENSK"}'"#,
            r#"printf '{"Version":1,"AccessKeyId":"AK"}'"#,
            "printf HIDDENSK",
            "false",
            "/nonexistent/tool",
        ] {
            let Err(err) = from_process(bad, "p") else {
                panic!("{bad} was accepted")
            };
            assert!(
                err.message.contains("credential_process of profile 'p'"),
                "{err}"
            );
            assert!(!err.message.contains("HIDDENSK"), "{err}");
        }
    }

    #[test]
    fn sts_answer_fields() {
        let xml = "<R><Credentials><AccessKeyId> AK </AccessKeyId><SecretAccessKey>a&amp;b</SecretAccessKey></Credentials></R>";
        assert_eq!(xml_field(xml, "AccessKeyId").as_deref(), Some("AK"));
        assert_eq!(xml_field(xml, "SecretAccessKey").as_deref(), Some("a&b"));
        assert_eq!(xml_field(xml, "SessionToken"), None);
        assert_eq!(xml_field("<Code>x", "Code"), None);
    }

    /// A clock the test moves, `t0` + the seconds it holds.
    fn clock() -> (Arc<std::sync::atomic::AtomicI64>, DateTime<Utc>) {
        let t0 = parse_expiration("2026-01-02T03:00:00Z").unwrap();
        (Arc::new(std::sync::atomic::AtomicI64::new(0)), t0)
    }

    fn temp(token: &str, expires: DateTime<Utc>) -> Secrets {
        Secrets {
            access_key_id: "AK".into(),
            secret_access_key: "HIDDENSECRET".into(),
            session_token: Some(token.into()),
            expires: Some(expires),
        }
    }

    /// A provider holding `T0` until `t0 + expires_after`; each fetch answers the next of
    /// `answers` (`Err` for `None`) and is counted.
    fn provider(
        expires_after: i64,
        answers: Vec<Option<Secrets>>,
    ) -> (
        Provider,
        Arc<std::sync::atomic::AtomicI64>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (secs, t0) = clock();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let answers = Mutex::new(answers.into_iter());
        let refresh = Refresh {
            what: "the test endpoint".into(),
            fetch: Arc::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                answers.lock().unwrap().next().flatten().ok_or_else(|| {
                    Error::new(
                        Kind::Auth,
                        "no credentials from the test endpoint (HTTP 500)",
                    )
                })
            }),
        };
        let now = Arc::clone(&secs);
        let initial = temp("T0", t0 + TimeDelta::seconds(expires_after));
        let p = Provider::with_clock(
            &initial,
            Some(refresh),
            Box::new(move || t0 + TimeDelta::seconds(now.load(Ordering::SeqCst))),
        );
        (p, secs, calls)
    }

    fn token(p: &Provider) -> String {
        p.current().unwrap().token().unwrap().to_string()
    }

    #[test]
    fn windows_are_botocores() {
        let (_, t0) = clock();
        let at = |secs: i64| window(Some(t0 + TimeDelta::seconds(secs)), t0);
        assert_eq!(window(None, t0), Window::Fresh, "static keys");
        assert_eq!(at(3600), Window::Fresh);
        assert_eq!(at(15 * 60), Window::Fresh);
        assert_eq!(at(15 * 60 - 1), Window::Advisory);
        assert_eq!(at(10 * 60), Window::Advisory);
        assert_eq!(at(10 * 60 - 1), Window::Mandatory);
        assert_eq!(at(1), Window::Mandatory);
        assert_eq!(at(0), Window::Expired);
        assert_eq!(at(-5), Window::Expired);
    }

    #[test]
    fn expirations_of_the_sources_parse() {
        let t = |s| parse_expiration(s).map(|t| t.to_rfc3339());
        let want = Some("2026-01-02T03:04:05+00:00".to_string());
        assert_eq!(t("2026-01-02T03:04:05Z"), want);
        assert_eq!(t("2026-01-02T05:04:05+02:00"), want);
        assert_eq!(t("2026-01-02T03:04:05"), want);
        assert!(t("2026-01-02T03:04:05.123Z").is_some());
        assert_eq!(t("tomorrow"), None);
        let err = secrets(
            Some("AK".into()),
            Some("HIDDENSK".into()),
            None,
            Some("soon"),
            "w",
        )
        .err()
        .unwrap();
        assert!(err.message.contains("Expiration"), "{err}");
        let ok = secrets(Some("AK".into()), Some("S".into()), None, None, "w").unwrap();
        assert_eq!(ok.expires, None, "no Expiration: keys that do not expire");
    }

    #[test]
    fn refreshed_in_the_windows_and_not_before() {
        use std::sync::atomic::Ordering;
        let (_, t0) = clock();
        let later = t0 + TimeDelta::hours(1);
        let (p, now, calls) = provider(
            20 * 60,
            vec![Some(temp("T1", later)), Some(temp("T2", later))],
        );
        assert_eq!(token(&p), "T0");
        now.store(5 * 60 - 1, Ordering::SeqCst);
        assert_eq!(token(&p), "T0", "more than 15 minutes left");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        now.store(6 * 60, Ordering::SeqCst); // 14 minutes left
        assert_eq!(token(&p), "T1");
        assert_eq!(token(&p), "T1", "fresh again: not asked twice");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        now.store(55 * 60, Ordering::SeqCst); // 5 minutes left of T1
        assert_eq!(token(&p), "T2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn failed_advisory_refresh_keeps_the_current_ones() {
        use std::sync::atomic::Ordering;
        let (_, t0) = clock();
        let (p, _, calls) = provider(12 * 60, vec![None, None, Some(temp("T1", t0))]);
        assert_eq!(token(&p), "T0");
        assert_eq!(token(&p), "T0", "each request tries again");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Credentials that are already expired are no refresh either.
        assert_eq!(token(&p), "T0");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn failed_mandatory_refresh_is_an_error_naming_the_source() {
        use std::sync::atomic::Ordering;
        let (_, t0) = clock();
        let (p, now, calls) = provider(9 * 60, vec![None, None, None]);
        let err = p.current().err().unwrap();
        assert_eq!(err.kind, Kind::Auth);
        assert_eq!(
            err.message,
            "temporary credentials from the test endpoint expire in 540 s and could not be \
             refreshed: no credentials from the test endpoint (HTTP 500)"
        );
        // An abort is still signed, with what is held (after one more try).
        assert_eq!(p.current_or_held().token(), Some("T0"));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        now.store(9 * 60, Ordering::SeqCst);
        let err = p.current().err().unwrap();
        assert!(
            err.message.starts_with(
                "temporary credentials from the test endpoint expired and could not be refreshed"
            ),
            "{err}"
        );
        assert!(!err.message.contains("HIDDENSECRET"));
        let (p, _, _) = provider(60, vec![Some(temp("T1", t0))]);
        let err = p.current().err().unwrap();
        assert!(err.message.contains("already expired"), "{err}");
    }

    #[test]
    fn static_keys_are_never_refreshed() {
        let (_, t0) = clock();
        let expired = temp("T0", t0 - TimeDelta::hours(1));
        let p = Provider::new(&expired, None);
        assert_eq!(token(&p), "T0", "no source to ask: the server decides");
        let mut keys = expired;
        keys.expires = None;
        let (p, _, calls) = provider(0, vec![]);
        *p.held.lock().unwrap() = Held::new(&keys);
        assert_eq!(token(&p), "T0");
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn threads_refresh_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (_, t0) = clock();
        for (left, waits) in [(5 * 60, true), (12 * 60, false)] {
            let calls = Arc::new(AtomicUsize::new(0));
            let counted = Arc::clone(&calls);
            let (release, gate) = std::sync::mpsc::channel::<()>();
            let gate = Mutex::new(gate);
            let refresh = Refresh {
                what: "w".into(),
                fetch: Arc::new(move || {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let _ = gate.lock().unwrap().recv();
                    Ok(temp("T1", t0 + TimeDelta::hours(1)))
                }),
            };
            let p = Arc::new(Provider::with_clock(
                &temp("T0", t0 + TimeDelta::seconds(left)),
                Some(refresh),
                Box::new(move || t0),
            ));
            let first = {
                let p = Arc::clone(&p);
                std::thread::spawn(move || token(&p))
            };
            while calls.load(Ordering::SeqCst) == 0 {
                std::thread::yield_now();
            }
            let others: Vec<_> = (0..4)
                .map(|_| {
                    let p = Arc::clone(&p);
                    std::thread::spawn(move || token(&p))
                })
                .collect();
            if !waits {
                // Advisory: nobody waits for the one refreshing.
                for t in others {
                    assert_eq!(t.join().unwrap(), "T0");
                }
                release.send(()).unwrap();
                assert_eq!(first.join().unwrap(), "T1");
            } else {
                // Mandatory: everyone waits, and uses what the first one got.
                std::thread::sleep(std::time::Duration::from_millis(50));
                release.send(()).unwrap();
                assert_eq!(first.join().unwrap(), "T1");
                for t in others {
                    assert_eq!(t.join().unwrap(), "T1");
                }
            }
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }

    #[test]
    fn container_hosts() {
        let ok = |u: &str| container_host_allowed(&url::Url::parse(u).unwrap());
        assert!(ok("http://127.0.0.1:80/x") && ok("http://169.254.170.2/v2/x"));
        assert!(ok("https://creds.example.com/") && ok("http://[fd00:ec2::23]/"));
        assert!(!ok("http://10.0.0.1/") && !ok("http://example.com/"));
    }
}
