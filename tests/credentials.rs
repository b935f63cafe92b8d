//! Where S3 credentials come from beyond static keys: `credential_process` and the container
//! endpoint. For each environment, the extension (in the real sqlite3 CLI, clean environment)
//! must pick the same credentials as botocore (`boto3.Session().get_credentials()`, same
//! environment). What the extension picked is read off the presigned request that reaches a
//! loopback server; nothing ever reaches the real 169.254.169.254 (IMDS is disabled everywhere).

mod common;

use std::process::Command;
use std::time::Duration;

use common::calls::{to_s3_sql, verify};
use common::http::{HttpServer, Reply};
use common::proxy::{Fault, Proxy};
use common::s3server::S3Server;
use common::*;
use serde_json::{json, Value};
use sqlite_backup::store::s3::BACKOFF_ENV;

/// What a configuration yields: the access key and the session token.
type Picked = (String, Option<String>);

struct Host {
    _dir: tempfile::TempDir,
    home: std::path::PathBuf,
    db: std::path::PathBuf,
}

fn host() -> Host {
    let dir = tempdir();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".aws")).unwrap();
    let db = dir.path().join("app.db");
    make_sample_db(&db, Journal::Wal, 3);
    Host {
        home,
        db,
        _dir: dir,
    }
}

/// Every test keeps IMDS off: no request may leave the machine.
fn with_imds_off<'a>(vars: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = vec![("AWS_EC2_METADATA_DISABLED", "true")];
    all.extend_from_slice(vars);
    all
}

impl Host {
    fn write(&self, name: &str, text: &str) -> String {
        let path = self.home.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// backup_to_s3 against a loopback server that refuses everything: the credentials of the
    /// request it received, or the extension's error when it sent none.
    fn extension(&self, vars: &[(&str, &str)]) -> Result<Picked, String> {
        let s3 =
            HttpServer::replying(&[Reply::Body(403, "<Error><Code>AccessDenied</Code></Error>")]);
        let sql = to_s3_sql(
            "s3://bkt/p",
            "x.db",
            &json!({"endpoint": s3.base(), "retries": 0}),
        );
        let out = sqlite3_cli_clean_env(
            &self.db,
            &["-bail"],
            &format!("{sql};\n"),
            &self.home,
            &with_imds_off(vars),
        );
        assert!(!out.ok(), "the server refuses everything: {}", out.stdout);
        let Some(request) = s3.requests().into_iter().next() else {
            return Err(out.stderr);
        };
        let url = url::Url::parse(&format!("http://x{}", request.target)).unwrap();
        let query = |name: &str| {
            url.query_pairs()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.into_owned())
        };
        let credential = query("X-Amz-Credential").expect("a presigned request");
        let key = credential.split('/').next().unwrap_or("").to_string();
        Ok((key, query("X-Amz-Security-Token")))
    }

    /// botocore's pick from the same HOME and variables; `None` when it finds none, `Err` when
    /// it raises.
    fn botocore(&self, vars: &[(&str, &str)]) -> Result<Option<Picked>, String> {
        let script = "import boto3, json\n\
                      c = boto3.Session().get_credentials()\n\
                      print(json.dumps(None if c is None else [c.access_key, c.token]))\n";
        let mut cmd = Command::new(venv().join("bin/python"));
        cmd.arg("-c")
            .arg(script)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home);
        for (name, value) in with_imds_off(vars) {
            cmd.env(name, value);
        }
        let out = cmd.output().unwrap();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let Some(pair) = v.as_array() else {
            return Ok(None);
        };
        Ok(Some((
            pair[0].as_str().unwrap().to_string(),
            pair[1].as_str().map(str::to_string),
        )))
    }

    /// Both pick `expected`.
    #[track_caller]
    fn both_pick(&self, vars: &[(&str, &str)], expected: (&str, Option<&str>)) {
        let expected = (expected.0.to_string(), expected.1.map(str::to_string));
        assert_eq!(self.botocore(vars), Ok(Some(expected.clone())), "botocore");
        assert_eq!(self.extension(vars), Ok(expected), "extension");
    }
}

