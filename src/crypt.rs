//! Client-side encryption with age (https://age-encryption.org): a name ending in `.age` after
//! the codec (`db.zst.age`) is compressed, then encrypted to the recipients; reading detects
//! age's header and decrypts with the identity file before the codec sees a byte. age streams
//! in 64 KiB chunks, so memory stays as bounded as before. Errors never quote key material.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Recipients when option `recipients` and `recipients_file` are absent: keys separated by
/// commas, spaces or newlines.
pub const RECIPIENTS_ENV: &str = "SQLITE_BACKUP_AGE_RECIPIENTS";
/// The identity file when option `identity_file` is absent.
pub const IDENTITY_ENV: &str = "SQLITE_BACKUP_AGE_IDENTITY_FILE";
/// The first bytes of every binary age file.
const MAGIC: &[u8] = b"age-encryption.org/v1\n";
/// An identity or recipients file larger than this is not one (a typo naming a database).
const MAX_KEY_FILE: u64 = 1 << 20;

/// Whether a backup's name asks for encryption.
pub fn wanted(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".age")
}

/// The name without `.age`, for choosing the codec.
pub fn inner_name(name: &str) -> &str {
    if wanted(name) {
        name.get(..name.len() - 4).unwrap_or(name)
    } else {
        name
    }
}

/// Whether stored bytes start like an age file.
pub fn detect(head: &[u8]) -> bool {
    head.starts_with(MAGIC)
}

/// Whether `input` starts with age's header (reads at most its length).
pub fn is_age_file(input: &mut dyn Read) -> bool {
    let mut head = [0u8; MAGIC.len()];
    input.read_exact(&mut head).is_ok() && head == MAGIC
}

/// The keys a backup is encrypted to.
pub struct Recipients(Vec<Box<dyn age::Recipient + Send + Sync>>);

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Recipients({})", self.0.len())
    }
}

/// One `age1…`, `ssh-ed25519 …` or `ssh-rsa …` key. `what` says where it came from; the key
/// itself is public, but only a short prefix is quoted.
fn parse_recipient(key: &str, what: &str) -> Result<Box<dyn age::Recipient + Send + Sync>> {
    let key = key.trim();
    if let Ok(r) = key.parse::<age::x25519::Recipient>() {
        return Ok(Box::new(r));
    }
    if let Ok(r) = key.parse::<age::ssh::Recipient>() {
        return Ok(Box::new(r));
    }
    let shown: String = key.chars().take(12).collect();
    if key.starts_with("AGE-SECRET-KEY-") || key.contains("PRIVATE KEY") {
        return Err(Error::usage(format!(
            "{what}: that is a secret key, not a recipient: give the public key \
             (age-keygen -y key.txt prints it)"
        )));
    }
    Err(Error::usage(format!(
        "{what}: '{shown}…' is not an age recipient: use an age1… X25519 key or an \
         ssh-ed25519 / ssh-rsa public key"
    )))
}

/// Lines of a recipients file (as `age -R` reads it): blank lines and `#` comments skipped.
fn keys_in(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

fn read_key_file(path: &Path, what: &str) -> Result<String> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("{what}: cannot open {}", path.display()), e))?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| Error::io(format!("{what}: cannot read {}", path.display()), e))?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(Error::usage(format!(
            "{what}: {} is larger than 1 MiB: it is not a key file",
            path.display()
        )));
    }
    Ok(text)
}

/// The recipients of an encrypted backup: option `recipients`, else `recipients_file`, else
/// SQLITE_BACKUP_AGE_RECIPIENTS. None at all is refused before any work.
pub fn recipients(list: Option<&[String]>, file: Option<&str>) -> Result<Recipients> {
    let mut keys = Vec::new();
    if let Some(list) = list {
        for (i, key) in list.iter().enumerate() {
            keys.push(parse_recipient(
                key,
                &format!("option 'recipients' item {}", i + 1),
            )?);
        }
    }
    if let Some(path) = file {
        let text = read_key_file(Path::new(path), "option 'recipients_file'")?;
        for (i, key) in keys_in(&text).enumerate() {
            keys.push(parse_recipient(
                key,
                &format!("option 'recipients_file' ({path}) key {}", i + 1),
            )?);
        }
    }
    if list.is_none() && file.is_none() {
        if let Ok(env) = std::env::var(RECIPIENTS_ENV) {
            let env = env.replace(',', "\n");
            for (i, key) in keys_in(&env).enumerate() {
                keys.push(parse_recipient(
                    key,
                    &format!("{RECIPIENTS_ENV} key {}", i + 1),
                )?);
            }
        }
    }
    if keys.is_empty() {
        return Err(Error::usage(format!(
            "a name ending in .age is encrypted, but there is no recipient: give option \
             'recipients' (age1… or ssh-ed25519 keys), 'recipients_file', or set {RECIPIENTS_ENV}"
        )));
    }
    Ok(Recipients(keys))
}

/// Encrypts everything written to the returned writer into `output`; call `finish`.
pub fn encrypt<W: Write>(
    recipients: &Recipients,
    output: W,
) -> Result<age::stream::StreamWriter<W>> {
    let encryptor = age::Encryptor::with_recipients(
        recipients
            .0
            .iter()
            .map(|r| r.as_ref() as &dyn age::Recipient),
    )
    .map_err(|e| Error::usage(format!("cannot encrypt to these recipients: {e}")))?;
    encryptor
        .wrap_output(output)
        .map_err(|e| Error::io("cannot start encryption", e))
}

