//! The frame format, version 1. The normative description is
//! `docs/frame-format.md`; this module is its code.
//!
//! A pack is a sequence of frames: one START, any number of DATA frames,
//! one END. Every frame is a 72-byte header, a *packed* section (the ops,
//! possibly zstd-compressed) and a *stored* section (payload bytes sent as
//! they are). All integers are little-endian.
//!
//! ```text
//! offset size field
//!      0    4 magic "FJFR"
//!      4    1 format version (1)
//!      5    1 kind: 0 START, 1 DATA, 2 END
//!      6    1 codec of the packed section: 0 none, 1 zstd
//!      7    1 reserved, 0
//!      8    8 frame index, from 0
//!     16    8 stream offset: where this frame's bytes start in the original stream
//!     24    4 raw length: original-stream bytes this frame rebuilds
//!     28    4 packed length (on the wire)
//!     32    4 unpacked length (packed section after decompression)
//!     36    4 stored length
//!     40   32 BLAKE3 of header bytes 0..40 followed by the packed section
//! ```

use crate::hash::ChunkHash;

/// First bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"FJFR";
/// The format version this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Length of a frame header.
pub const HEADER_LEN: usize = 72;
/// The header bytes covered by the frame digest (all but the digest).
pub const DIGEST_COVERS: usize = 40;
/// Largest raw length, packed, unpacked or stored section a decoder
/// accepts: bounds its memory whatever the input says.
pub const MAX_SECTION: u32 = 48 << 20;
/// Largest frame target an encoder accepts (records are at most 16 MiB, so
/// a frame never needs more than target + 16 MiB).
pub const MAX_FRAME_TARGET: usize = 16 << 20;
/// Payloads shorter than this are not content-addressed: a reference
/// (37 bytes) would not be smaller.
pub const MIN_ADDRESSED: usize = 64;
/// Incompressible addressed payloads at least this long go to the stored
/// section (with their hash); shorter ones stay in the packed section.
pub const MIN_STORED: usize = 4096;

/// Op: copy `len` bytes from the packed section (headers, unaddressed payloads).
pub const OP_LITERAL: u8 = 1;
/// Op: an addressed payload inline in the packed section.
pub const OP_CHUNK: u8 = 2;
/// Op: an addressed payload taken from the stored section, with its hash.
pub const OP_STORED: u8 = 3;
/// Op: an addressed payload the decoder already holds, by hash.
pub const OP_REF: u8 = 4;

/// START flag: the stream may end without DRR_END (`zfs send -S`).
pub const START_ALLOW_MISSING_END: u32 = 1;

/// Length of a START frame's packed section.
pub const START_LEN: usize = 16;
/// Length of an END frame's packed section.
pub const END_LEN: usize = 40;

/// The three kinds of frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Opens a pack: parameters the decoder needs.
    Start,
    /// Rebuilds a run of whole records.
    Data,
    /// Closes a pack: stream length and receipt.
    End,
}

impl FrameKind {
    /// The kind's byte.
    pub fn code(self) -> u8 {
        match self {
            FrameKind::Start => 0,
            FrameKind::Data => 1,
            FrameKind::End => 2,
        }
    }

    /// The kind for a byte, if it is one.
    pub fn from_code(code: u8) -> Option<FrameKind> {
        match code {
            0 => Some(FrameKind::Start),
            1 => Some(FrameKind::Data),
            2 => Some(FrameKind::End),
            _ => None,
        }
    }
}

/// How the packed section is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// As is.
    None,
    /// One zstd frame.
    Zstd,
}

impl Codec {
    /// The codec's byte.
    pub fn code(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Zstd => 1,
        }
    }

    /// The codec for a byte, if it is one.
    pub fn from_code(code: u8) -> Option<Codec> {
        match code {
            0 => Some(Codec::None),
            1 => Some(Codec::Zstd),
            _ => None,
        }
    }
}

/// A parsed frame header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// START, DATA or END.
    pub kind: FrameKind,
    /// Encoding of the packed section.
    pub codec: Codec,
    /// Position in the pack, from 0.
    pub index: u64,
    /// Offset in the original stream of the first byte this frame rebuilds.
    pub stream_offset: u64,
    /// Original-stream bytes this frame rebuilds.
    pub raw_len: u32,
    /// Packed section length on the wire.
    pub packed_len: u32,
    /// Packed section length once decoded.
    pub unpacked_len: u32,
    /// Stored section length.
    pub stored_len: u32,
    /// BLAKE3 over header bytes 0..40 and the packed section.
    pub digest: [u8; 32],
}

/// Why a header cannot be a frame header (the caller adds where it was).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderProblem {
    /// The magic is wrong: not a frame, or not at a frame boundary.
    Magic([u8; 4]),
    /// A format version this build does not read.
    Version(u8),
    /// A field holds a value the format does not define or allow.
    Field(String),
}

