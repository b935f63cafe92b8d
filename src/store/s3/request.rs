//! Every S3 request we send, one method each: a rusty-s3 action becomes a signed `Request` (the
//! action's own HTTP method, its signed headers) and the answer a typed value. Signing is pure
//! (`sign_at` takes a fixed time, for tests); sending, retries and errors are `client`'s.

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use md5::{Digest as _, Md5};
use rusty_s3::actions::{
    CompleteMultipartUploadResponse, CreateMultipartUpload, ListObjectsV2, ListObjectsV2Response,
};
use rusty_s3::{Method, S3Action};
use ureq::http::Response;
use ureq::Body;
use url::Url;

use super::client::{header, Client, Reply};
use super::errors::Target;
use crate::error::{Error, Kind, Result};

/// How long a presigned URL stays valid; one request (with its retries) needs far less.
pub const SIGN_FOR: Duration = Duration::from_secs(3600);

/// A header sent with a request: `(lowercase name, value)`.
pub type Header = (&'static str, String);

/// One HTTP request: a presigned URL, extra headers, and an in-memory body (so retries can
/// resend it, and so ureq sends `Content-Length`, never `Transfer-Encoding: chunked`).
pub struct Request<'a> {
    pub method: Method,
    pub url: Url,
    pub headers: Vec<Header>,
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    /// The request for `action`, signed now; `signed` headers are signed and sent (AWS rejects
    /// unsigned `x-amz-*` headers).
    pub fn sign<'h, A: S3Action<'h>>(action: A, signed: &'h [Header]) -> Request<'a> {
        Request::build(action, signed, |a| a.sign(SIGN_FOR))
    }

    /// `sign`, as if at `time`: the same action and time always give the same URL.
    #[cfg(test)]
    pub fn sign_at<'h, A: S3Action<'h>>(
        action: A,
        signed: &'h [Header],
        time: &jiff::Timestamp,
    ) -> Request<'a> {
        Request::build(action, signed, |a| a.sign_with_time(SIGN_FOR, time))
    }

    fn build<'h, A: S3Action<'h>>(
        mut action: A,
        signed: &'h [Header],
        url: impl FnOnce(&A) -> Url,
    ) -> Request<'a> {
        for (name, value) in signed {
            action.headers_mut().insert(*name, value.as_str());
        }
        Request {
            method: A::METHOD,
            url: url(&action),
            headers: signed.to_vec(),
            body: &[],
        }
    }

    /// An unsigned header (the signature covers only `host` and the `signed` ones).
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Request<'a> {
        self.headers.push((name, value.into()));
        self
    }

    pub fn body(mut self, body: &'a [u8]) -> Request<'a> {
        self.body = body;
        self
    }

    /// `If-None-Match: *` when `create_only`: S3 refuses to replace an existing object.
    fn create_only(self, create_only: bool) -> Request<'a> {
        if create_only {
            self.header("if-none-match", "*")
        } else {
            self
        }
    }
}

/// What a HeadObject tells about an object.
pub struct ObjectHead {
    pub size: u64,
    /// Our `backup-time` metadata, else `Last-Modified`, else the epoch.
    pub modified: DateTime<Utc>,
    /// Our `sha256` metadata.
    pub sha256: Option<String>,
}

/// Which bytes of an object to GET.
pub struct Range<'a> {
    /// First byte.
    pub from: u64,
    /// Last byte (inclusive); `None`: to the end.
    pub to: Option<u64>,
    /// Only from this version of the object (its ETag), so that a resumed download does not
    /// splice two objects.
    pub if_match: Option<&'a str>,
}