/// The identity file that decrypts: the option, else SQLITE_BACKUP_AGE_IDENTITY_FILE.
pub fn identity_file(option: Option<&str>) -> Option<PathBuf> {
    option
        .map(PathBuf::from)
        .or_else(|| std::env::var_os(IDENTITY_ENV).map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty())
}

/// Reads the identities in an age identity file (`AGE-SECRET-KEY-1…` lines, as age-keygen
/// writes) or an unencrypted OpenSSH private key.
fn identities(path: &Path) -> Result<Vec<Box<dyn age::Identity>>> {
    let what = "identity_file";
    let text = read_key_file(path, what)?;
    if text.trim_start().starts_with("-----BEGIN") {
        let identity = age::ssh::Identity::from_buffer(text.as_bytes(), None).map_err(|_| {
            Error::usage(format!(
                "{what}: {} is not an SSH private key age can use (ssh-ed25519 or ssh-rsa, \
                 without a passphrase)",
                path.display()
            ))
        })?;
        return Ok(vec![Box::new(identity)]);
    }
    let parsed = age::IdentityFile::from_buffer(text.as_bytes())
        .and_then(|f| f.into_identities().map_err(io::Error::other))
        .ok()
        .filter(|ids| !ids.is_empty());
    parsed.ok_or_else(|| {
        Error::usage(format!(
            "{what}: {} holds no age identity: give a file of AGE-SECRET-KEY-1… lines \
             (age-keygen writes one) or an SSH private key",
            path.display()
        ))
    })
}

/// Fails when `path` is not an identity file age can use: lets a caller that reads many
/// backups (backup_list) refuse a bad key once, before reading any of them.
pub fn check_identity_file(path: &Path) -> Result<()> {
    identities(path).map(drop)
}

/// The stored bytes, decrypted when they are an age file. An age file needs an identity
/// file; a plain one is passed through untouched.
pub fn open<'a>(
    input: Box<dyn Read + Send + 'a>,
    identity: Option<&Path>,
    url: &str,
) -> Result<(bool, Box<dyn Read + Send + 'a>)> {
    let mut buffered = BufReader::with_capacity(64 * 1024, input);
    let head = buffered
        .fill_buf()
        .map_err(|e| Error::io("cannot read the backup", e))?;
    if !detect(head) {
        return Ok((false, Box::new(buffered)));
    }
    let Some(path) = identity else {
        return Err(Error::usage(format!(
            "{url} is encrypted with age: give option 'identity_file' (or set {IDENTITY_ENV}) \
             naming the key that decrypts it"
        )));
    };
    let ids = identities(path)?;
    let decryptor = age::Decryptor::new_buffered(buffered).map_err(|e| {
        Error::new(
            crate::error::Kind::Corrupt,
            format!("{url} has a damaged age header: {e}"),
        )
    })?;
    let reader = decryptor
        .decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| match e {
            // Auth, like a rejected credential: backup_list tells it from a damaged backup.
            age::DecryptError::NoMatchingKeys => Error::new(
                crate::error::Kind::Auth,
                format!(
                    "{url} was not encrypted to any key in identity_file {}: give the \
                     identity whose recipient the backup was made for",
                    path.display()
                ),
            ),
            other => Error::new(
                crate::error::Kind::Corrupt,
                format!("cannot decrypt {url}: {other}"),
            ),
        })?;
    Ok((
        true,
        Box::new(Authenticated {
            inner: reader,
            url: url.to_string(),
        }),
    ))
}

/// age's stream says only "decryption error" when a chunk fails its tag: say what it means.
struct Authenticated<R> {
    inner: R,
    url: String,
}

impl<R: Read> Read for Authenticated<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{} failed age decryption ({e}): it was changed or truncated after it \
                     was encrypted",
                    self.url
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_recipients() {
        assert!(wanted("db.zst.AGE") && !wanted("db.zst"));
        assert_eq!(inner_name("db.gz.age"), "db.gz");
        assert_eq!(inner_name("db.gz"), "db.gz");
        let key = age::x25519::Identity::generate();
        let public = key.to_public().to_string();
        let list = vec![public.clone()];
        assert_eq!(recipients(Some(&list), None).unwrap().0.len(), 1);
        let bad = vec!["age1nope".to_string()];
        let err = recipients(Some(&bad), None).unwrap_err();
        assert!(err.message.contains("not an age recipient"), "{err:?}");
        // Round trip through our own encryptor and decryptor.
        let mut sealed = Vec::new();
        let r = recipients(Some(&list), None).unwrap();
        let mut w = encrypt(&r, &mut sealed).unwrap();
        w.write_all(b"hello").unwrap();
        w.finish().unwrap();
        assert!(detect(&sealed));
        let dir = tempfile::tempdir().unwrap();
        let id = dir.path().join("k.txt");
        use age::secrecy::ExposeSecret;
        std::fs::write(&id, format!("{}\n", key.to_string().expose_secret())).unwrap();
        let (encrypted, mut plain) = open(Box::new(&sealed[..]), Some(&id), "x").unwrap();
        let mut out = Vec::new();
        plain.read_to_end(&mut out).unwrap();
        assert!(encrypted && out == b"hello");
        // Another key: Auth (rejected, not a damaged backup), and a key file that is none.
        assert!(check_identity_file(&id).is_ok());
        let other = dir.path().join("other.txt");
        let stranger = age::x25519::Identity::generate();
        std::fs::write(&other, stranger.to_string().expose_secret()).unwrap();
        let err = open(Box::new(&sealed[..]), Some(&other), "x")
            .err()
            .unwrap();
        assert_eq!(err.kind, crate::error::Kind::Auth, "{err:?}");
        std::fs::write(&other, "hello\n").unwrap();
        assert!(check_identity_file(&other).is_err());
    }
}