impl FrameHeader {
    /// The header's bytes, digest included as set.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&FRAME_MAGIC);
        b[4] = FORMAT_VERSION;
        b[5] = self.kind.code();
        b[6] = self.codec.code();
        b[8..16].copy_from_slice(&self.index.to_le_bytes());
        b[16..24].copy_from_slice(&self.stream_offset.to_le_bytes());
        b[24..28].copy_from_slice(&self.raw_len.to_le_bytes());
        b[28..32].copy_from_slice(&self.packed_len.to_le_bytes());
        b[32..36].copy_from_slice(&self.unpacked_len.to_le_bytes());
        b[36..40].copy_from_slice(&self.stored_len.to_le_bytes());
        b[40..72].copy_from_slice(&self.digest);
        b
    }

    /// Parses and range-checks a header (the digest is checked later,
    /// against the packed section).
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<FrameHeader, HeaderProblem> {
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != FRAME_MAGIC {
            return Err(HeaderProblem::Magic(magic));
        }
        if b[4] != FORMAT_VERSION {
            return Err(HeaderProblem::Version(b[4]));
        }
        let kind = FrameKind::from_code(b[5])
            .ok_or_else(|| HeaderProblem::Field(format!("unknown frame kind {}", b[5])))?;
        let codec = Codec::from_code(b[6])
            .ok_or_else(|| HeaderProblem::Field(format!("unknown codec {}", b[6])))?;
        if b[7] != 0 {
            return Err(HeaderProblem::Field(format!(
                "reserved byte 7 is {}, not 0",
                b[7]
            )));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[40..72]);
        let h = FrameHeader {
            kind,
            codec,
            index: u64_at(8),
            stream_offset: u64_at(16),
            raw_len: u32_at(24),
            packed_len: u32_at(28),
            unpacked_len: u32_at(32),
            stored_len: u32_at(36),
            digest,
        };
        for (name, v) in [
            ("raw length", h.raw_len),
            ("packed length", h.packed_len),
            ("unpacked length", h.unpacked_len),
            ("stored length", h.stored_len),
        ] {
            if v > MAX_SECTION {
                return Err(HeaderProblem::Field(format!(
                    "{name} {v} exceeds the limit of {MAX_SECTION}"
                )));
            }
        }
        if codec == Codec::None && h.unpacked_len != h.packed_len {
            return Err(HeaderProblem::Field(format!(
                "uncompressed packed section of {} bytes claims {} unpacked",
                h.packed_len, h.unpacked_len
            )));
        }
        if kind != FrameKind::Data && (h.raw_len != 0 || h.stored_len != 0) {
            return Err(HeaderProblem::Field(
                "a START or END frame carries raw or stored bytes".into(),
            ));
        }
        Ok(h)
    }

    /// Header plus both sections: the frame's length on the wire.
    pub fn wire_len(&self) -> u64 {
        HEADER_LEN as u64 + self.packed_len as u64 + self.stored_len as u64
    }

    /// The digest this header and `packed` should carry.
    pub fn compute_digest(&self, packed: &[u8]) -> [u8; 32] {
        let bytes = self.to_bytes();
        let mut h = blake3::Hasher::new();
        h.update(&bytes[..DIGEST_COVERS]);
        h.update(packed);
        *h.finalize().as_bytes()
    }
}

/// The parameters a START frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartParams {
    /// Capacity of the dedup window both sides keep, in bytes.
    pub window_bytes: u64,
    /// The encoder's frame target (informational).
    pub frame_target: u32,
    /// `START_*` flags.
    pub flags: u32,
}

impl StartParams {
    /// The START packed section.
    pub fn to_bytes(&self) -> [u8; START_LEN] {
        let mut b = [0u8; START_LEN];
        b[0..8].copy_from_slice(&self.window_bytes.to_le_bytes());
        b[8..12].copy_from_slice(&self.frame_target.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    /// Parses a START packed section.
    pub fn parse(b: &[u8]) -> Option<StartParams> {
        if b.len() != START_LEN {
            return None;
        }
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[0..8]);
        Some(StartParams {
            window_bytes: u64::from_le_bytes(w),
            frame_target: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            flags: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        })
    }
}

/// What an END frame carries: the receipt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Receipt {
    /// Length of the original stream.
    pub stream_len: u64,
    /// BLAKE3 of the whole original stream (as `b3sum` prints it).
    pub digest: [u8; 32],
}

impl Receipt {
    /// The END packed section.
    pub fn to_bytes(&self) -> [u8; END_LEN] {
        let mut b = [0u8; END_LEN];
        b[0..8].copy_from_slice(&self.stream_len.to_le_bytes());
        b[8..40].copy_from_slice(&self.digest);
        b
    }

    /// Parses an END packed section.
    pub fn parse(b: &[u8]) -> Option<Receipt> {
        if b.len() != END_LEN {
            return None;
        }
        let mut l = [0u8; 8];
        l.copy_from_slice(&b[0..8]);
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&b[8..40]);
        Some(Receipt {
            stream_len: u64::from_le_bytes(l),
            digest,
        })
    }

    /// The digest in hex.
    pub fn hex(&self) -> String {
        blake3::Hash::from_bytes(self.digest).to_hex().to_string()
    }
}

/// Appends an op with a length and no hash (LITERAL, CHUNK); its bytes
/// follow.
pub fn put_op(out: &mut Vec<u8>, op: u8, len: usize) {
    out.push(op);
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

/// Appends an op with a length and a hash (STORED, REF).
pub fn put_hashed_op(out: &mut Vec<u8>, op: u8, len: usize, hash: &ChunkHash) {
    put_op(out, op, len);
    out.extend_from_slice(&hash.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = FrameHeader {
            kind: FrameKind::Data,
            codec: Codec::Zstd,
            index: 7,
            stream_offset: 1 << 40,
            raw_len: 1 << 20,
            packed_len: 1234,
            unpacked_len: 5678,
            stored_len: 99,
            digest: [5; 32],
        };
        assert_eq!(FrameHeader::parse(&h.to_bytes()), Ok(h));
    }
}
