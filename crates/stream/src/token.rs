//! `receive_resume_token` strings: what `zfs recv -s` leaves behind on an
//! interrupted receive, and what `zfs send -t` takes to resume it.
//!
//! A token is `<version>-<checksum>-<length>-<hex>`: version 1, the first
//! word of the Fletcher-4 of the compressed bytes (in hex), the length of the
//! packed nvlist (hex), and the zlib-compressed NATIVE nvlist in hex. This is
//! `get_receive_resume_token_impl` in `module/zfs/dsl_dataset.c` and
//! `zfs_send_resume_token_to_nvlist` in libzfs.

use crate::fletcher::fletcher4;
use crate::nvlist::{self, DataType, Encoding, NvList, Value};
use crate::ByteOrder;
use std::io::{Read, Write};
use thiserror::Error;

/// `ZFS_SEND_RESUME_TOKEN_VERSION`.
pub const TOKEN_VERSION: u32 = 1;
/// The most packed nvlist a token may claim; real ones are a few hundred
/// bytes, so this only stops a hostile length from allocating memory.
pub const MAX_PACKED_LEN: u64 = 1 << 20;

/// The fields of a resume token.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResumeToken {
    /// Snapshot being received (`toname`).
    pub toname: String,
    /// GUID of that snapshot.
    pub toguid: u64,
    /// GUID of the incremental source, if any.
    pub fromguid: Option<u64>,
    /// Object the send resumes at.
    pub object: u64,
    /// Offset within that object.
    pub offset: u64,
    /// Bytes received so far.
    pub bytes: u64,
    /// Options of the original send that the resumed one must repeat.
    pub largeblockok: bool,
    /// `-e` was used.
    pub embedok: bool,
    /// `-c` was used.
    pub compressok: bool,
    /// `-w` was used.
    pub rawok: bool,
    /// Redaction snapshots, when the send was redacted.
    pub redact_snaps: Vec<u64>,
}

