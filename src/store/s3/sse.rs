//! Server-side encryption and storage class: the options `sse`, `sse_kms_key_id`,
//! `sse_customer_key` and `storage_class`, checked once and turned into the headers S3 wants.
//! They are signed with the request (AWS refuses unsigned `x-amz-*` headers). The SSE-C key
//! is a secret: no message and no Debug output shows it.

use std::fmt;

use base64::Engine as _;
use md5::{Digest as _, Md5};

use super::config::S3Options;
use super::request::Header;
use crate::error::{Error, Result};

/// The values S3 takes for `x-amz-server-side-encryption`.
const SSE: &[&str] = &["AES256", "aws:kms", "aws:kms:dsse"];

/// The values S3 takes for `x-amz-storage-class`.
const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "OUTPOSTS",
    "GLACIER_IR",
    "SNOW",
    "EXPRESS_ONEZONE",
];

/// The headers of the options, by request.
#[derive(Clone, Default, PartialEq)]
pub struct Encryption {
    /// On PutObject and CreateMultipartUpload: everything set.
    pub on_create: Vec<Header>,
    /// On UploadPart, GetObject and HeadObject: the SSE-C headers, which S3 needs on every
    /// access to an object encrypted with a customer key.
    pub on_access: Vec<Header>,
}

impl fmt::Debug for Encryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = |h: &[Header]| h.iter().map(|(n, _)| *n).collect::<Vec<_>>();
        f.debug_struct("Encryption")
            .field("on_create", &names(&self.on_create))
            .field("on_access", &names(&self.on_access))
            .finish()
    }
}

/// Checks the options (a usage error names the option, never the key) and builds the headers.
pub fn resolve(opts: &S3Options) -> Result<Encryption> {
    let mut on_create = Vec::new();
    let mut on_access = Vec::new();
    if let Some(sse) = &opts.sse {
        if !SSE.contains(&sse.as_str()) {
            return Err(Error::usage(format!(
                "option 'sse' must be \"AES256\" or \"aws:kms\" (or \"aws:kms:dsse\"), not '{}'",
                printable(sse)
            )));
        }
        if opts.sse_customer_key.is_some() {
            return Err(Error::usage(
                "options 'sse' and 'sse_customer_key' exclude each other: S3 encrypts either \
                 with its own keys (sse) or with yours (sse_customer_key)",
            ));
        }
        on_create.push(("x-amz-server-side-encryption", sse.clone()));
    }
    if let Some(key_id) = &opts.sse_kms_key_id {
        if !opts
            .sse
            .as_deref()
            .is_some_and(|s| s.starts_with("aws:kms"))
        {
            return Err(Error::usage(
                "option 'sse_kms_key_id' needs \"sse\": \"aws:kms\"",
            ));
        }
        if key_id.is_empty() || !key_id.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::usage(
                "option 'sse_kms_key_id' must be a KMS key id, ARN or alias (printable ASCII \
                 without spaces)",
            ));
        }
        on_create.push((
            "x-amz-server-side-encryption-aws-kms-key-id",
            key_id.clone(),
        ));
    }
    if let Some(key) = &opts.sse_customer_key {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .ok()
            .filter(|raw| raw.len() == 32)
            .ok_or_else(|| {
                Error::usage(
                    "option 'sse_customer_key' must be a 256-bit key in base64 (44 characters, \
                     as `openssl rand -base64 32` prints)",
                )
            })?;
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(&raw));
        on_access = vec![
            (
                "x-amz-server-side-encryption-customer-algorithm",
                "AES256".to_string(),
            ),
            (
                "x-amz-server-side-encryption-customer-key",
                key.trim().to_string(),
            ),
            ("x-amz-server-side-encryption-customer-key-md5", md5),
        ];
        on_create.extend(on_access.iter().cloned());
    }
    if let Some(class) = &opts.storage_class {
        if !STORAGE_CLASSES.contains(&class.as_str()) {
            return Err(Error::usage(format!(
                "option 'storage_class' must be one of {}, not '{}'",
                STORAGE_CLASSES.join(", "),
                printable(class)
            )));
        }
        on_create.push(("x-amz-storage-class", class.clone()));
    }
    Ok(Encryption {
        on_create,
        on_access,
    })
}

/// A user's value for a message: short, control characters escaped.
fn printable(text: &str) -> String {
    let shown: String = text.chars().take(40).collect();
    shown.escape_default().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn opts(json: serde_json::Value) -> S3Options {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn nothing_set_sends_nothing() {
        assert_eq!(
            resolve(&S3Options::default()).unwrap(),
            Encryption::default()
        );
    }

    #[test]
    fn headers_by_request() {
        let e = resolve(&opts(serde_json::json!({
            "sse": "aws:kms", "sse_kms_key_id": "alias/backups", "storage_class": "GLACIER_IR"
        })))
        .unwrap();
        assert_eq!(
            e.on_create,
            vec![
                ("x-amz-server-side-encryption", "aws:kms".to_string()),
                (
                    "x-amz-server-side-encryption-aws-kms-key-id",
                    "alias/backups".to_string()
                ),
                ("x-amz-storage-class", "GLACIER_IR".to_string()),
            ]
        );
        assert!(e.on_access.is_empty());

        let e = resolve(&opts(serde_json::json!({"sse_customer_key": KEY}))).unwrap();
        // md5 of the 32 raw bytes "0123456789abcdef0123456789abcdef".
        assert_eq!(
            e.on_access[2],
            (
                "x-amz-server-side-encryption-customer-key-md5",
                "hRasmdxgYDKV3nvbahU1MA==".to_string()
            )
        );
        assert_eq!(e.on_create, e.on_access);
        assert!(!format!("{e:?}").contains(KEY));
    }

    #[test]
    fn bad_values_are_usage_errors_that_never_show_the_key() {
        let cases = [
            (serde_json::json!({"sse": "aes256"}), "option 'sse' must be"),
            (
                serde_json::json!({"sse_kms_key_id": "k"}),
                "needs \"sse\": \"aws:kms\"",
            ),
            (
                serde_json::json!({"sse": "AES256", "sse_customer_key": KEY}),
                "exclude each other",
            ),
            (
                serde_json::json!({"sse_customer_key": "c2hvcnQ="}),
                "must be a 256-bit key",
            ),
            (
                serde_json::json!({"sse_customer_key": "not base64!"}),
                "must be a 256-bit key",
            ),
            (
                serde_json::json!({"storage_class": "standard_ia"}),
                "must be one of STANDARD,",
            ),
        ];
        for (json, want) in cases {
            let err = resolve(&opts(json.clone())).unwrap_err();
            assert_eq!(err.kind, crate::error::Kind::Usage);
            assert!(err.message.contains(want), "{json}: {}", err.message);
            assert!(!err.message.contains("c2hvcnQ"), "{}", err.message);
        }
    }
}
