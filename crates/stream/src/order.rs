//! Byte order of a send stream.

use serde::Serialize;

/// The byte order a stream was written in, the sending host's.
///
/// OpenZFS writes records in its host's order and the receiver byte-swaps
/// when the BEGIN magic reads backwards; we do the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ByteOrder {
    /// Little-endian (x86, most ARM).
    #[serde(rename = "little-endian")]
    Little,
    /// Big-endian (SPARC, POWER, s390x).
    #[serde(rename = "big-endian")]
    Big,
}

impl ByteOrder {
    /// Reads a `u16` in this order. `b` must hold at least 2 bytes.
    #[inline]
    pub fn u16(self, b: &[u8]) -> u16 {
        let a = [b[0], b[1]];
        match self {
            ByteOrder::Little => u16::from_le_bytes(a),
            ByteOrder::Big => u16::from_be_bytes(a),
        }
    }

    /// Reads a `u32` in this order. `b` must hold at least 4 bytes.
    #[inline]
    pub fn u32(self, b: &[u8]) -> u32 {
        let a = [b[0], b[1], b[2], b[3]];
        match self {
            ByteOrder::Little => u32::from_le_bytes(a),
            ByteOrder::Big => u32::from_be_bytes(a),
        }
    }

    /// Reads a `u64` in this order. `b` must hold at least 8 bytes.
    #[inline]
    pub fn u64(self, b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        match self {
            ByteOrder::Little => u64::from_le_bytes(a),
            ByteOrder::Big => u64::from_be_bytes(a),
        }
    }

    /// Writes a `u16` in this order.
    #[inline]
    pub fn put_u16(self, out: &mut [u8], v: u16) {
        let a = match self {
            ByteOrder::Little => v.to_le_bytes(),
            ByteOrder::Big => v.to_be_bytes(),
        };
        out[..2].copy_from_slice(&a);
    }

    /// Writes a `u32` in this order.
    #[inline]
    pub fn put_u32(self, out: &mut [u8], v: u32) {
        let a = match self {
            ByteOrder::Little => v.to_le_bytes(),
            ByteOrder::Big => v.to_be_bytes(),
        };
        out[..4].copy_from_slice(&a);
    }

    /// Writes a `u64` in this order.
    #[inline]
    pub fn put_u64(self, out: &mut [u8], v: u64) {
        let a = match self {
            ByteOrder::Little => v.to_le_bytes(),
            ByteOrder::Big => v.to_be_bytes(),
        };
        out[..8].copy_from_slice(&a);
    }

    /// Short name for summaries: `little-endian` / `big-endian`.
    pub fn name(self) -> &'static str {
        match self {
            ByteOrder::Little => "little-endian",
            ByteOrder::Big => "big-endian",
        }
    }
}

impl std::fmt::Display for ByteOrder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