/// A credential_process that prints `json` (written to a script in HOME).
fn process_script(h: &Host, name: &str, json: &str) -> String {
    let path = h.write(name, &format!("#!/bin/sh\ncat <<'EOF'\n{json}\nEOF\n"));
    let mut perms = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).unwrap();
    path
}

const PROCESS_JSON: &str = r#"{"Version": 1, "AccessKeyId": "AKIDPROCESS", "SecretAccessKey": "PROCSECRETVALUE", "SessionToken": "PROCTOKENVALUE", "Expiration": "2099-01-01T00:00:00Z"}"#;

#[test]
fn credential_process_in_a_profile() {
    let h = host();
    let script = process_script(&h, "creds.sh", PROCESS_JSON);
    h.write(
        ".aws/config",
        &format!(
            "[default]\ncredential_process = {script} --flag 'two words'\n\
             [profile mixed]\naws_access_key_id = AKIDCONFIG\naws_secret_access_key = s\n\
             credential_process = {script}\n\
             [profile filekeys]\ncredential_process = {script}\n"
        ),
    );
    h.write(
        ".aws/credentials",
        "[filekeys]\naws_access_key_id = AKIDFILE\naws_secret_access_key = s\n",
    );
    let ok = ("AKIDPROCESS", Some("PROCTOKENVALUE"));
    h.both_pick(&[], ok);
    // botocore's order: credentials-file keys, then credential_process, then config-file keys.
    h.both_pick(&[("AWS_PROFILE", "mixed")], ok);
    h.both_pick(&[("AWS_PROFILE", "filekeys")], ("AKIDFILE", None));
    // The environment's keys come first.
    h.both_pick(
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
        ],
        ("AKIDENV", None),
    );
}

#[test]
fn credential_process_failures_are_clear_and_never_quote_the_output() {
    let h = host();
    let bad_version = process_script(
        &h,
        "v2.sh",
        r#"{"Version": 2, "AccessKeyId": "AKIDLEAK", "SecretAccessKey": "LEAKEDSECRETVALUE"}"#,
    );
    let garbage = process_script(&h, "garbage.sh", "LEAKEDSECRETVALUE not json");
    h.write(
        ".aws/config",
        &format!(
            "[profile v2]\ncredential_process = {bad_version}\n\
             [profile garbage]\ncredential_process = {garbage}\n\
             [profile fails]\ncredential_process = /bin/false\n\
             [profile missing]\ncredential_process = /nonexistent/tool --x\n"
        ),
    );
    for (profile, expect) in [
        ("v2", "unsupported Version"),
        ("garbage", "did not print a JSON object"),
        ("fails", "failed"),
        ("missing", "cannot run the credential_process"),
    ] {
        assert!(
            h.botocore(&[("AWS_PROFILE", profile)]).is_err(),
            "botocore accepts {profile}"
        );
        let err = h.extension(&[("AWS_PROFILE", profile)]).unwrap_err();
        assert!(err.contains("backup_to_s3"), "{err}");
        assert!(
            err.contains(&format!("credential_process of profile '{profile}'")),
            "{err}"
        );
        assert!(err.contains(expect), "{profile}: {err}");
        assert_no_secret(&err, &["LEAKEDSECRETVALUE", "AKIDLEAK"]);
    }
}

/// The container endpoint's answer for `AKIDCONTAINER`.
const CONTAINER_JSON: &str = r#"{"AccessKeyId": "AKIDCONTAINER", "SecretAccessKey": "CONTSECRETVALUE", "Token": "CONTTOKENVALUE", "Expiration": "2099-01-01T00:00:00Z", "RoleArn": "arn:aws:iam::123456789012:role/x"}"#;

