//! The sha256 and size of a backup's database, recorded at the end of the compressed file
//! itself, so that the upload can start before the hash is known (S3 metadata must be sent
//! first) and a reader finds it with one read of the last bytes (a ranged GET, a pread).
//!
//! The payload (61 bytes): `sqlite-backup sha256`, a version byte (1), the 32-byte sha256,
//! the database's size (8 bytes, little-endian). It travels in something every decoder skips:
//! - zstd: a skippable frame (magic 0x184D2A5E, size 61), which `zstd -d` and libzstd ignore;
//! - gzip: a last, empty member whose header carries the payload in an FEXTRA subfield 'SB'
//!   (RFC 1952 2.3.1.1); it decompresses to nothing in `gzip -d`, `zcat` or Python's gzip.
//!
//! Raw and encrypted backups carry none (an encrypted one records no plaintext hash).

use crate::codec::Codec;

/// Enough bytes from the end of a backup to hold either trailer.
pub const TAIL_BYTES: u64 = 128;

const MAGIC: &[u8; 20] = b"sqlite-backup sha256";
const VERSION: u8 = 1;
const PAYLOAD: usize = MAGIC.len() + 1 + 32 + 8;
/// Skippable frame magic (0x184D2A50..=0x184D2A5F, little-endian), ours is the 0xE one.
const ZSTD_SKIPPABLE: [u8; 4] = [0x5e, 0x2a, 0x4d, 0x18];
/// FEXTRA subfield id.
const GZIP_SUBFIELD: [u8; 2] = *b"SB";

/// What a trailer records: the database's sha256 and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trailer {
    pub sha256: [u8; 32],
    pub size: u64,
}

impl Trailer {
    pub fn hex(&self) -> String {
        crate::dbfile::hex(&self.sha256)
    }
}

/// Whether backups written with `codec` get a trailer.
pub fn carried_by(codec: Codec) -> bool {
    matches!(codec, Codec::Gzip | Codec::Zstd)
}

fn payload(sha256_hex: &str, size: u64) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(PAYLOAD);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&unhex(sha256_hex)?);
    out.extend_from_slice(&size.to_le_bytes());
    Some(out)
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The bytes to append after the last compressed block; `None` for a codec without trailer
/// (or a hash that is not 64 hex digits, which the pipeline never gives).
pub fn encode(codec: Codec, sha256_hex: &str, size: u64) -> Option<Vec<u8>> {
    let payload = payload(sha256_hex, size)?;
    match codec {
        Codec::Zstd => Some(zstd_frame(&payload)),
        Codec::Gzip => Some(gzip_member(&payload)),
        Codec::None => None,
    }
}

