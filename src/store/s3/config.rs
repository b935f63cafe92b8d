//! S3 options and where their values come from: options > environment > shared AWS files >
//! defaults, as every AWS tool does it. `resolve` is a function of the options and an
//! `Environment` (variables plus file contents), so the precedence rules are unit-tested without
//! touching the real environment or home directory. Only credentials that are not static keys
//! (`credential_process`, web identity, the container endpoint, and IMDS for the process's
//! environment) make it run a command or send a request: `credentials` does those. Finding,
//! reading and parsing the files is `aws_files`'s.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use url::Url;

use super::aws_files::{self, Profile};
use super::credentials::{self, Refresh};
use crate::error::{Error, Kind, Result};

/// S3 options a user may pass as JSON. Every field is optional; `None` means "from the
/// environment, the shared AWS files, or the default".
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Options {
    /// `http(s)://host[:port][/path]`; default AWS (`https://s3.<region>.amazonaws.com`).
    pub endpoint: Option<String>,
    /// Signing region; default `us-east-1`.
    pub region: Option<String>,
    /// Path-style (`endpoint/bucket/key`) instead of virtual-hosted (`bucket.endpoint/key`);
    /// default: path-style when the endpoint host is an IP address or `localhost`.
    pub path_style: Option<bool>,
    /// Profile of `~/.aws/credentials` and `~/.aws/config`; default `AWS_PROFILE` or `default`.
    pub profile: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
    /// TCP (and TLS) connect timeout; default 10 s.
    pub connect_timeout_ms: Option<u64>,
    /// Longest wait for any single read or write of a request; default 60 s.
    pub timeout_ms: Option<u64>,
    /// Size of multipart parts in bytes; default 6 MiB, at most `MAX_PART_SIZE`. AWS needs at
    /// least 5 MiB (every part but the last); smaller sizes are allowed for servers that accept
    /// them (and for tests).
    pub part_size: Option<u64>,
    /// Streams longer than this go multipart; default = part size.
    pub multipart_threshold: Option<u64>,
    /// Parts uploaded in parallel; default 4.
    pub concurrency: Option<u32>,
    /// Retries of each request on transient failures; default 5.
    pub retries: Option<u32>,
    /// Server-side encryption and storage class: see `sse.rs`.
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    pub sse_customer_key: Option<String>,
    pub storage_class: Option<String>,
}

/// Exactly the keys of `S3Options`: the SQL layer splits a user's JSON options with it.
pub const OPTION_KEYS: &[&str] = &[
    "endpoint",
    "region",
    "path_style",
    "profile",
    "access_key_id",
    "secret_access_key",
    "session_token",
    "connect_timeout_ms",
    "timeout_ms",
    "part_size",
    "multipart_threshold",
    "concurrency",
    "retries",
    "sse",
    "sse_kms_key_id",
    "sse_customer_key",
    "storage_class",
];

/// Hand-written so the secret key and session token never reach a log or an error message.
impl fmt::Debug for S3Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("profile", &self.profile)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &hidden(&self.secret_access_key))
            .field("session_token", &hidden(&self.session_token))
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("timeout_ms", &self.timeout_ms)
            .field("part_size", &self.part_size)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("concurrency", &self.concurrency)
            .field("retries", &self.retries)
            .field("sse", &self.sse)
            .field("sse_kms_key_id", &self.sse_kms_key_id)
            .field("sse_customer_key", &hidden(&self.sse_customer_key))
            .field("storage_class", &self.storage_class)
            .finish()
    }
}

pub const DEFAULT_REGION: &str = "us-east-1";
pub const DEFAULT_PART_SIZE: u64 = 6 << 20;
/// AWS refuses parts (other than the last) below this.
pub const AWS_MIN_PART_SIZE: u64 = 5 << 20;
/// Our ceiling for `part_size` and `multipart_threshold` (AWS allows 5 GiB): every part is
/// held in memory, so this bounds what one upload can take.
pub const MAX_PART_SIZE: u64 = 512 << 20;
/// What the parts of one upload may hold in memory: (concurrency + 1) parts, the one being
/// filled and one per worker. Parts grow after every 1000 (see upload.rs) only up to
/// `max_part_size`, which keeps them within this.
pub const MAX_UPLOAD_MEMORY: u64 = 2 << 30;
pub const MAX_CONCURRENCY: u32 = 64;
pub const DEFAULT_CONCURRENCY: u32 = 4;
pub const DEFAULT_RETRIES: u32 = 5;
const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_TIMEOUT_MS: u64 = 60_000;
const DEFAULT_BACKOFF_MS: u64 = 200;