#[test]
fn container_credentials_with_token_or_token_file() {
    let h = host();
    let endpoint = HttpServer::replying(&[Reply::Body(200, CONTAINER_JSON)]);
    let uri = endpoint.url("/v2/credentials/abc");
    let token_file = h.write("eks-token", "TOKENFROMFILE");
    let ok = ("AKIDCONTAINER", Some("CONTTOKENVALUE"));
    h.both_pick(
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "Bearer TOKENFROMENV"),
        ],
        ok,
    );
    h.both_pick(
        &[
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "Bearer TOKENFROMENV"),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", &token_file),
        ],
        ok,
    );
    let requests = endpoint.requests();
    assert_eq!(requests.len(), 4, "{requests:#?}");
    let auth: Vec<_> = requests.iter().map(|r| r.header("authorization")).collect();
    assert_eq!(
        auth,
        [
            Some("Bearer TOKENFROMENV"),
            Some("Bearer TOKENFROMENV"),
            Some("TOKENFROMFILE"),
            Some("TOKENFROMFILE"),
        ],
        "the token file wins, as in botocore"
    );
    assert!(requests.iter().all(|r| r.target == "/v2/credentials/abc"));

    // Profile keys come before the container.
    h.write(
        ".aws/credentials",
        "[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = s\n",
    );
    h.both_pick(
        &[("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri)],
        ("AKIDFILE", None),
    );
}

#[test]
fn container_failures_are_clear_and_never_quote_the_answer() {
    let h = host();
    let refused = HttpServer::replying(&[Reply::Body(403, "LEAKEDSECRETVALUE")]);
    let garbage = HttpServer::replying(&[Reply::Body(200, "LEAKEDSECRETVALUE")]);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}/creds", l.local_addr().unwrap().port())
    };
    for (uri, expect) in [
        (refused.url("/c"), "HTTP 403"),
        (garbage.url("/c"), "did not answer a JSON object"),
        (closed, "cannot connect"),
        ("http://10.1.2.3/creds".to_string(), "must be https"),
    ] {
        let vars = [
            ("AWS_CONTAINER_CREDENTIALS_FULL_URI", uri.as_str()),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                "Bearer LEAKEDTOKENVALUE",
            ),
        ];
        let err = h.extension(&vars).unwrap_err();
        assert!(err.contains(expect), "{uri}: {err}");
        assert_no_secret(&err, &["LEAKEDSECRETVALUE", "LEAKEDTOKENVALUE"]);
    }
    assert_eq!(refused.requests().len(), 1, "a 403 is not retried");
}

#[test]
fn without_any_source_the_error_names_the_new_ones() {
    let h = host();
    assert_eq!(h.botocore(&[]), Ok(None));
    let err = h.extension(&[]).unwrap_err();
    assert!(err.contains("no AWS credentials"), "{err}");
    assert!(err.contains("credential_process"), "{err}");
    assert!(err.contains("AWS_CONTAINER_CREDENTIALS_FULL_URI"), "{err}");
}

const STS_XML: &str =
    "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
<AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>AKIDWEBIDENTITY</AccessKeyId>\
<SecretAccessKey>WEBSECRETVALUE</SecretAccessKey><SessionToken>WEBTOKENVALUE</SessionToken>\
<Expiration>2099-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleWithWebIdentityResult>\
<ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>";