fn zstd_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = ZSTD_SKIPPABLE.to_vec();
    out.extend_from_slice(&(PAYLOAD as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// An empty gzip member: header with FEXTRA, an empty fixed-Huffman block, CRC32 0, ISIZE 0.
fn gzip_member(payload: &[u8]) -> Vec<u8> {
    // ID1 ID2 CM=deflate FLG=FEXTRA MTIME=0 XFL=0 OS=255 (unknown).
    let mut out = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255];
    out.extend_from_slice(&((PAYLOAD + 4) as u16).to_le_bytes());
    out.extend_from_slice(&GZIP_SUBFIELD);
    out.extend_from_slice(&(PAYLOAD as u16).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&[0x03, 0x00]);
    out.extend_from_slice(&[0; 8]);
    out
}

/// The trailer at the very end of `tail` (the last bytes of a backup), if there is one of ours.
/// Anything else (an older backup, another tool's file, ciphertext) is `None`, never an error.
pub fn parse(tail: &[u8]) -> Option<Trailer> {
    let zstd_len = 8 + PAYLOAD;
    let gzip_len = 10 + 2 + 4 + PAYLOAD + 2 + 8;
    let from_payload = |p: &[u8]| -> Option<Trailer> {
        if p.get(..MAGIC.len())? != MAGIC || *p.get(MAGIC.len())? != VERSION {
            return None;
        }
        let sha256 = p.get(MAGIC.len() + 1..MAGIC.len() + 33)?.try_into().ok()?;
        let size = u64::from_le_bytes(p.get(MAGIC.len() + 33..PAYLOAD)?.try_into().ok()?);
        Some(Trailer { sha256, size })
    };
    if let Some(frame) = tail
        .len()
        .checked_sub(zstd_len)
        .and_then(|at| tail.get(at..))
    {
        if frame.get(..8) == Some(&zstd_frame(&[0; PAYLOAD])[..8]) {
            return frame.get(8..).and_then(from_payload);
        }
    }
    let member = tail
        .len()
        .checked_sub(gzip_len)
        .and_then(|at| tail.get(at..))?;
    // Everything but the payload must be exactly what `gzip_member` writes.
    let template = gzip_member(&[0; PAYLOAD]);
    let payload_at = 16;
    let same = member.get(..payload_at) == template.get(..payload_at)
        && member.get(payload_at + PAYLOAD..) == template.get(payload_at + PAYLOAD..);
    if !same {
        return None;
    }
    member
        .get(payload_at..payload_at + PAYLOAD)
        .and_then(from_payload)
}

/// The trailer of a stored backup, read from its last bytes (one ranged read). `None` when it
/// has none or it cannot be read: the caller falls back to what it did before trailers.
/// `size` is the stored size (from the listing or `head`).
pub fn read(store: &dyn crate::store::Store, name: &str, size: u64) -> Option<Trailer> {
    // Only a .gz/.zst backup has one; an encrypted backup ends in ciphertext: nothing to find,
    // so nothing to ask for.
    if crate::crypt::wanted(name) || !carried_by(Codec::for_name(name)) {
        return None;
    }
    let tail = store.read_tail(name, size, TAIL_BYTES).ok()?;
    parse(&tail)
}

/// Trailers read at once when listing (each is one short request on S3).
const FILL_THREADS: usize = 8;

/// Fills in the sha256 of entries the store recorded none for, from their trailers, for names
/// of compressed backups (`.gz`, `.zst`): a listing does not read every foreign file's end.
/// A few reads run at once; if no thread can start, they run one after another here.
pub fn fill(store: &dyn crate::store::Store, entries: &mut [crate::store::Entry]) {
    let wanted: Vec<(usize, String, u64)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.sha256.is_none() && carried_by(Codec::for_name(&e.name)))
        .map(|(i, e)| (i, e.name.clone(), e.size))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let found = std::sync::Mutex::new(Vec::new());
    let work = || loop {
        let at = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let Some((i, name, size)) = wanted.get(at) else {
            return;
        };
        if let Some(t) = read(store, name, *size) {
            if let Ok(mut found) = found.lock() {
                found.push((*i, t.hex()));
            }
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..FILL_THREADS.min(wanted.len()) {
            if crate::threads::spawn_scoped(scope, "backup-trailer", work).is_err() {
                break;
            }
        }
        work();
    });
    for (i, hex) in found.into_inner().unwrap_or_default() {
        if let Some(entry) = entries.get_mut(i) {
            entry.sha256 = Some(hex);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn both_trailers_round_trip_and_decode_to_nothing() {
        for codec in [Codec::Zstd, Codec::Gzip] {
            let data = b"SQLite format 3\0 and some more bytes".repeat(1000);
            let mut stored = Vec::new();
            crate::codec::compress(&mut &data[..], &mut stored, codec, 1, 1).unwrap();
            stored.extend(encode(codec, HEX, 4096).unwrap());
            let tail = stored[stored.len() - TAIL_BYTES as usize..].to_vec();
            let found = parse(&tail).unwrap();
            assert_eq!((found.hex().as_str(), found.size), (HEX, 4096), "{codec:?}");
            // Our own decoder reads the trailer as nothing.
            let (_, mut dec) =
                crate::codec::decoder(Box::new(std::io::Cursor::new(stored))).unwrap();
            let mut back = Vec::new();
            dec.read_to_end(&mut back).unwrap();
            assert_eq!(back, data, "{codec:?}");
            assert!(parse(&tail[..tail.len() - 1]).is_none());
        }
    }

    #[test]
    fn anything_else_is_no_trailer() {
        assert!(encode(Codec::None, HEX, 1).is_none());
        assert!(encode(Codec::Zstd, "xyz", 1).is_none());
        let mut zst = encode(Codec::Zstd, HEX, 1).unwrap();
        assert!(parse(&zst).is_some());
        zst[10] ^= 1; // the magic text
        assert!(parse(&zst).is_none());
        let mut gz = encode(Codec::Gzip, HEX, 1).unwrap();
        assert!(parse(&gz).is_some());
        let last = gz.len() - 1;
        gz[last] = 1; // ISIZE no longer 0
        assert!(parse(&gz).is_none());
        for junk in [&b""[..], b"short", &[0u8; 200]] {
            assert!(parse(junk).is_none());
        }
    }
}