/// Not an S3 option: a knob for tests (and impatient operators) that sets the base of the retry
/// backoff in milliseconds. The cap is 25 × the base.
pub const BACKOFF_ENV: &str = "SQLITE_BACKUP_S3_BACKOFF_MS";

/// The environment `resolve` reads: variables and the two shared AWS files' contents.
#[derive(Clone, Default)]
pub struct Environment {
    vars: HashMap<String, String>,
    /// Ask the EC2 metadata service last: the process's environment only, so unit tests built
    /// from `empty()` never send a request.
    imds: bool,
    credentials_file: Option<String>,
    config_file: Option<String>,
}

/// Variables we read; nothing else from the process environment is looked at.
const VARS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_ENDPOINT_URL_STS",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    BACKOFF_ENV,
];

impl Environment {
    /// Nothing set: only options and defaults apply. Tests start from here.
    pub fn empty() -> Environment {
        Environment::default()
    }

    /// The process environment and the shared files it points at (missing files are fine).
    pub fn from_process() -> Result<Environment> {
        let mut env = Environment::empty();
        env.imds = true;
        for name in VARS {
            if let Ok(value) = std::env::var(name) {
                env.vars.insert(name.to_string(), value);
            }
        }
        let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE"));
        let files = aws_files::read(
            |name| env.var(name),
            home.as_deref().map(std::path::Path::new),
        )?;
        env.credentials_file = files.credentials;
        env.config_file = files.config;
        Ok(env)
    }

    pub fn with_var(mut self, name: &str, value: &str) -> Environment {
        self.vars.insert(name.to_string(), value.to_string());
        self
    }

    pub fn with_credentials_file(mut self, text: &str) -> Environment {
        self.credentials_file = Some(text.to_string());
        self
    }

    pub fn with_config_file(mut self, text: &str) -> Environment {
        self.config_file = Some(text.to_string());
        self
    }

    /// A variable, with empty or blank values treated as unset (as the AWS SDKs do).
    fn var(&self, name: &str) -> Option<String> {
        self.vars
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    }
}

/// Access key, secret and optional session token. No Debug: it would print the secret.
#[derive(Clone, PartialEq)]
pub struct Secrets {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Temporary credentials' `Expiration`; `None` for keys that do not expire.
    pub expires: Option<DateTime<Utc>>,
}

impl Secrets {
    fn keys(
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    ) -> Secrets {
        Secrets {
            access_key_id,
            secret_access_key,
            session_token,
            expires: None,
        }
    }
}

/// Credentials as found: static keys, or temporary ones with the way to ask for them again.
type Found = (Secrets, Option<Refresh>);

/// Temporary credentials: fetched now, and again by the client before they expire.
fn temporary(
    what: String,
    fetch: impl Fn() -> Result<Secrets> + Send + Sync + 'static,
) -> Result<Option<Found>> {
    let secrets = fetch()?;
    let fetch = Arc::new(fetch);
    Ok(Some((secrets, Some(Refresh { what, fetch }))))
}

/// Everything the client needs, with every default applied and every value checked.
#[derive(Clone)]
pub struct Resolved {
    pub endpoint: Url,
    pub region: String,
    pub path_style: bool,
    pub secrets: Secrets,
    /// For temporary `secrets`: their source, asked again before they expire.
    pub refresh: Option<Refresh>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub part_size: u64,
    pub multipart_threshold: u64,
    pub concurrency: u32,
    pub retries: u32,
    pub backoff_base: Duration,
    pub encryption: super::sse::Encryption,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolved")
            .field("endpoint", &display_endpoint(&self.endpoint))
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.secrets.access_key_id)
            .field("part_size", &self.part_size)
            .field("multipart_threshold", &self.multipart_threshold)
            .field("concurrency", &self.concurrency)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// The endpoint as messages show it: scheme, host, port and path; never user info or a query.
pub fn display_endpoint(url: &Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    let path = url.path();
    if path != "/" {
        shown.push_str(path);
    }
    shown
}