#[test]
fn web_identity_through_sts() {
    let h = host();
    let sts = HttpServer::replying(&[Reply::Body(200, STS_XML)]);
    let token_file = h.write("oidc-token", "OIDCTOKENVALUE");
    let role = "arn:aws:iam::123456789012:role/backup";
    let vars = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.as_str()),
        ("AWS_ROLE_ARN", role),
        ("AWS_ROLE_SESSION_NAME", "nightly"),
        ("AWS_ENDPOINT_URL_STS", &sts.base()),
        ("AWS_REGION", "eu-west-1"),
    ];
    // Before profile keys, after the environment's keys.
    h.write(
        ".aws/credentials",
        "[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = s\n",
    );
    h.both_pick(&vars, ("AKIDWEBIDENTITY", Some("WEBTOKENVALUE")));
    let mut with_env_keys = vars.to_vec();
    with_env_keys.extend([
        ("AWS_ACCESS_KEY_ID", "AKIDENV"),
        ("AWS_SECRET_ACCESS_KEY", "envsecret"),
    ]);
    h.both_pick(&with_env_keys, ("AKIDENV", None));
    // What we sent STS is what botocore sent.
    let requests = sts.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let form = |n: usize| {
        let mut f = requests[n].form();
        f.sort();
        f
    };
    assert_eq!(requests[0].method, "POST");
    assert_eq!(form(0), form(1), "botocore's request, then ours");
    let expect = |k: &str| form(1).into_iter().find(|(n, _)| n == k).map(|(_, v)| v);
    assert_eq!(
        expect("Action").as_deref(),
        Some("AssumeRoleWithWebIdentity")
    );
    assert_eq!(expect("RoleArn").as_deref(), Some(role));
    assert_eq!(expect("RoleSessionName").as_deref(), Some("nightly"));
    assert_eq!(
        expect("WebIdentityToken").as_deref(),
        Some("OIDCTOKENVALUE")
    );
    assert!(requests[1].header("authorization").is_none(), "unsigned");

    // From the profile instead of the variables.
    h.write(
        ".aws/config",
        &format!(
            "[profile irsa]\nweb_identity_token_file = {token_file}\nrole_arn = {role}\n\
             endpoint_url = {}\n",
            sts.base()
        ),
    );
    h.both_pick(
        &[("AWS_PROFILE", "irsa")],
        ("AKIDWEBIDENTITY", Some("WEBTOKENVALUE")),
    );
}

