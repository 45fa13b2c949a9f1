//! The byte format of a partition snapshot: a stream of entries with absolute expiry.
//!
//! ```text
//! "DCS1"                                   magic and version
//! repeated: u32 key_len | key | u8 kind | u64 expires_at (0 = never) | u32 len | data
//! u32 0xFFFF_FFFF                          end marker
//! u64 count                                entries written, checked on read
//! ```
//! All integers little-endian. The end marker and count make a truncated stream an
//! error instead of a silently smaller partition.

use std::io::{self, Read, Write};

use bytes::Bytes;

use super::{Entry, ValueKind};

const MAGIC: &[u8; 4] = b"DCS1";
const END: u32 = u32::MAX;
/// Keys are limited far below this by the API; anything larger is corruption.
const MAX_KEY_BYTES: u32 = 1 << 20;
/// Values are limited far below this by the API; anything larger is corruption.
const MAX_VALUE_BYTES: u32 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot unreadable: {0}")]
    Io(#[from] io::Error),
    #[error("not a dcache snapshot (bad magic)")]
    BadMagic,
    #[error("corrupt snapshot: {0}")]
    Corrupt(&'static str),
    #[error("snapshot of partition {partition} holds key {key:?} of another partition")]
    WrongPartition { key: String, partition: u32 },
}

pub fn write_snapshot(
    mut out: impl Write,
    entries: impl Iterator<Item = (Bytes, Entry)>,
) -> io::Result<u64> {
    out.write_all(MAGIC)?;
    let mut count = 0u64;
    for (key, entry) in entries {
        out.write_all(&(key.len() as u32).to_le_bytes())?;
        out.write_all(&key)?;
        out.write_all(&[entry.kind as u8])?;
        out.write_all(&entry.expires_at.unwrap_or(0).to_le_bytes())?;
        out.write_all(&(entry.data.len() as u32).to_le_bytes())?;
        out.write_all(&entry.data)?;
        count += 1;
    }
    out.write_all(&END.to_le_bytes())?;
    out.write_all(&count.to_le_bytes())?;
    out.flush()?;
    Ok(count)
}

pub fn read_snapshot(mut input: impl Read) -> Result<Vec<(Bytes, Entry)>, SnapshotError> {
    let mut magic = [0u8; 4];
    input.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let mut entries = Vec::new();
    loop {
        let key_len = read_u32(&mut input)?;
        if key_len == END {
            break;
        }
        if key_len > MAX_KEY_BYTES {
            return Err(SnapshotError::Corrupt("key length out of range"));
        }
        let key = read_bytes(&mut input, key_len)?;
        let mut kind = [0u8; 1];
        input.read_exact(&mut kind)?;
        let kind = ValueKind::from_byte(kind[0]).ok_or(SnapshotError::Corrupt("unknown kind"))?;
        let expires_at = match read_u64(&mut input)? {
            0 => None,
            at => Some(at),
        };
        let len = read_u32(&mut input)?;
        if len > MAX_VALUE_BYTES {
            return Err(SnapshotError::Corrupt("value length out of range"));
        }
        let data = read_bytes(&mut input, len)?;
        entries.push((
            key,
            Entry {
                kind,
                data,
                expires_at,
            },
        ));
    }
    if read_u64(&mut input)? != entries.len() as u64 {
        return Err(SnapshotError::Corrupt("entry count does not match"));
    }
    Ok(entries)
}

fn read_u32(input: &mut impl Read) -> io::Result<u32> {
    let mut buf = [0u8; 4];
    input.read_exact(&mut buf)?;
    Ok(u32::from_le_bytes(buf))
}

fn read_u64(input: &mut impl Read) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    input.read_exact(&mut buf)?;
    Ok(u64::from_le_bytes(buf))
}

/// Reads exactly `len` bytes, growing the buffer as data arrives so that a corrupt
/// length cannot make us allocate a gigabyte up front.
fn read_bytes(input: &mut impl Read, len: u32) -> Result<Bytes, SnapshotError> {
    let mut buf = Vec::with_capacity((len as usize).min(64 * 1024));
    input.take(u64::from(len)).read_to_end(&mut buf)?;
    if buf.len() != len as usize {
        return Err(SnapshotError::Corrupt("truncated entry"));
    }
    Ok(Bytes::from(buf))
}