impl Client {
    /// Sends the request `make` signs with the credentials of the moment, asked at every
    /// attempt (the one place that asks): temporary ones are refreshed before they expire, and
    /// a retry after a refresh carries the new ones (`credentials::Provider`).
    fn call_signed<'r>(
        &self,
        make: impl Fn(&rusty_s3::Credentials) -> Request<'r>,
        target: &Target,
    ) -> Result<Reply> {
        self.call(|| Ok(make(&*self.credentials.current()?)), target)
    }

    /// One page of ListObjectsV2 under `prefix`, from `token` on.
    pub fn list_page(
        &self,
        prefix: &str,
        token: Option<&str>,
        target: &Target,
    ) -> Result<ListObjectsV2Response> {
        let sign = |credentials: &rusty_s3::Credentials| {
            let mut action = self.bucket.list_objects_v2(Some(credentials));
            if !prefix.is_empty() {
                action.with_prefix(prefix);
            }
            if let Some(token) = token {
                action.with_continuation_token(token);
            }
            Request::sign(action, &[])
        };
        let reply = self.call_signed(sign, target)?;
        ListObjectsV2::parse_response(&String::from_utf8_lossy(&reply.body)).map_err(|_| {
            Error::new(
                Kind::Remote,
                format!("{}: the server sent a listing we cannot read", target.url),
            )
        })
    }

    /// HeadObject: `None` when the object does not exist.
    pub fn head_object(&self, key: &str, target: &Target) -> Result<Option<ObjectHead>> {
        let sse_c = &self.encryption.on_access;
        let sign =
            |c: &rusty_s3::Credentials| Request::sign(self.bucket.head_object(Some(c), key), sse_c);
        let reply = match self.call_signed(sign, target) {
            Ok(reply) => reply,
            Err(e) if e.kind == Kind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let modified = reply
            .header("x-amz-meta-backup-time")
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .or_else(|| {
                reply
                    .header("last-modified")
                    .and_then(|t| DateTime::parse_from_rfc2822(t).ok())
            })
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
        Ok(Some(ObjectHead {
            size: reply
                .header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            modified,
            sha256: reply.header("x-amz-meta-sha256").map(str::to_string),
        }))
    }

    /// GetObject, with the body unread for streaming.
    pub fn get_object(
        &self,
        key: &str,
        range: &Range<'_>,
        target: &Target,
    ) -> Result<Response<Body>> {
        let sign = || {
            let credentials = self.credentials.current()?;
            let action = self.bucket.get_object(Some(&credentials), key);
            let mut req = Request::sign(action, &self.encryption.on_access);
            if range.from > 0 || range.to.is_some() {
                let to = range.to.map(|to| to.to_string()).unwrap_or_default();
                req = req.header("range", format!("bytes={}-{to}", range.from));
            }
            if let Some(etag) = range.if_match {
                req = req.header("if-match", etag);
            }
            Ok(req)
        };
        self.open(sign, target)
    }

    /// PutObject of a whole object: its ETag.
    pub fn put_object(
        &self,
        key: &str,
        metadata: &[Header],
        body: &[u8],
        create_only: bool,
        target: &Target,
    ) -> Result<Option<String>> {
        let mut signed = self.on_create(metadata);
        signed.push(signed_md5(body));
        let sign = |c: &rusty_s3::Credentials| {
            Request::sign(self.bucket.put_object(Some(c), key), &signed)
                .body(body)
                .create_only(create_only)
        };
        let reply = self.call_signed(sign, target)?;
        Ok(etag_of(&reply.headers).map(|e| unquote(&e)))
    }

    /// CreateMultipartUpload: the upload id.
    pub fn create_multipart(
        &self,
        key: &str,
        metadata: &[Header],
        target: &Target,
    ) -> Result<String> {
        let signed = self.on_create(metadata);
        let sign = |c: &rusty_s3::Credentials| {
            Request::sign(self.bucket.create_multipart_upload(Some(c), key), &signed)
        };
        let reply = self.call_signed(sign, target)?;
        let created = CreateMultipartUpload::parse_response(&String::from_utf8_lossy(&reply.body))
            .map_err(|_| {
                Error::new(
                    Kind::Remote,
                    format!("{}: unexpected answer to CreateMultipartUpload", target.url),
                )
            })?;
        Ok(created.upload_id().to_string())
    }

    /// UploadPart: the part's ETag, as the server sent it.
    pub fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: &[u8],
        target: &Target,
    ) -> Result<String> {
        let number16 = u16::try_from(number)
            .map_err(|_| Error::usage(format!("{}: too many parts", target.url)))?;
        let mut signed = self.encryption.on_access.clone();
        signed.push(signed_md5(body));
        let sign = |c: &rusty_s3::Credentials| {
            let action = self.bucket.upload_part(Some(c), key, number16, upload_id);
            Request::sign(action, &signed).body(body)
        };
        let reply = self.call_signed(sign, target)?;
        etag_of(&reply.headers).ok_or_else(|| {
            Error::new(
                Kind::Remote,
                format!("{}: the server sent no ETag for part {number}", target.url),
            )
        })
    }

    /// CompleteMultipartUpload of the parts with these ETags (in order): the object's ETag.
    pub fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
        create_only: bool,
        target: &Target,
    ) -> Result<Option<String>> {
        let etags = || etags.iter().map(String::as_str);
        // The body does not depend on the signature.
        let body = self
            .bucket
            .complete_multipart_upload(None, key, upload_id, etags())
            .body();
        // SSE-C here too: a bucket policy may require it on every request of the upload.
        let sign = |c: &rusty_s3::Credentials| {
            let action = self
                .bucket
                .complete_multipart_upload(Some(c), key, upload_id, etags());
            Request::sign(action, &self.encryption.on_access)
                .body(body.as_bytes())
                .create_only(create_only)
        };
        let reply = self.call_signed(sign, target)?;
        let text = String::from_utf8_lossy(&reply.body);
        Ok(CompleteMultipartUploadResponse::parse(&text)
            .ok()
            .map(|r| unquote(r.etag()))
            .or_else(|| etag_of(&reply.headers).map(|e| unquote(&e))))
    }

    /// AbortMultipartUpload, best effort: a failed abort leaves an incomplete upload that a
    /// bucket lifecycle rule (AbortIncompleteMultipartUpload) removes; there is nothing better
    /// to do with the error.
    pub fn abort_multipart(&self, key: &str, upload_id: &str, target: &Target) {
        // An upload failing because its credentials could not be refreshed is still aborted,
        // with the current ones (which that leaves valid for minutes: see credentials.rs).
        let sign = || {
            let credentials = self.credentials.current_or_held();
            let action = self
                .bucket
                .abort_multipart_upload(Some(&credentials), key, upload_id);
            Ok(Request::sign(action, &[]))
        };
        let _ = self.call(sign, target);
    }

    /// The headers of a new object: its metadata, then encryption and storage class.
    fn on_create(&self, metadata: &[Header]) -> Vec<Header> {
        metadata
            .iter()
            .chain(&self.encryption.on_create)
            .cloned()
            .collect()
    }

    /// DeleteObject (S3 says nothing about a missing key).
    pub fn delete_object(&self, key: &str, target: &Target) -> Result<()> {
        let sign =
            |c: &rusty_s3::Credentials| Request::sign(self.bucket.delete_object(Some(c), key), &[]);
        self.call_signed(sign, target)?;
        Ok(())
    }
}

