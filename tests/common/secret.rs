//! The one secret-leak assertion of the tests. src/notify.rs's unit tests include this same
//! file with `#[path]`.
#![allow(dead_code)] // not every user calls it

/// No trace of any of `secrets` in `text` (compared without case: a URL parser lowercases
/// hosts), nor of a presigned URL's signature or credential.
#[track_caller]
pub fn assert_no_secret(text: &str, secrets: &[&str]) {
    let lower = text.to_ascii_lowercase();
    for secret in secrets {
        assert!(
            !lower.contains(&secret.to_ascii_lowercase()),
            "a secret leaked into the message: {text}"
        );
    }
    assert!(
        !text.contains("X-Amz-Signature") && !text.contains("X-Amz-Credential"),
        "{text}"
    );
}