/// Why a token could not be read. Messages follow libzfs's.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not `N-X-X-HEX`.
    #[error("resume token is corrupt (invalid format): {0}")]
    Format(&'static str),
    /// A version other than 1.
    #[error("resume token is corrupt (invalid version {0})")]
    Version(u32),
    /// The payload has a non-hex digit or an odd length.
    #[error("resume token is corrupt (payload is not hex-encoded)")]
    Hex,
    /// The checksum does not match the payload.
    #[error("resume token is corrupt (incorrect checksum: token says {expected:x}, payload gives {actual:x})")]
    Checksum {
        /// The checksum written in the token.
        expected: u64,
        /// The checksum of its payload.
        actual: u64,
    },
    /// zlib failed, or the result is not the announced length.
    #[error("resume token is corrupt (decompression failed)")]
    Decompress,
    /// The packed nvlist length is implausibly large.
    #[error("resume token is corrupt (packed length {0} exceeds {MAX_PACKED_LEN})")]
    TooLarge(u64),
    /// The nvlist inside is unreadable.
    #[error("resume token is corrupt (nvlist: {0})")]
    Nvlist(#[from] nvlist::NvError),
    /// A field every token has is missing.
    #[error("resume token lacks the field {0:?}")]
    Missing(&'static str),
}

/// Decodes a token into its nvlist.
pub fn decode_nvlist(token: &str) -> Result<NvList, TokenError> {
    let token = token.trim();
    let mut parts = token.splitn(4, '-');
    let version = parts.next().ok_or(TokenError::Format("empty"))?;
    let checksum = parts
        .next()
        .ok_or(TokenError::Format("no checksum field"))?;
    let packed_len = parts.next().ok_or(TokenError::Format("no length field"))?;
    let hex = parts.next().ok_or(TokenError::Format("no payload"))?;
    let version: u32 = version
        .parse()
        .map_err(|_| TokenError::Format("version is not a number"))?;
    if version != TOKEN_VERSION {
        return Err(TokenError::Version(version));
    }
    let checksum =
        u64::from_str_radix(checksum, 16).map_err(|_| TokenError::Format("checksum is not hex"))?;
    let packed_len =
        u64::from_str_radix(packed_len, 16).map_err(|_| TokenError::Format("length is not hex"))?;
    if packed_len > MAX_PACKED_LEN {
        return Err(TokenError::TooLarge(packed_len));
    }
    let compressed = from_hex(hex)?;
    // The kernel sums in its own byte order: accept either, as a token from
    // a big-endian primary is as valid as one from a little-endian one.
    let le = fletcher4(&compressed, ByteOrder::Little).0[0];
    let be = fletcher4(&compressed, ByteOrder::Big).0[0];
    if checksum != le && checksum != be {
        return Err(TokenError::Checksum {
            expected: checksum,
            actual: le,
        });
    }
    let mut packed = Vec::with_capacity(packed_len as usize);
    flate2::read::ZlibDecoder::new(&compressed[..])
        .take(packed_len + 1)
        .read_to_end(&mut packed)
        .map_err(|_| TokenError::Decompress)?;
    if packed.len() as u64 != packed_len {
        return Err(TokenError::Decompress);
    }
    Ok(nvlist::decode(&packed)?.0)
}

/// Decodes a token into its fields.
pub fn decode(token: &str) -> Result<ResumeToken, TokenError> {
    let nv = decode_nvlist(token)?;
    let numbers = |name| match nv.get(name) {
        Some(Value::Numbers(_, v)) => v.clone(),
        _ => Vec::new(),
    };
    Ok(ResumeToken {
        toname: nv
            .get_str("toname")
            .ok_or(TokenError::Missing("toname"))?
            .to_string(),
        toguid: nv.get_u64("toguid").ok_or(TokenError::Missing("toguid"))?,
        fromguid: nv.get_u64("fromguid"),
        object: nv.get_u64("object").ok_or(TokenError::Missing("object"))?,
        offset: nv.get_u64("offset").ok_or(TokenError::Missing("offset"))?,
        bytes: nv.get_u64("bytes").unwrap_or(0),
        largeblockok: nv.contains("largeblockok"),
        embedok: nv.contains("embedok"),
        compressok: nv.contains("compressok"),
        rawok: nv.contains("rawok"),
        redact_snaps: numbers("redact_snaps"),
    })
}

/// Encodes a token as the kernel does (NATIVE little-endian nvlist, zlib
/// level 6). Used to make tokens for tests and by nothing that talks to ZFS.
pub fn encode(t: &ResumeToken) -> String {
    let u64v = |v| Value::Number(DataType::Uint64, v);
    let mut nv = NvList::new();
    if let Some(f) = t.fromguid {
        nv = nv.with("fromguid", u64v(f));
    }
    nv = nv
        .with("object", u64v(t.object))
        .with("offset", u64v(t.offset))
        .with("bytes", u64v(t.bytes))
        .with("toguid", u64v(t.toguid))
        .with("toname", Value::String(t.toname.clone()));
    for (flag, name) in [
        (t.largeblockok, "largeblockok"),
        (t.embedok, "embedok"),
        (t.compressok, "compressok"),
        (t.rawok, "rawok"),
    ] {
        if flag {
            nv = nv.with(name, Value::Flag);
        }
    }
    if !t.redact_snaps.is_empty() {
        nv = nv.with(
            "redact_snaps",
            Value::Numbers(DataType::Uint64Array, t.redact_snaps.clone()),
        );
    }
    let packed = nvlist::encode(&nv, Encoding::Native(ByteOrder::Little));
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    // Writing to a Vec cannot fail.
    let compressed = z
        .write_all(&packed)
        .and_then(|_| z.finish())
        .unwrap_or_default();
    let sum = fletcher4(&compressed, ByteOrder::Little).0[0];
    let hex: String = compressed.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{:x}-{:x}-{}", TOKEN_VERSION, sum, packed.len(), hex)
}

fn from_hex(hex: &str) -> Result<Vec<u8>, TokenError> {
    if !hex.len().is_multiple_of(2) {
        return Err(TokenError::Hex);
    }
    let digit = |c: u8| (c as char).to_digit(16).ok_or(TokenError::Hex);
    hex.as_bytes()
        .chunks_exact(2)
        .map(|p| Ok((digit(p[0])? * 16 + digit(p[1])?) as u8))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ResumeToken {
        ResumeToken {
            toname: "tank/fs@snap2".into(),
            toguid: 0x5ee3_0a5c_a1b2_c3d4,
            fromguid: Some(0x1111_2222_3333_4444),
            object: 129,
            offset: 1 << 20,
            bytes: 123_456,
            embedok: true,
            compressok: true,
            ..Default::default()
        }
    }

    #[test]
    fn round_trip() {
        let tok = encode(&sample());
        assert!(tok.starts_with("1-"));
        assert_eq!(decode(&tok).unwrap(), sample());
    }

    #[test]
    fn damage_is_named() {
        let tok = encode(&sample());
        assert_eq!(
            decode(&format!("2{}", &tok[1..])),
            Err(TokenError::Version(2))
        );
        let mut flipped = tok.clone().into_bytes();
        let last = tok.rfind('-').unwrap() + 10;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let err = decode(std::str::from_utf8(&flipped).unwrap()).unwrap_err();
        assert!(matches!(err, TokenError::Checksum { .. }), "{err}");
        assert_eq!(decode(&format!("{tok}z")), Err(TokenError::Hex));
        assert!(matches!(decode("1-abc"), Err(TokenError::Format(_))));
    }
}