/// `Content-MD5`, S3's integrity check of a body, as a signed header: the URLs are presigned
/// (`UNSIGNED-PAYLOAD`), so over plain http an unsigned MD5 could be replaced along with the
/// body; signed, a changed body fails the MD5 check and a changed MD5 the signature.
fn signed_md5(body: &[u8]) -> Header {
    ("content-md5", content_md5(body))
}

pub fn content_md5(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(body))
}

fn etag_of(headers: &ureq::http::HeaderMap) -> Option<String> {
    header(headers, "etag").map(str::to_string)
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusty_s3::{Bucket, Credentials, UrlStyle};

    fn bucket() -> (Bucket, Credentials) {
        let endpoint = "http://127.0.0.1:9000".parse().unwrap();
        let bucket = Bucket::new(endpoint, UrlStyle::Path, "bkt", "us-east-1").unwrap();
        (bucket, Credentials::new("AKID", "SECRETVALUE"))
    }

    fn at() -> jiff::Timestamp {
        "2026-01-02T03:04:05Z".parse().unwrap()
    }

    #[test]
    fn each_request_takes_its_actions_method() {
        let (b, c) = bucket();
        let c = Some(&c);
        let t = at();
        let method = |req: Request<'_>| req.method;
        let etags = ["e1"];
        let cases = [
            (
                method(Request::sign_at(b.list_objects_v2(c), &[], &t)),
                Method::Get,
            ),
            (
                method(Request::sign_at(b.head_object(c, "k"), &[], &t)),
                Method::Head,
            ),
            (
                method(Request::sign_at(b.get_object(c, "k"), &[], &t)),
                Method::Get,
            ),
            (
                method(Request::sign_at(b.put_object(c, "k"), &[], &t)),
                Method::Put,
            ),
            (
                method(Request::sign_at(b.delete_object(c, "k"), &[], &t)),
                Method::Delete,
            ),
            (
                method(Request::sign_at(b.create_multipart_upload(c, "k"), &[], &t)),
                Method::Post,
            ),
            (
                method(Request::sign_at(b.upload_part(c, "k", 1, "u"), &[], &t)),
                Method::Put,
            ),
            (
                method(Request::sign_at(
                    b.complete_multipart_upload(c, "k", "u", etags.into_iter()),
                    &[],
                    &t,
                )),
                Method::Post,
            ),
            (
                method(Request::sign_at(
                    b.abort_multipart_upload(c, "k", "u"),
                    &[],
                    &t,
                )),
                Method::Delete,
            ),
        ];
        for (i, (got, want)) in cases.into_iter().enumerate() {
            assert_eq!(got, want, "case {i}");
        }
    }

    #[test]
    fn signing_at_a_fixed_time_is_deterministic_and_signs_the_metadata() {
        let (b, c) = bucket();
        let meta: Vec<Header> = vec![("x-amz-meta-sha256", "abc".into())];
        let one = Request::sign_at(b.put_object(Some(&c), "p/db.gz"), &meta, &at());
        let two = Request::sign_at(b.put_object(Some(&c), "p/db.gz"), &meta, &at());
        assert_eq!(one.url, two.url);
        let url = one.url.as_str();
        assert!(
            url.starts_with("http://127.0.0.1:9000/bkt/p/db.gz?"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Date=20260102T030405Z"), "{url}");
        assert!(url.contains("X-Amz-Expires=3600"), "{url}");
        assert!(
            url.contains("X-Amz-SignedHeaders=host%3Bx-amz-meta-sha256"),
            "{url}"
        );
        assert!(!url.contains("SECRETVALUE"), "{url}");
        // Signed headers are also sent, with the same value.
        assert_eq!(one.headers, meta);
        let other = Request::sign_at(b.put_object(Some(&c), "p/other.gz"), &meta, &at());
        assert_ne!(one.url, other.url);
    }

    #[test]
    fn md5_is_base64() {
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
    }

    #[test]
    fn etags_lose_their_quotes() {
        assert_eq!(unquote("\"abc\""), "abc");
        assert_eq!(unquote("abc"), "abc");
    }
}