#[test]
fn web_identity_failures_are_clear_and_never_quote_the_token() {
    let h = host();
    let refused = HttpServer::replying(&[Reply::Body(
        400,
        "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>\
         <Message>bad OIDCTOKENVALUE</Message></Error></ErrorResponse>",
    )]);
    let token_file = h.write("oidc-token", "OIDCTOKENVALUE");
    let base = [
        ("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.as_str()),
        ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
    ];
    let endpoint = refused.base();
    let mut vars = base.to_vec();
    vars.push(("AWS_ENDPOINT_URL_STS", &endpoint));
    assert!(h.botocore(&vars).is_err());
    assert_eq!(refused.requests().len(), 1, "botocore does not retry a 4xx");
    let err = h.extension(&vars).unwrap_err();
    assert!(err.contains("InvalidIdentityToken"), "{err}");
    assert!(err.contains("arn:aws:iam::1:role/r"), "{err}");
    assert_no_secret(&err, &["OIDCTOKENVALUE"]);
    assert_eq!(refused.requests().len(), 2, "nor do we");

    let err = h
        .extension(&[("AWS_WEB_IDENTITY_TOKEN_FILE", token_file.as_str())])
        .unwrap_err();
    assert!(err.contains("AWS_ROLE_ARN"), "{err}");
    let missing = h.home.join("nope").display().to_string();
    let err = h
        .extension(&[
            ("AWS_WEB_IDENTITY_TOKEN_FILE", missing.as_str()),
            ("AWS_ROLE_ARN", "arn:aws:iam::1:role/r"),
            ("AWS_ENDPOINT_URL_STS", &endpoint),
        ])
        .unwrap_err();
    assert!(
        err.contains("cannot read the web identity token file"),
        "{err}"
    );
}

const IMDS_JSON: &str = r#"{"Code": "Success", "LastUpdated": "2026-01-01T00:00:00Z", "Type": "AWS-HMAC", "AccessKeyId": "AKIDINSTANCE", "SecretAccessKey": "IMDSSECRETVALUE", "Token": "IMDSTOKENVALUE", "Expiration": "2099-01-01T00:00:00Z"}"#;

#[test]
fn instance_profile_through_imdsv2() {
    let h = host();
    // One connection per request: token, role, credentials; for botocore, then for us.
    let session = [
        Reply::Body(200, "IMDSSESSIONTOKEN"),
        Reply::Body(200, "backup-role\n"),
        Reply::Body(200, IMDS_JSON),
    ];
    let imds = HttpServer::replying(&[session.clone(), session].concat());
    let endpoint = imds.base();
    let vars = [
        ("AWS_EC2_METADATA_DISABLED", "false"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint.as_str()),
    ];
    h.both_pick(&vars, ("AKIDINSTANCE", Some("IMDSTOKENVALUE")));
    let requests = imds.requests();
    let seen: Vec<_> = requests
        .iter()
        .map(|r| (r.method.as_str(), r.target.as_str()))
        .collect();
    let one = [
        ("PUT", "/latest/api/token"),
        ("GET", "/latest/meta-data/iam/security-credentials/"),
        (
            "GET",
            "/latest/meta-data/iam/security-credentials/backup-role",
        ),
    ];
    assert_eq!(seen, [one, one].concat(), "botocore's requests, then ours");
    let ours = &requests[3..];
    assert_eq!(
        ours[0].header("x-aws-ec2-metadata-token-ttl-seconds"),
        Some("21600")
    );
    assert!(ours[1..]
        .iter()
        .all(|r| r.header("x-aws-ec2-metadata-token") == Some("IMDSSESSIONTOKEN")));

    // Disabled (as in every other test): never asked, like botocore.
    let silent = HttpServer::start(500);
    let off = [("AWS_EC2_METADATA_SERVICE_ENDPOINT", silent.base())];
    let off: Vec<(&str, &str)> = off.iter().map(|(k, v)| (*k, v.as_str())).collect();
    assert_eq!(h.botocore(&off), Ok(None));
    let err = h.extension(&off).unwrap_err();
    assert!(err.contains("no AWS credentials"), "{err}");
    assert!(silent.requests().is_empty(), "{:#?}", silent.requests());

    // Nothing listening: no credentials, quickly (1 s connect timeout at most).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let started = std::time::Instant::now();
    let err = h
        .extension(&[
            ("AWS_EC2_METADATA_DISABLED", "false"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &closed),
        ])
        .unwrap_err();
    assert!(err.contains("no AWS credentials"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn instance_profile_without_role_or_with_bad_answers() {
    let h = host();
    // An instance without a role: 404 on the role list, no credentials (botocore: none either).
    let norole = HttpServer::replying(&[Reply::Body(200, "T"), Reply::Status(404)]);
    let endpoint = norole.base();
    let vars = [
        ("AWS_EC2_METADATA_DISABLED", "false"),
        ("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint.as_str()),
    ];
    let err = h.extension(&vars).unwrap_err();
    assert!(err.contains("no AWS credentials"), "{err}");
    // Garbage credentials are an error that never quotes them.
    let garbage = HttpServer::replying(&[
        Reply::Body(200, "T"),
        Reply::Body(200, "role"),
        Reply::Body(200, "LEAKEDSECRETVALUE"),
    ]);
    let endpoint = garbage.base();
    let err = h
        .extension(&[
            ("AWS_EC2_METADATA_DISABLED", "false"),
            ("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint.as_str()),
        ])
        .unwrap_err();
    assert!(err.contains("EC2 instance metadata service"), "{err}");
    assert_no_secret(&err, &["LEAKEDSECRETVALUE"]);
}

/// .cargo/config.toml keeps every test process (and the sqlite3/python children that keep their
/// environment) away from the real metadata service.
#[test]
fn test_processes_never_ask_the_real_metadata_service() {
    assert_eq!(
        std::env::var("AWS_EC2_METADATA_DISABLED").as_deref(),
        Ok("true")
    );
}

// ---- refresh of temporary credentials during a long call ----

/// What the container endpoint answers: `server`'s keys (s3s-fs checks signatures with one key
/// pair) with the session token `token`, expiring `secs` from now. Leaked: the fake endpoint's
/// replies are static strings.
fn expiring(server: &S3Server, token: &str, secs: i64) -> &'static str {
    let expires = chrono::Utc::now() + chrono::TimeDelta::seconds(secs);
    let answer = json!({
        "AccessKeyId": server.access_key,
        "SecretAccessKey": server.secret_key,
        "Token": token,
        "Expiration": expires.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    });
    Box::leak(answer.to_string().into_boxed_str())
}

/// The refresh windows (src/store/s3/credentials.rs), in seconds.
const ADVISORY: i64 = 15 * 60;
const MANDATORY: i64 = 10 * 60;
/// How long after the fetch the first credentials of a test reach a window: the backup's first
/// request goes out within a second here, so this leaves room for a busy machine.
const MARGIN: i64 = 5;
const MARGIN_TIME: Duration = Duration::from_secs(MARGIN as u64);
/// Each part's delay: two of them span MARGIN, so a later request comes after it.
const PART_DELAY: Duration = Duration::from_millis(2500);

/// s3s-fs behind a proxy that delays every part by `delay`, a bucket, and a 12 MB database that
/// goes up in three 5 MiB parts (s3s-fs's minimum), one at a time.
struct SlowS3 {
    server: S3Server,
    proxy: Proxy,
    db: std::path::PathBuf,
}

fn slow_s3(h: &Host, delay: Duration) -> SlowS3 {
    let server = S3Server::start();
    server.create_bucket("bkt");
    let proxy = Proxy::start(std::net::SocketAddr::from(([127, 0, 0, 1], server.port())));
    proxy.fault("PUT", "partNumber", usize::MAX, Fault::Delay(delay));
    let dir = h.db.with_file_name(format!("big-{}", server.port()));
    std::fs::create_dir(&dir).unwrap();
    big_db(&dir);
    SlowS3 {
        server,
        proxy,
        db: dir.join("big.db"),
    }
}

impl SlowS3 {
    /// backup_to_s3 of the database as `s3://bkt/p/db.sqlite` through the proxy, with the
    /// container endpoint `endpoint` as the only source of credentials.
    fn backup(&self, h: &Host, endpoint: &HttpServer) -> Output {
        let sql = to_s3_sql(
            "s3://bkt/p",
            "db.sqlite",
            &json!({"endpoint": self.proxy.endpoint(), "part_size": 5 << 20, "concurrency": 1}),
        );
        let uri = endpoint.url("/creds");
        sqlite3_cli_clean_env(
            &self.db,
            &["-bail"],
            &format!("{sql};\n"),
            &h.home,
            &with_imds_off(&[
                ("AWS_CONTAINER_CREDENTIALS_FULL_URI", &uri),
                (BACKOFF_ENV, "5"),
            ]),
        )
    }

    /// The session token each request to S3 was signed with, in order.
    fn tokens(&self) -> Vec<String> {
        self.proxy
            .requests()
            .iter()
            .map(|r| {
                url::form_urlencoded::parse(r.query.as_bytes())
                    .find(|(k, _)| k == "X-Amz-Security-Token")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The backup is whole and no multipart upload is left open.
    #[track_caller]
    fn assert_object_verifies(&self) {
        let v = verify(
            &open_memory(),
            "s3://bkt/p/db.sqlite",
            &self.server.options_json(),
        );
        assert_eq!(v["ok"], true, "{v}");
        assert!(self.server.incomplete_uploads().is_empty());
    }

    /// No object, no multipart upload left open.
    #[track_caller]
    fn assert_nothing_stored(&self) {
        assert!(!self.server.object_path("bkt", "p/db.sqlite").exists());
        assert!(
            self.server.incomplete_uploads().is_empty(),
            "{:?}",
            self.server.incomplete_uploads()
        );
    }
}

#[test]
fn temporary_credentials_are_refreshed_during_a_long_upload() {
    let h = host();
    let s3 = slow_s3(&h, PART_DELAY);
    // The first credentials enter the refresh window MARGIN after they were fetched; the first
    // request goes out well before, the last one (after three parts of PART_DELAY) after. The
    // next ones last an hour.
    let endpoint = HttpServer::replying(&[
        Reply::Body(200, expiring(&s3.server, "TOKEN-ONE", ADVISORY + MARGIN)),
        Reply::Body(200, expiring(&s3.server, "TOKEN-TWO", 3600)),
    ]);
    let out = s3.backup(&h, &endpoint);
    let r = out.assert_ok().json_lines().remove(0);
    assert_eq!(r["parts"], 3, "{r}");
    let tokens = s3.tokens();
    let switch = tokens.iter().position(|t| t == "TOKEN-TWO");
    assert!(
        switch.is_some_and(|n| n > 0
            && tokens[..n].iter().all(|t| t == "TOKEN-ONE")
            && tokens[n..].iter().all(|t| t == "TOKEN-TWO")),
        "the first requests signed with the first token, the later ones with the refreshed one: \
         {tokens:?}"
    );
    assert_eq!(endpoint.requests().len(), 2, "asked once more, not more");
    let v = verify(
        &open_memory(),
        "s3://bkt/p/db.sqlite",
        &s3.server.options_json(),
    );
    assert_eq!(v["ok"], true, "{v}");
    assert!(s3.server.incomplete_uploads().is_empty());
}

#[test]
fn a_retry_is_signed_again_with_refreshed_credentials() {
    let h = host();
    let s3 = slow_s3(&h, Duration::ZERO);
    // The first attempt at part 1 hangs past MARGIN and breaks; by the retry the first
    // credentials are in the refresh window.
    s3.proxy.clear_faults();
    s3.proxy.fault(
        "PUT",
        "partNumber=1",
        1,
        Fault::Stall(MARGIN_TIME + Duration::from_secs(1)),
    );
    let endpoint = HttpServer::replying(&[
        Reply::Body(200, expiring(&s3.server, "TOKEN-ONE", ADVISORY + MARGIN)),
        Reply::Body(200, expiring(&s3.server, "TOKEN-TWO", 3600)),
    ]);
    s3.backup(&h, &endpoint).assert_ok();
    let part1: Vec<String> = s3
        .proxy
        .requests()
        .iter()
        .zip(s3.tokens())
        .filter(|(r, _)| r.query.contains("partNumber=1&"))
        .map(|(_, t)| t)
        .collect();
    assert_eq!(
        part1,
        ["TOKEN-ONE", "TOKEN-TWO"],
        "the attempt, then the retry"
    );
    s3.assert_object_verifies();
}

#[test]
fn failed_refresh_keeps_valid_credentials_and_fails_clearly_near_expiry() {
    let h = host();
    let s3 = slow_s3(&h, Duration::ZERO);

    // In the advisory window (12 minutes left) a refresh that fails keeps the current ones.
    let advisory = HttpServer::replying(&[
        Reply::Body(200, expiring(&s3.server, "TOKEN-ONE", 12 * 60)),
        Reply::Body(500, "LEAKEDSECRETVALUE"),
    ]);
    let out = s3.backup(&h, &advisory);
    out.assert_ok();
    let tokens = s3.tokens();
    assert!(tokens.iter().all(|t| t == "TOKEN-ONE"), "{tokens:?}");
    assert!(
        advisory.requests().len() > tokens.len(),
        "tried again before each request (3 attempts each on a 500)"
    );
    let v = verify(
        &open_memory(),
        "s3://bkt/p/db.sqlite",
        &s3.server.options_json(),
    );
    assert_eq!(v["ok"], true, "{v}");

    // MARGIN before the last 10 minutes, then refused: the upload stops half-way
    // with an error naming the source, and is aborted (signed with the still valid credentials).
    let s3 = slow_s3(&h, PART_DELAY);
    let mandatory = HttpServer::replying(&[
        Reply::Body(200, expiring(&s3.server, "TOKEN-ONE", MANDATORY + MARGIN)),
        Reply::Body(403, "LEAKEDSECRETVALUE"),
    ]);
    let out = s3.backup(&h, &mandatory);
    assert!(!out.ok(), "{}", out.stdout);
    let err = out.stderr;
    let left = err
        .split_once("temporary credentials from the container credentials endpoint expire in ")
        .and_then(|(_, rest)| rest.split_once(" s and could not be refreshed: "))
        .filter(|(_, why)| {
            why.starts_with("no credentials from the container credentials endpoint (HTTP 403)")
        })
        .and_then(|(secs, _)| secs.parse::<i64>().ok());
    assert!(left.is_some_and(|s| s > 0 && s < MANDATORY), "{err}");
    assert_no_secret(
        &err,
        &["LEAKEDSECRETVALUE", "TOKEN-ONE", &s3.server.secret_key],
    );
    let requests = s3.proxy.requests();
    assert!(
        requests.iter().any(|r| r.query.contains("partNumber")),
        "failed half-way: {requests:#?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.method == "DELETE" && r.query.contains("uploadId")),
        "aborted: {requests:#?}"
    );
    s3.assert_nothing_stored();

    // Expired on arrival and not refreshable: refused before anything is sent.
    let s3 = slow_s3(&h, Duration::ZERO);
    let expired = HttpServer::replying(&[
        Reply::Body(200, expiring(&s3.server, "TOKEN-ONE", -60)),
        Reply::Body(403, "LEAKEDSECRETVALUE"),
    ]);
    let err = s3.backup(&h, &expired).stderr;
    assert!(
        err.contains("temporary credentials from the container credentials endpoint expired and could not be refreshed"),
        "{err}"
    );
    assert!(s3.proxy.requests().is_empty(), "{:#?}", s3.proxy.requests());
    s3.assert_nothing_stored();
}

/// A credential source named by host name is looked up on a thread of ours: ureq's own resolver
/// started it with a panicking `thread::spawn`, and a refresh runs on an upload's worker threads.
/// sqlite3 runs as an unprivileged user allowed one thread (as in tests/limits.rs).
#[test]
fn a_credential_source_by_name_starts_no_panicking_thread() {
    if !is_root() {
        eprintln!("skipped: needs root to run sqlite3 as another user with a thread limit");
        return;
    }
    let dir = tempdir();
    let base = dir.path();
    std::fs::copy(ext(), base.join("sqlite_backup.so")).unwrap();
    let db = base.join("app.db");
    make_sample_db(&db, Journal::Rollback, 3);
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [(base, 0o777), (db.as_path(), 0o666)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let endpoint = HttpServer::replying(&[Reply::Body(200, CONTAINER_JSON)]);
    let sql = to_s3_sql(
        "s3://bkt/p",
        "x.db",
        &json!({"endpoint": "http://127.0.0.1:9", "retries": 0}),
    );
    let out = Command::new("timeout")
        .args([
            "60",
            "prlimit",
            "--nproc=1",
            "--",
            "setpriv",
            "--reuid=54321",
        ])
        .args([
            "--regid=54321",
            "--clear-groups",
            "--",
            "sqlite3",
            "-bail",
            "-cmd",
        ])
        .arg(format!(".load {}", base.join("sqlite_backup").display()))
        .arg(&db)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", base)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            format!("http://localhost:{}/creds", endpoint.port()),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(format!("{sql};\n").as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "an SQL error: {stderr}");
    assert!(
        stderr.contains("backup_to_s3: no credentials from the container credentials endpoint"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panic") && !stderr.contains("internal error"),
        "{stderr}"
    );
    assert!(
        endpoint.requests().is_empty(),
        "no thread, no lookup, no request"
    );
}
