//! age keys for the encryption tests, made by the `age-keygen` CLI (Debian package `age`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The first bytes of every binary age file.
pub const AGE_MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// An age identity file written by `age-keygen`: (path, public key, secret key).
pub fn age_key(dir: &Path, name: &str) -> (PathBuf, String, String) {
    let path = dir.join(name);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .output()
        .expect("age-keygen (Debian package age) is needed: apt-get install age");
    assert!(out.status.success(), "{out:?}");
    let text = fs::read_to_string(&path).unwrap();
    let public = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .unwrap()
        .to_string();
    let secret = text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap()
        .to_string();
    (path, public, secret)
}