pub fn resolve(opts: &S3Options, env: &Environment, bucket: &str) -> Result<Resolved> {
    let explicit_profile = opts.profile.clone().or_else(|| env.var("AWS_PROFILE"));
    let profile_name = explicit_profile
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let profile = Profile::from_files(
        env.credentials_file.as_deref(),
        env.config_file.as_deref(),
        &profile_name,
    );

    let region = non_empty(&opts.region)
        .or_else(|| env.var("AWS_REGION"))
        .or_else(|| env.var("AWS_DEFAULT_REGION"))
        .or_else(|| profile.config("region"))
        .unwrap_or_else(|| DEFAULT_REGION.to_string());
    if !region
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Error::usage(format!("invalid region '{region}'")));
    }

    let secrets = resolve_secrets(opts, env, &profile, &profile_name, &region)?;
    if secrets.is_none() && explicit_profile.is_some() && !profile.exists() {
        return Err(Error::usage(format!(
            "profile '{profile_name}' not found in ~/.aws/credentials or ~/.aws/config"
        )));
    }
    let (secrets, refresh) = match secrets {
        Some(found) => found,
        None => match container_secrets(env)? {
            Some(found) => Some(found),
            None => imds_secrets(env, &profile)?,
        }
        .ok_or_else(|| {
            Error::new(
                Kind::Auth,
                "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the \
                 access_key_id/secret_access_key options, or a profile in ~/.aws/credentials \
                 (keys or credential_process), or AWS_CONTAINER_CREDENTIALS_FULL_URI, or an EC2 \
                 instance profile",
            )
        })?,
    };

    let endpoint_text = non_empty(&opts.endpoint)
        .or_else(|| env.var("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env.var("AWS_ENDPOINT_URL"))
        .or_else(|| profile.config("endpoint_url"))
        .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
    let endpoint = parse_endpoint(&endpoint_text)?;
    let path_style = opts
        .path_style
        .unwrap_or_else(|| auto_path_style(&endpoint, bucket));

    let connect_timeout_ms = positive(
        "connect_timeout_ms",
        opts.connect_timeout_ms,
        DEFAULT_CONNECT_TIMEOUT_MS,
    )?;
    let timeout_ms = positive("timeout_ms", opts.timeout_ms, DEFAULT_TIMEOUT_MS)?;
    let part_size = opts.part_size.unwrap_or(DEFAULT_PART_SIZE);
    if !(1..=MAX_PART_SIZE).contains(&part_size) {
        return Err(Error::usage(format!(
            "part_size must be between 1 and {MAX_PART_SIZE} bytes (512 MiB: parts are held in \
             memory; AWS needs at least {AWS_MIN_PART_SIZE}), not {part_size}"
        )));
    }
    let multipart_threshold = opts.multipart_threshold.unwrap_or(part_size);
    if multipart_threshold > MAX_PART_SIZE {
        return Err(Error::usage(format!(
            "multipart_threshold must be at most {MAX_PART_SIZE} bytes (512 MiB: a single PUT \
             is held in memory), not {multipart_threshold}"
        )));
    }
    let concurrency = opts.concurrency.unwrap_or(DEFAULT_CONCURRENCY);
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        return Err(Error::usage(format!(
            "concurrency must be between 1 and {MAX_CONCURRENCY}, not {concurrency}"
        )));
    }
    if (u64::from(concurrency) + 1).saturating_mul(part_size) > MAX_UPLOAD_MEMORY {
        return Err(Error::usage(format!(
            "(concurrency + 1) × part_size = {} bytes is more than the {MAX_UPLOAD_MEMORY} \
             (2 GiB) an upload may hold in memory: lower part_size or concurrency",
            (u64::from(concurrency) + 1).saturating_mul(part_size)
        )));
    }
    let retries = opts.retries.unwrap_or(DEFAULT_RETRIES);
    if retries > 30 {
        return Err(Error::usage(format!(
            "retries must be at most 30, not {retries}"
        )));
    }
    let backoff_ms = match env.var(BACKOFF_ENV) {
        // At most a minute: a retry sleeps up to 25 × this, and a larger base only hangs the call.
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|ms| *ms <= 60_000)
            .ok_or_else(|| {
                Error::usage(format!(
                    "{BACKOFF_ENV} must be a number of milliseconds up to 60000"
                ))
            })?,
        None => DEFAULT_BACKOFF_MS,
    };

    Ok(Resolved {
        endpoint,
        region,
        path_style,
        secrets,
        refresh,
        connect_timeout: Duration::from_millis(connect_timeout_ms),
        timeout: Duration::from_millis(timeout_ms),
        part_size,
        multipart_threshold,
        concurrency,
        retries,
        backoff_base: Duration::from_millis(backoff_ms),
        encryption: super::sse::resolve(opts)?,
    })
}

