//! Turning S3 answers and transport failures into errors that say what to fix.
//!
//! Messages are built only from the bucket, the key, the endpoint (scheme, host, port), the HTTP
//! status and S3's error `<Code>`: never from a URL we signed (its query string carries the
//! signature and any session token), nor from S3's `<Message>` or ureq's Display, which may
//! quote the request.

use std::io;
use std::time::Duration;

use crate::error::{Error, Kind};

/// What a request was about, for messages.
#[derive(Debug, Clone)]
pub struct Target {
    pub bucket: String,
    /// `s3://bucket/key` (or `s3://bucket/prefix` for listings).
    pub url: String,
    /// The request carries `If-None-Match: *`: a 412/409 means "already exists".
    pub create_only: bool,
}

/// The `<Code>` of an S3 XML error body, if any. Kept to a plain identifier so nothing else of
/// the body can ride along into a message.
pub fn error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    let code: String = text[start..start + len]
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_' || *c == '-')
        .take(64)
        .collect();
    (!code.is_empty()).then_some(code)
}

/// The error for an HTTP answer that is not a success. `Kind::Transient` ones get retried.
pub fn from_status(
    status: u16,
    code: Option<&str>,
    region_hint: Option<&str>,
    t: &Target,
) -> Error {
    let url = &t.url;
    let with_code = code.map(|c| format!(" ({c})")).unwrap_or_default();
    match (status, code) {
        // Signatures carry the time; S3 refuses one more than 15 minutes off.
        (403, Some("RequestTimeTooSkewed")) => Error::new(
            Kind::Auth,
            format!(
                "access denied to {url}: this machine's clock is too far from the server's: \
                 set the system time{with_code}"
            ),
        ),
        (403, _)
        | (
            400,
            Some(
                "AuthorizationHeaderMalformed"
                | "AuthorizationQueryParametersError"
                | "InvalidAccessKeyId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidToken",
            ),
        ) => Error::new(
            Kind::Auth,
            format!(
                "access denied to {url}: check the access key, secret key and region{with_code}"
            ),
        ),
        (404, Some("NoSuchBucket")) => Error::new(
            Kind::NotFound,
            format!("bucket '{}' does not exist", t.bucket),
        ),
        (404, Some("NoSuchUpload")) => Error::new(
            Kind::Remote,
            format!("the multipart upload to {url} was aborted or has expired"),
        ),
        (404, _) => Error::new(Kind::NotFound, format!("{url} does not exist")),
        (301 | 307 | 308, _) | (400, Some("IllegalLocationConstraintException")) => {
            let hint = region_hint
                .filter(|r| r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
                .map(|r| format!(" (it is in '{r}')"))
                .unwrap_or_default();
            Error::new(
                Kind::Remote,
                format!(
                    "bucket '{}' is in another region{hint}: set the region option or \
                     AWS_REGION{with_code}",
                    t.bucket
                ),
            )
        }
        (412, _) | (409, Some("ConditionalRequestConflict")) if t.create_only => Error::new(
            Kind::Exists,
            format!("{url} already exists and create_only is set"),
        ),
        (412, _) => Error::new(
            Kind::Remote,
            format!("{url} changed while it was being read{with_code}"),
        ),
        // Retried: what S3 documents as "try again" and the AWS SDKs retry. 408 and 400
        // RequestTimeout (the connection sat idle), 409 OperationAborted (a conflicting
        // operation in progress), 429 and SlowDown, every 5xx. Any other 4xx is an answer:
        // the same request would be refused again (400 bad request, 403 denied, 404 missing,
        // 405, 409 conflict, 411/413 length, 412 precondition, 416 range).
        (408, _)
        | (400, Some("RequestTimeout"))
        | (409, Some("OperationAborted"))
        | (429, _)
        | (500..=599, _) => Error::new(
            Kind::Transient,
            format!("{url}: the server answered HTTP {status}{with_code}"),
        ),
        _ => Error::new(
            Kind::Remote,
            format!("{url}: the server refused the request with HTTP {status}{with_code}"),
        ),
    }
}

/// Which configured timeout a ureq timeout was, to print the number the user can change.
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
}

/// The error for a request that got no usable HTTP answer. Connection-level failures and
/// timeouts are `Kind::Transient`.
pub fn from_transport(err: ureq::Error, endpoint: &str, timeouts: &Timeouts) -> Error {
    use ureq::Error as U;
    let transient = |m: String| Error::new(Kind::Transient, m);
    match err {
        U::Timeout(which) => {
            let limit = match which {
                ureq::Timeout::Connect | ureq::Timeout::Resolve => timeouts.connect,
                _ => timeouts.request,
            };
            transient(format!(
                "timed out after {} ms talking to {endpoint}",
                limit.as_millis()
            ))
        }
        U::HostNotFound => transient(format!("cannot reach {endpoint}: host not found")),
        U::ConnectionFailed => transient(format!("cannot reach {endpoint}: connection failed")),
        U::Io(e) => from_io(e, endpoint, timeouts),
        U::Protocol(_) | U::BodyStalled => {
            transient(format!("{endpoint} sent a malformed HTTP response"))
        }
        U::Tls(what) => Error::new(Kind::Remote, format!("TLS error with {endpoint}: {what}")),
        U::Rustls(e) => Error::new(Kind::Remote, format!("TLS error with {endpoint}: {e}")),
        U::BodyExceedsLimit(limit) => Error::new(
            Kind::Remote,
            format!("{endpoint} sent a response larger than {limit} bytes"),
        ),
        // BadUri, Http and the rest could quote the signed URL: name the problem only.
        _ => Error::new(
            Kind::Remote,
            format!("the request to {endpoint} could not be made"),
        ),
    }
}

