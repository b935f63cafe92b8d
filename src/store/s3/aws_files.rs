//! The shared AWS files, `~/.aws/credentials` and `~/.aws/config`: where they are, reading them,
//! and one profile's settings from their text. `read` is the only I/O; the rest is pure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The two files' contents; `None` for a file that does not exist.
pub struct Files {
    pub credentials: Option<String>,
    pub config: Option<String>,
}

/// Reads the files that `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE` name (looked up
/// with `var`), else `credentials` and `config` in `home`/.aws. Missing files are fine.
pub fn read(var: impl Fn(&str) -> Option<String>, home: Option<&Path>) -> Result<Files> {
    let path = |name: &str, file: &str| {
        var(name)
            .map(PathBuf::from)
            .or_else(|| home.map(|h| h.join(".aws").join(file)))
    };
    Ok(Files {
        credentials: read_file(path("AWS_SHARED_CREDENTIALS_FILE", "credentials"))?,
        config: read_file(path("AWS_CONFIG_FILE", "config"))?,
    })
}

fn read_file(path: Option<PathBuf>) -> Result<Option<String>> {
    let Some(path) = path else { return Ok(None) };
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("cannot read {}", path.display()), e)),
    }
}

/// One profile's sections of the two files.
pub struct Profile {
    credentials: Option<HashMap<String, String>>,
    config: Option<HashMap<String, String>>,
}

impl Profile {
    /// Profile `name` in the files' text (`None`: no such file).
    pub fn from_files(credentials: Option<&str>, config: Option<&str>, name: &str) -> Profile {
        Profile {
            credentials: credentials.and_then(|t| ini_section(t, name, false)),
            config: config.and_then(|t| ini_section(t, name, true)),
        }
    }

    /// Either file has a section for the profile.
    pub fn exists(&self) -> bool {
        self.credentials.is_some() || self.config.is_some()
    }

    /// A key from the credentials file, else from the config file.
    pub fn get(&self, key: &str) -> Option<String> {
        self.credentials
            .as_ref()
            .and_then(|s| s.get(key))
            .or_else(|| self.config.as_ref().and_then(|s| s.get(key)))
            .cloned()
    }

    /// A key of the credentials file only.
    pub fn credentials(&self, key: &str) -> Option<String> {
        self.credentials.as_ref().and_then(|s| s.get(key)).cloned()
    }

    /// A key of the config file only (`region`, `endpoint_url`).
    pub fn config(&self, key: &str) -> Option<String> {
        self.config.as_ref().and_then(|s| s.get(key)).cloned()
    }
}

/// The `key = value` pairs of one profile's section, or `None` when the file has no such section.
/// The config file names sections `[profile name]` (and `[default]`); the credentials file
/// `[name]`. Nested blocks (`s3 =` followed by indented lines) are skipped.
fn ini_section(text: &str, profile: &str, config_style: bool) -> Option<HashMap<String, String>> {
    let mut found: Option<HashMap<String, String>> = None;
    let mut in_section = false;
    let mut in_nested = false;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            let matches = if config_style {
                (profile == "default" && name == "default")
                    || name
                        .strip_prefix("profile")
                        .filter(|rest| rest.starts_with(char::is_whitespace))
                        .is_some_and(|rest| rest.trim() == profile)
            } else {
                name == profile
            };
            in_section = matches;
            in_nested = false;
            if matches && found.is_none() {
                found = Some(HashMap::new());
            }
            continue;
        }
        let indented = raw.starts_with(char::is_whitespace);
        if in_nested && indented {
            continue;
        }
        in_nested = false;
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if value.is_empty() {
            in_nested = true;
            continue;
        }
        if in_section {
            if let Some(section) = found.as_mut() {
                section.insert(key.to_string(), value.to_string());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_by_file_style() {
        let config = "[default]\nregion = a\n[profile p]\ns3 =\n  region = nested\nregion = b\n[p]\nregion = c\n";
        let p = Profile::from_files(None, Some(config), "p");
        assert_eq!(
            p.config("region").as_deref(),
            Some("b"),
            "nested and [p] skipped"
        );
        let d = Profile::from_files(None, Some(config), "default");
        assert_eq!(d.config("region").as_deref(), Some("a"));
        let creds = "[p]\naws_access_key_id = K\n";
        let p = Profile::from_files(
            Some(creds),
            Some("[profile p]\naws_access_key_id = C\n"),
            "p",
        );
        assert_eq!(
            p.get("aws_access_key_id").as_deref(),
            Some("K"),
            "credentials first"
        );
        assert_eq!(p.config("aws_access_key_id").as_deref(), Some("C"));
        assert!(!Profile::from_files(Some(creds), None, "q").exists());
        assert!(Profile::from_files(Some("[q]\n"), None, "q").exists());
    }

    #[test]
    fn files_from_variables_then_home() {
        let dir = std::env::temp_dir().join(format!("r3-aws-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join(".aws")).unwrap();
        std::fs::write(dir.join(".aws/config"), "[default]\n").unwrap();
        std::fs::write(dir.join("creds"), "[x]\n").unwrap();
        let creds = dir.join("creds").to_string_lossy().into_owned();
        let var = |name: &str| (name == "AWS_SHARED_CREDENTIALS_FILE").then(|| creds.clone());
        let files = read(var, Some(&dir)).unwrap();
        assert_eq!(files.credentials.as_deref(), Some("[x]\n"));
        assert_eq!(files.config.as_deref(), Some("[default]\n"));
        let none = read(|_| None, None).unwrap();
        assert!(none.credentials.is_none() && none.config.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
