//! A real S3 server for tests: s3s-fs (checks SigV4 signatures, stores objects as files) on
//! 127.0.0.1 on a free port, with a fresh temp root and random credentials; killed on Drop.
//!
//! ```ignore
//! let server = S3Server::start();
//! server.create_bucket("backups");
//! let opts = server.options();             // S3Options: endpoint + keys
//! let json = server.options_json();        // the same as a JSON object, for SQL-level tests
//! ```

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlite_backup::store::s3::{Environment, S3Options, BACKOFF_ENV};

pub struct S3Server {
    child: Child,
    root: tempfile::TempDir,
    port: u16,
    pub access_key: String,
    pub secret_key: String,
}

/// `$S3S_FS_BIN`, else `<crate>/.tools/bin/s3s-fs`; panics saying how to install it.
pub fn s3s_fs_bin() -> PathBuf {
    let path = match std::env::var_os("S3S_FS_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/s3s-fs"),
    };
    assert!(
        path.is_file(),
        "the S3 test server is missing at {}: run `make tools` to install it (or set S3S_FS_BIN)",
        path.display()
    );
    path
}

fn random_token(len: usize) -> String {
    (0..len).map(|_| fastrand::alphanumeric()).collect()
}

impl S3Server {
    pub fn start() -> S3Server {
        S3Server::start_with_domain(None)
    }

    /// With `--domain`: the server also answers virtual-hosted requests (`Host: bkt.DOMAIN`).
    pub fn start_with_domain(domain: Option<&str>) -> S3Server {
        let bin = s3s_fs_bin();
        let mut last_error = String::new();
        // A free port can be taken between probing and binding: try a few.
        for _ in 0..5 {
            let root = tempfile::tempdir().expect("temp dir");
            let port = free_port();
            let access_key = format!("AKID{}", random_token(12).to_uppercase());
            let secret_key = random_token(32);
            let mut child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", &access_key, "--secret-key", &secret_key])
                .args(domain.map(|d| ["--domain", d]).into_iter().flatten())
                .arg(root.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!("s3s-fs exited with {status}");
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return S3Server {
                        child,
                        root,
                        port,
                        access_key,
                        secret_key,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    last_error = "s3s-fs did not start listening within 20 s".into();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("cannot start s3s-fs: {last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The data directory: buckets are directories in it, objects files.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Buckets are directories under the root.
    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root().join(name)).expect("create bucket dir");
    }

    /// Where s3s-fs keeps an object's bytes.
    pub fn object_path(&self, bucket: &str, key: &str) -> PathBuf {
        self.root().join(bucket).join(key)
    }

    /// s3s-fs has no ListMultipartUploads: an upload in progress is files in the root named
    /// `.upload-<id>.json` (the upload), `.upload_id-<id>.part-<n>` (its parts) and
    /// `.bucket-…upload-<id>.metadata.json`. Complete and Abort remove them all.
    pub fn incomplete_uploads(&self) -> Vec<String> {
        std::fs::read_dir(self.root())
            .expect("read s3s-fs root")
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.contains(".upload"))
            .collect()
    }

    /// Endpoint and credentials, as S3 options.
    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint()),
            access_key_id: Some(self.access_key.clone()),
            secret_access_key: Some(self.secret_key.clone()),
            ..S3Options::default()
        }
    }

    /// The same as a JSON object (merge your own keys in), for SQL-level tests.
    pub fn options_json(&self) -> serde_json::Value {
        serde_json::json!({
            "endpoint": self.endpoint(),
            "access_key_id": self.access_key,
            "secret_access_key": self.secret_key,
        })
    }

    /// An environment with no AWS settings (the host's never leak in) and a short backoff.
    pub fn env(&self) -> Environment {
        Environment::empty().with_var(BACKOFF_ENV, "5")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