/// One credential set from one source: mixing a key from the options with a secret from the
/// environment would only ever produce a confusing signature error.
fn resolve_secrets(
    opts: &S3Options,
    env: &Environment,
    profile: &Profile,
    profile_name: &str,
    region: &str,
) -> Result<Option<Found>> {
    match (
        non_empty(&opts.access_key_id),
        non_empty(&opts.secret_access_key),
    ) {
        (Some(access_key_id), Some(secret_access_key)) => {
            return Ok(Some((
                Secrets::keys(
                    access_key_id,
                    secret_access_key,
                    non_empty(&opts.session_token),
                ),
                None,
            )))
        }
        (Some(_), None) | (None, Some(_)) => {
            return Err(Error::usage(
                "access_key_id and secret_access_key must be given together",
            ))
        }
        (None, None) => {}
    }
    // An explicit profile option beats the environment's keys (like `aws --profile`).
    if opts.profile.is_none() {
        if let (Some(access_key_id), Some(secret_access_key)) = (
            env.var("AWS_ACCESS_KEY_ID"),
            env.var("AWS_SECRET_ACCESS_KEY"),
        ) {
            return Ok(Some((
                Secrets::keys(
                    access_key_id,
                    secret_access_key,
                    env.var("AWS_SESSION_TOKEN"),
                ),
                None,
            )));
        }
    }
    // Web identity: the variables (unless a profile is named), else the profile's settings.
    let web = |env_name: &str, key: &str| {
        opts.profile
            .is_none()
            .then(|| env.var(env_name))
            .flatten()
            .or_else(|| profile.get(key))
    };
    if let Some(token_file) = web("AWS_WEB_IDENTITY_TOKEN_FILE", "web_identity_token_file") {
        let role_arn = web("AWS_ROLE_ARN", "role_arn").ok_or_else(|| {
            Error::usage(
                "AWS_WEB_IDENTITY_TOKEN_FILE (or web_identity_token_file) is set but no role: \
                 set AWS_ROLE_ARN (or role_arn in the profile)",
            )
        })?;
        let session_name = web("AWS_ROLE_SESSION_NAME", "role_session_name").unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("sqlite-backup-{now}")
        });
        let sts = env
            .var("AWS_ENDPOINT_URL_STS")
            .or_else(|| env.var("AWS_ENDPOINT_URL"))
            .or_else(|| profile.config("endpoint_url"))
            .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
        // Asked again, the token file is read again: EKS and GitHub rotate it.
        return temporary("STS AssumeRoleWithWebIdentity".to_string(), move || {
            credentials::from_web_identity(&sts, &token_file, &role_arn, &session_name)
        });
    }
    // botocore's order within a profile: keys in the credentials file, then credential_process,
    // then keys in the config file.
    let keys = |get: &dyn Fn(&str) -> Option<String>| match (
        get("aws_access_key_id"),
        get("aws_secret_access_key"),
    ) {
        (Some(access_key_id), Some(secret_access_key)) => Some((
            Secrets::keys(access_key_id, secret_access_key, get("aws_session_token")),
            None,
        )),
        _ => None,
    };
    if let Some(secrets) = keys(&|k| profile.credentials(k)) {
        return Ok(Some(secrets));
    }
    if let Some(command) = profile.get("credential_process") {
        let profile_name = profile_name.to_string();
        return temporary(
            format!("the credential_process of profile '{profile_name}'"),
            move || credentials::from_process(&command, &profile_name),
        );
    }
    Ok(keys(&|k| profile.get(k)))
}

/// The EC2 instance profile, last of all, unless `AWS_EC2_METADATA_DISABLED` is `true`.
fn imds_secrets(env: &Environment, profile: &Profile) -> Result<Option<Found>> {
    let disabled = env
        .var("AWS_EC2_METADATA_DISABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if !env.imds || disabled {
        return Ok(None);
    }
    let base = env
        .var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
        .or_else(|| profile.config("ec2_metadata_service_endpoint"))
        .unwrap_or_else(|| "http://169.254.169.254/".to_string());
    let base = if base.ends_with('/') {
        base
    } else {
        format!("{base}/")
    };
    let Some(secrets) = credentials::from_imds(&base)? else {
        return Ok(None);
    };
    let refresh = Refresh {
        what: "the EC2 instance metadata service".to_string(),
        fetch: Arc::new(move || {
            credentials::from_imds(&base)?.ok_or_else(|| {
                Error::new(
                    Kind::Auth,
                    "the EC2 instance metadata service no longer gives the instance's credentials",
                )
            })
        }),
    };
    Ok(Some((secrets, Some(refresh))))
}