/// An I/O failure on a connection (also while streaming a body).
pub fn from_io(err: io::Error, endpoint: &str, timeouts: &Timeouts) -> Error {
    use io::ErrorKind as K;
    if let Some(inner) = err.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        return Error::new(inner.kind, inner.message.clone());
    }
    // A ureq error wrapped in an io::Error (a timeout while reading a body) keeps its meaning.
    if err.get_ref().is_some_and(|e| e.is::<ureq::Error>()) {
        return from_transport(ureq::Error::from(err), endpoint, timeouts);
    }
    let message = match err.kind() {
        K::ConnectionRefused | K::AddrNotAvailable | K::NetworkUnreachable | K::HostUnreachable => {
            format!("cannot reach {endpoint}: {}", err.kind())
        }
        K::TimedOut | K::WouldBlock => format!("timed out talking to {endpoint}"),
        kind => format!("the connection to {endpoint} failed: {kind}"),
    };
    Error::new(Kind::Transient, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(create_only: bool) -> Target {
        Target {
            bucket: "bkt".into(),
            url: "s3://bkt/a/db.gz".into(),
            create_only,
        }
    }

    #[test]
    fn parses_codes() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code>\
            <Message>The specified bucket does not exist</Message></Error>";
        assert_eq!(error_code(body).as_deref(), Some("NoSuchBucket"));
        assert_eq!(error_code(b"not xml"), None);
        assert_eq!(
            error_code(b"<Code><script>x</Code>").as_deref(),
            Some("scriptx")
        );
    }

    #[test]
    fn maps_statuses_to_kinds_and_advice() {
        let t = target(false);
        let e = from_status(403, Some("SignatureDoesNotMatch"), None, &t);
        assert_eq!(e.kind, Kind::Auth);
        assert_eq!(
            e.message,
            "access denied to s3://bkt/a/db.gz: check the access key, secret key and region \
             (SignatureDoesNotMatch)"
        );
        let e = from_status(403, Some("RequestTimeTooSkewed"), None, &t);
        assert_eq!(e.kind, Kind::Auth);
        assert!(e.message.contains("set the system time"), "{e}");
        let e = from_status(404, Some("NoSuchBucket"), None, &t);
        assert_eq!(
            (e.kind, e.message.as_str()),
            (Kind::NotFound, "bucket 'bkt' does not exist")
        );
        let e = from_status(404, None, None, &t);
        assert_eq!(e.kind, Kind::NotFound);
        assert_eq!(
            from_status(503, Some("SlowDown"), None, &t).kind,
            Kind::Transient
        );
        assert_eq!(from_status(429, None, None, &t).kind, Kind::Transient);
        for (status, code) in [
            (408, None),
            (400, Some("RequestTimeout")),
            (409, Some("OperationAborted")),
        ] {
            assert_eq!(
                from_status(status, code, None, &t).kind,
                Kind::Transient,
                "{status}"
            );
        }
        // Every other 4xx is final, whatever its code.
        for status in [400, 401, 403, 404, 405, 409, 411, 412, 413, 416, 418, 451] {
            for code in [
                None,
                Some("AccessDenied"),
                Some("InvalidRequest"),
                Some("BadDigest"),
            ] {
                let e = from_status(status, code, None, &t);
                assert_ne!(e.kind, Kind::Transient, "{status} {code:?}");
            }
        }
        assert_eq!(
            from_status(400, Some("InvalidArgument"), None, &t).kind,
            Kind::Remote
        );
        let e = from_status(301, Some("PermanentRedirect"), Some("eu-west-1"), &t);
        assert!(e.message.contains("'eu-west-1'"), "{e}");
        let e = from_status(412, Some("PreconditionFailed"), None, &target(true));
        assert_eq!(e.kind, Kind::Exists);
        assert_eq!(
            e.message,
            "s3://bkt/a/db.gz already exists and create_only is set"
        );
        let e = from_status(409, Some("ConditionalRequestConflict"), None, &target(true));
        assert_eq!(e.kind, Kind::Exists);
    }

    #[test]
    fn transport_errors_are_transient_and_name_the_endpoint() {
        let timeouts = Timeouts {
            connect: Duration::from_millis(1500),
            request: Duration::from_millis(700),
        };
        let e = from_transport(
            ureq::Error::Timeout(ureq::Timeout::PerRead),
            "http://h:1",
            &timeouts,
        );
        assert_eq!(e.kind, Kind::Transient);
        assert_eq!(e.message, "timed out after 700 ms talking to http://h:1");
        let e = from_transport(
            ureq::Error::Io(io::Error::from(io::ErrorKind::ConnectionRefused)),
            "http://h:1",
            &timeouts,
        );
        assert_eq!(e.message, "cannot reach http://h:1: connection refused");
        // A URL inside ureq's error is never repeated.
        let e = from_transport(
            ureq::Error::BadUri("http://h/k?X-Amz-Signature=SECRETSIG".into()),
            "http://h:1",
            &timeouts,
        );
        assert!(!e.message.contains("SECRETSIG"));
    }
}