/// The container endpoint (ECS, EKS Pod Identity), after every profile source, as in botocore.
fn container_secrets(env: &Environment) -> Result<Option<Found>> {
    let url = match (
        env.var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
        env.var("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
    ) {
        (Some(relative), _) => format!("http://169.254.170.2{relative}"),
        (None, Some(full)) => full,
        (None, None) => return Ok(None),
    };
    let token_file = env.var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    let token = env.var("AWS_CONTAINER_AUTHORIZATION_TOKEN");
    // Asked again, the token file is read again: EKS Pod Identity rotates it.
    temporary(
        "the container credentials endpoint".to_string(),
        move || {
            let token = match &token_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| {
                            Error::io(
                                format!(
                                    "cannot read {path} (AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)"
                                ),
                                e,
                            )
                        })?
                        .trim()
                        .to_string(),
                ),
                None => token.clone(),
            };
            credentials::from_container(&url, token.as_deref())
        },
    )
}

fn non_empty(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

fn positive(name: &str, value: Option<u64>, default: u64) -> Result<u64> {
    match value {
        None => Ok(default),
        Some(0) => Err(Error::usage(format!("{name} must be more than 0"))),
        Some(v) => Ok(v),
    }
}

fn parse_endpoint(text: &str) -> Result<Url> {
    let bad = |why: &str| Error::usage(format!("invalid endpoint: {why}"));
    let url = Url::parse(text).map_err(|_| bad("not a URL like https://host[:port]"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("it must start with http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("it has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "credentials do not belong in the endpoint URL; use the options or environment",
        ));
    }
    if url.query().is_some() {
        return Err(bad("it must not have a query string"));
    }
    Ok(url)
}

/// Virtual-hosted style needs DNS for `<bucket>.<host>`: impossible for an IP address, and
/// `*.localhost` does not resolve everywhere. Bucket names with dots break TLS certificate
/// matching of AWS over https. Everything else gets AWS's preferred virtual-hosted style.
pub fn auto_path_style(endpoint: &Url, bucket: &str) -> bool {
    let host = endpoint.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok()
        || host.eq_ignore_ascii_case("localhost")
        || (endpoint.scheme() == "https" && bucket.contains('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> S3Options {
        S3Options::default()
    }

    fn keys(opts: &S3Options, env: &Environment) -> (String, String, Option<String>) {
        let r = resolve(opts, env, "bkt").unwrap();
        (
            r.secrets.access_key_id,
            r.secrets.secret_access_key,
            r.secrets.session_token,
        )
    }

    const CREDENTIALS: &str = "\
# comment
[default]
aws_access_key_id = FILEKEY
aws_secret_access_key = FILESECRET

[work]
aws_access_key_id=WORKKEY
aws_secret_access_key=WORKSECRET
aws_session_token=WORKTOKEN
";

    const CONFIG: &str = "\
[default]
region = eu-west-1

[profile work]
region = ap-south-1
endpoint_url = http://10.0.0.1:9000
s3 =
  addressing_style = path
[work]
region = not-this-one
";

    #[test]
    fn option_keys_match_the_struct() {
        let mut json = serde_json::Map::new();
        for key in OPTION_KEYS {
            json.insert(key.to_string(), serde_json::Value::Null);
        }
        let parsed: S3Options = serde_json::from_value(serde_json::Value::Object(json)).unwrap();
        assert_eq!(parsed, S3Options::default());
        let err = serde_json::from_str::<S3Options>(r#"{"bucket":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field"));
        // Every field of the struct is in the list (Debug prints them all).
        let debug = format!("{:?}", S3Options::default());
        assert_eq!(debug.matches(':').count(), OPTION_KEYS.len());
    }

    #[test]
    fn options_beat_environment_beat_files() {
        let env = Environment::empty()
            .with_var("AWS_ACCESS_KEY_ID", "ENVKEY")
            .with_var("AWS_SECRET_ACCESS_KEY", "ENVSECRET")
            .with_var("AWS_SESSION_TOKEN", "ENVTOKEN")
            .with_credentials_file(CREDENTIALS);
        let mut o = opts();
        o.access_key_id = Some("OPTKEY".into());
        o.secret_access_key = Some("OPTSECRET".into());
        assert_eq!(
            keys(&o, &env),
            ("OPTKEY".into(), "OPTSECRET".into(), None),
            "option keys never pick up the environment's token"
        );
        assert_eq!(
            keys(&opts(), &env),
            ("ENVKEY".into(), "ENVSECRET".into(), Some("ENVTOKEN".into()))
        );
        let files_only = Environment::empty().with_credentials_file(CREDENTIALS);
        assert_eq!(
            keys(&opts(), &files_only),
            ("FILEKEY".into(), "FILESECRET".into(), None)
        );
    }

    #[test]
    fn profile_selection() {
        let env = Environment::empty()
            .with_credentials_file(CREDENTIALS)
            .with_config_file(CONFIG);
        let by_env = env.clone().with_var("AWS_PROFILE", "work");
        let r = resolve(&opts(), &by_env, "bkt").unwrap();
        assert_eq!(r.secrets.access_key_id, "WORKKEY");
        assert_eq!(r.secrets.session_token.as_deref(), Some("WORKTOKEN"));
        assert_eq!(r.region, "ap-south-1", "[work] in config is not a profile");
        assert_eq!(r.endpoint.as_str(), "http://10.0.0.1:9000/");
        assert!(r.path_style);

        // The profile option beats AWS_PROFILE and the environment's keys.
        let mut o = opts();
        o.profile = Some("default".into());
        let noisy = by_env
            .clone()
            .with_var("AWS_ACCESS_KEY_ID", "ENVKEY")
            .with_var("AWS_SECRET_ACCESS_KEY", "ENVSECRET");
        let r = resolve(&o, &noisy, "bkt").unwrap();
        assert_eq!(r.secrets.access_key_id, "FILEKEY");
        assert_eq!(r.region, "eu-west-1");
        // Without the option, environment keys beat AWS_PROFILE's.
        assert_eq!(keys(&opts(), &noisy).0, "ENVKEY");

        o.profile = Some("nope".into());
        let err = resolve(&o, &env, "bkt").unwrap_err();
        assert_eq!(err.kind, Kind::Usage);
        assert!(err.message.contains("profile 'nope' not found"), "{err}");
    }

    #[test]
    fn region_order() {
        let env = Environment::empty()
            .with_var("AWS_ACCESS_KEY_ID", "k")
            .with_var("AWS_SECRET_ACCESS_KEY", "s")
            .with_config_file(CONFIG);
        assert_eq!(resolve(&opts(), &env, "b").unwrap().region, "eu-west-1");
        let env = env.with_var("AWS_DEFAULT_REGION", "us-west-1");
        assert_eq!(resolve(&opts(), &env, "b").unwrap().region, "us-west-1");
        let env = env.with_var("AWS_REGION", "us-west-2");
        assert_eq!(resolve(&opts(), &env, "b").unwrap().region, "us-west-2");
        let mut o = opts();
        o.region = Some("eu-central-1".into());
        assert_eq!(resolve(&o, &env, "b").unwrap().region, "eu-central-1");
        let bare = Environment::empty()
            .with_var("AWS_ACCESS_KEY_ID", "k")
            .with_var("AWS_SECRET_ACCESS_KEY", "s");
        let r = resolve(&opts(), &bare, "b").unwrap();
        assert_eq!(r.region, DEFAULT_REGION);
        assert_eq!(r.endpoint.as_str(), "https://s3.us-east-1.amazonaws.com/");
        assert!(!r.path_style, "AWS is virtual-hosted");
    }

    #[test]
    fn endpoint_order_and_path_style() {
        let env = Environment::empty()
            .with_var("AWS_ACCESS_KEY_ID", "k")
            .with_var("AWS_SECRET_ACCESS_KEY", "s")
            .with_var("AWS_ENDPOINT_URL", "https://generic.example.com");
        let r = resolve(&opts(), &env, "b").unwrap();
        assert_eq!(r.endpoint.as_str(), "https://generic.example.com/");
        assert!(!r.path_style);
        let env = env.with_var("AWS_ENDPOINT_URL_S3", "http://localhost:9000");
        let r = resolve(&opts(), &env, "b").unwrap();
        assert_eq!(r.endpoint.as_str(), "http://localhost:9000/");
        assert!(r.path_style);
        for (endpoint, path) in [
            ("http://127.0.0.1:9000", true),
            ("http://[::1]:9000", true),
            ("http://LOCALHOST", true),
            ("https://minio.internal", false),
        ] {
            let mut o = opts();
            o.endpoint = Some(endpoint.into());
            assert_eq!(
                resolve(&o, &env, "b").unwrap().path_style,
                path,
                "{endpoint}"
            );
            o.path_style = Some(!path);
            assert_eq!(resolve(&o, &env, "b").unwrap().path_style, !path);
        }
        // Dotted bucket names cannot be virtual-hosted over https.
        let mut o = opts();
        o.endpoint = Some("https://s3.example.com".into());
        assert!(resolve(&o, &env, "my.bucket").unwrap().path_style);

        o.endpoint = Some("ftp://x".into());
        assert_eq!(resolve(&o, &env, "b").unwrap_err().kind, Kind::Usage);
        o.endpoint = Some("https://user:pw@host".into());
        let err = resolve(&o, &env, "b").unwrap_err();
        assert!(!err.message.contains("pw"));
    }

    #[test]
    fn missing_credentials_say_what_to_set() {
        let err = resolve(&opts(), &Environment::empty(), "b").unwrap_err();
        assert_eq!(err.kind, Kind::Auth);
        assert!(err.message.contains("AWS_ACCESS_KEY_ID"), "{err}");
        assert!(err.message.contains("~/.aws/credentials"), "{err}");
        let mut o = opts();
        o.access_key_id = Some("k".into());
        assert_eq!(
            resolve(&o, &Environment::empty(), "b").unwrap_err().kind,
            Kind::Usage
        );
    }

    #[test]
    fn debug_never_shows_secrets() {
        let mut o = opts();
        o.access_key_id = Some("AKIDVISIBLE".into());
        o.secret_access_key = Some("TOPSECRETVALUE".into());
        o.session_token = Some("SESSIONTOKENVALUE".into());
        let text = format!("{o:?}");
        assert!(text.contains("AKIDVISIBLE"));
        assert!(!text.contains("TOPSECRETVALUE") && !text.contains("SESSIONTOKENVALUE"));
        let r = resolve(&o, &Environment::empty(), "b").unwrap();
        let text = format!("{r:?}");
        assert!(!text.contains("TOPSECRETVALUE") && !text.contains("SESSIONTOKENVALUE"));
    }

    #[test]
    fn defaults_and_limits() {
        let mut o = opts();
        o.access_key_id = Some("k".into());
        o.secret_access_key = Some("s".into());
        let r = resolve(&o, &Environment::empty(), "b").unwrap();
        assert_eq!(r.part_size, DEFAULT_PART_SIZE);
        assert_eq!(r.multipart_threshold, DEFAULT_PART_SIZE);
        assert_eq!(r.concurrency, 4);
        assert_eq!(r.retries, 5);
        o.part_size = Some(0);
        assert_eq!(
            resolve(&o, &Environment::empty(), "b").unwrap_err().kind,
            Kind::Usage
        );
        o.part_size = Some(1000);
        let r = resolve(&o, &Environment::empty(), "b").unwrap();
        assert_eq!(
            r.multipart_threshold, 1000,
            "threshold defaults to the part size"
        );
        o.concurrency = Some(0);
        assert!(resolve(&o, &Environment::empty(), "b").is_err());
        // Sizes that would not fit in memory are refused before anything is allocated.
        o.concurrency = Some(4);
        o.part_size = Some(5 << 30);
        let err = resolve(&o, &Environment::empty(), "b").unwrap_err();
        assert!(err.message.contains("part_size must be"), "{}", err.message);
        o.part_size = Some(MAX_PART_SIZE);
        o.multipart_threshold = Some(MAX_PART_SIZE + 1);
        assert!(resolve(&o, &Environment::empty(), "b").is_err());
        o.multipart_threshold = None;
        o.concurrency = Some(4);
        assert!(
            resolve(&o, &Environment::empty(), "b").is_err(),
            "5 × 512 MiB > 2 GiB"
        );
        o.concurrency = Some(3);
        assert!(
            resolve(&o, &Environment::empty(), "b").is_ok(),
            "4 × 512 MiB = 2 GiB"
        );
        // A huge backoff base made a retry sleep for ages: the call never returned.
        let env = Environment::empty().with_var(BACKOFF_ENV, "18446744073709551615");
        assert!(resolve(&o, &env, "b").is_err());
    }
}
