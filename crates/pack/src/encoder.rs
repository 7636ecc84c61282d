//! The sending side, sans-IO, in three stages so that the costly ones can
//! run on a worker pool while the order-dependent one stays sequential:
//!
//! 1. [`FrameCutter`] (sequential): groups verified records into frames of
//!    about the target size, cut on record boundaries; decides from each
//!    header how its payload may travel; keeps the receipt.
//! 2. [`analyze`] (any thread): BLAKE3 of each addressed payload and the
//!    compressibility probe.
//! 3. [`FramePlanner`] (sequential, frame order): dedup decisions against
//!    the window both sides keep and the receiver's holdings; writes the ops.
//! 4. [`seal`] (any thread): zstd on the packed section, the frame digest.

use crate::error::{CacheError, PackError};
use crate::format::{
    self, Codec, FrameHeader, FrameKind, Receipt, StartParams, MAX_FRAME_TARGET, MIN_ADDRESSED,
    MIN_STORED, OP_CHUNK, OP_LITERAL, OP_REF, OP_STORED,
};
use crate::hash::{BuildPrefixHasher, ChunkHash};
use crate::holdings::ReceiverHoldings;
use crate::probe::looks_compressible;
use crate::window::{ChunkWindow, DEFAULT_WINDOW_BYTES, MAX_WINDOW_BYTES};
use bytes::Bytes;
use fjord_stream::features::split_versioninfo;
use fjord_stream::{Body, FeatureFlags, Record};
use std::collections::HashSet;

/// Default frame target: 1 MiB of original stream per frame.
pub const DEFAULT_FRAME_TARGET: usize = 1 << 20;

/// Default zstd level. Measured on the lab streams and synthetic mixed
/// data (see docs/frame-format.md, "Choosing the level"): level 1 keeps
/// up with `zstd -1 -T0` on two cores; level 3 costs about twice the CPU
/// for a few percent fewer bytes.
pub const DEFAULT_ZSTD_LEVEL: i32 = 1;

/// Settings of the sending side.
#[derive(Clone, Debug)]
pub struct PackOptions {
    /// Original-stream bytes per frame (frames are cut before a record
    /// that would overflow it; a larger record gets a frame of its own).
    pub frame_target: usize,
    /// zstd level for the packed section (1..=19; negative are faster modes).
    pub zstd_level: i32,
    /// Capacity of the dedup window, in bytes (at most 128 MiB).
    pub window_bytes: u64,
    /// Accept a stream without DRR_END (`zfs send -S`).
    pub allow_missing_end: bool,
    /// Compression workers; 0 means one per core.
    pub workers: usize,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            frame_target: DEFAULT_FRAME_TARGET,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            window_bytes: DEFAULT_WINDOW_BYTES,
            allow_missing_end: false,
            workers: 0,
        }
    }
}

impl PackOptions {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<(), PackError> {
        if self.frame_target == 0 || self.frame_target > MAX_FRAME_TARGET {
            return Err(PackError::Options(format!(
                "frame target {} must be between 1 and {MAX_FRAME_TARGET} bytes",
                self.frame_target
            )));
        }
        if self.window_bytes > MAX_WINDOW_BYTES {
            return Err(PackError::Options(format!(
                "dedup window {} bytes exceeds the {MAX_WINDOW_BYTES} bytes a receiver accepts",
                self.window_bytes
            )));
        }
        if !(-7..=19).contains(&self.zstd_level) {
            return Err(PackError::Options(format!(
                "zstd level {} is outside -7..=19",
                self.zstd_level
            )));
        }
        Ok(())
    }
}

/// How a record's payload may travel, decided from its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadClass {
    /// Inline with the headers (OBJECT bonus buffers, BEGIN nvlists,
    /// payloads too short to address).
    Literal,
    /// Content-addressed (WRITE, SPILL, WRITE_EMBEDDED). `try_compress` is
    /// false when the block is already compressed or encrypted.
    Addressed {
        /// Whether the compressibility probe should run at all.
        try_compress: bool,
    },
}

/// A run of whole records, cut but not yet analysed.
pub struct RawFrame {
    /// Data-frame sequence number, from 0.
    pub seq: u64,
    /// The records with their payload class.
    pub records: Vec<(Record, PayloadClass)>,
    /// Original-stream bytes in the frame.
    pub raw_len: usize,
}

/// Stage 1: cuts verified records into frames and keeps the receipt.
pub struct FrameCutter {
    target: usize,
    pending: Vec<(Record, PayloadClass)>,
    pending_len: usize,
    seq: u64,
    /// The current substream is raw (`zfs send -w`): its blocks are encrypted.
    raw_stream: bool,
    /// `None` when the caller computes the receipt itself
    /// ([`FrameCutter::without_receipt`]).
    receipt: Option<Box<blake3::Hasher>>,
    stream_len: u64,
}

impl FrameCutter {
    /// A cutter aiming at `target` bytes per frame.
    pub fn new(target: usize) -> FrameCutter {
        FrameCutter {
            target,
            pending: Vec::new(),
            pending_len: 0,
            seq: 0,
            raw_stream: false,
            receipt: Some(Box::new(blake3::Hasher::new())),
            stream_len: 0,
        }
    }

    /// A cutter that leaves the receipt's BLAKE3 to its caller (the pack
    /// pipeline computes it off the reading thread, from the frames in
    /// order: see [`receipt_update`]); [`FrameCutter::receipt`] then
    /// carries the stream length and a zero digest.
    pub fn without_receipt(target: usize) -> FrameCutter {
        FrameCutter {
            receipt: None,
            ..FrameCutter::new(target)
        }
    }

    /// Adds the next record; returns a frame when one is complete.
    pub fn push(&mut self, record: Record) -> Option<RawFrame> {
        if let Some(receipt) = &mut self.receipt {
            receipt_update(receipt, &record);
        }
        let len = record.wire_len() as usize;
        self.stream_len += len as u64;
        if let Body::Begin(b) = &record.header.body {
            let (_, features) = split_versioninfo(b.versioninfo);
            self.raw_stream = features.contains(FeatureFlags::RAW);
        }
        let class = self.classify(&record);
        let full = !self.pending.is_empty() && self.pending_len + len > self.target;
        let out = if full { self.flush() } else { None };
        self.pending_len += len;
        self.pending.push((record, class));
        out
    }

    /// The frame in progress, if any (at the end of the stream).
    pub fn flush(&mut self) -> Option<RawFrame> {
        if self.pending.is_empty() {
            return None;
        }
        let frame = RawFrame {
            seq: self.seq,
            records: std::mem::take(&mut self.pending),
            raw_len: self.pending_len,
        };
        self.seq += 1;
        self.pending_len = 0;
        Some(frame)
    }

    /// The receipt of every record pushed so far.
    pub fn receipt(&self) -> Receipt {
        Receipt {
            stream_len: self.stream_len,
            digest: self
                .receipt
                .as_ref()
                .map_or([0; 32], |r| *r.finalize().as_bytes()),
        }
    }

    fn classify(&self, record: &Record) -> PayloadClass {
        if record.payload.len() < MIN_ADDRESSED {
            return PayloadClass::Literal;
        }
        let try_compress = match &record.header.body {
            Body::Write(w) => w.compressiontype == 0 && !self.raw_stream,
            Body::Spill(s) => s.compressiontype == 0 && s.compressed_size == 0 && !self.raw_stream,
            // Embedded blocks are stored compressed; they are tiny and stay
            // in the packed section, where zstd gets them anyway.
            Body::WriteEmbedded(_) => false,
            _ => return PayloadClass::Literal,
        };
        PayloadClass::Addressed { try_compress }
    }
}

/// Adds `record`, as it appears in the stream, to a receipt hasher.
pub fn receipt_update(receipt: &mut blake3::Hasher, record: &Record) {
    receipt.update(&record.raw_header);
    receipt.update(&record.payload);
}

/// The analysis of one addressed payload.
#[derive(Clone, Copy, Debug)]
pub struct ChunkInfo {
    /// Its content address.
    pub hash: ChunkHash,
    /// Whether compressing it is worthwhile.
    pub compressible: bool,
}

/// A frame with its payloads analysed.
pub struct AnalyzedFrame {
    /// The frame.
    pub raw: RawFrame,
    /// Per record: the chunk analysis of an addressed payload.
    pub chunks: Vec<Option<ChunkInfo>>,
}

/// Stage 2: hashes and probes every addressed payload of a frame.
pub fn analyze(raw: RawFrame) -> AnalyzedFrame {
    let chunks = raw
        .records
        .iter()
        .map(|(r, class)| match class {
            PayloadClass::Literal => None,
            PayloadClass::Addressed { try_compress } => Some(ChunkInfo {
                hash: ChunkHash::of(&r.payload),
                compressible: *try_compress && looks_compressible(&r.payload),
            }),
        })
        .collect();
    AnalyzedFrame { raw, chunks }
}

/// A frame ready to be sealed: the plain packed section and the stored
/// payloads.
pub struct SealJob {
    /// The header, digest and packed lengths not yet filled in.
    pub header: FrameHeader,
    /// The packed section before compression.
    pub packed: Vec<u8>,
    /// Stored payloads, in op order.
    pub stored: Vec<Bytes>,
    /// Whether zstd should be tried on the packed section.
    pub compress: bool,
}

/// Counters of what the encoder did with the stream's bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackStats {
    /// Records packed.
    pub records: u64,
    /// Original-stream bytes.
    pub stream_bytes: u64,
    /// Frames written (START and END included).
    pub frames: u64,
    /// Record headers and unaddressed payloads (packed section).
    pub literal_bytes: u64,
    /// Addressed payloads sent inline in the packed section (compressible).
    pub chunk_bytes: u64,
    /// Addressed payloads sent in the stored section (not recompressed).
    pub stored_bytes: u64,
    /// References resolved from the dedup window: count.
    pub window_refs: u64,
    /// ... and the payload bytes they stand for.
    pub window_ref_bytes: u64,
    /// References to the receiver's chunk cache: count.
    pub cache_refs: u64,
    /// ... and the payload bytes they stand for.
    pub cache_ref_bytes: u64,
    /// Packed sections before compression.
    pub packed_plain_bytes: u64,
    /// Packed sections as sent.
    pub packed_wire_bytes: u64,
    /// Everything written: headers, packed and stored sections.
    pub wire_bytes: u64,
}

/// Stage 3: dedup decisions, in frame order.
pub struct FramePlanner {
    window: ChunkWindow<()>,
    params: StartParams,
    /// Index of the next frame (START is 0).
    next_index: u64,
    stream_offset: u64,
    /// Counters (wire figures are added by whoever writes the frames).
    pub stats: PackStats,
}

impl FramePlanner {
    /// A planner for `opts` (validated by the caller).
    pub fn new(opts: &PackOptions) -> FramePlanner {
        FramePlanner {
            window: ChunkWindow::new(opts.window_bytes),
            params: StartParams {
                window_bytes: opts.window_bytes,
                frame_target: opts.frame_target as u32,
                flags: if opts.allow_missing_end {
                    format::START_ALLOW_MISSING_END
                } else {
                    0
                },
            },
            next_index: 0,
            stream_offset: 0,
            stats: PackStats::default(),
        }
    }

    /// The START frame (must be the first frame planned).
    pub fn start(&mut self) -> SealJob {
        self.control(FrameKind::Start, self.params.to_bytes().to_vec())
    }

    /// The END frame carrying `receipt` (the last).
    pub fn end(&mut self, receipt: &Receipt) -> SealJob {
        self.control(FrameKind::End, receipt.to_bytes().to_vec())
    }

    fn control(&mut self, kind: FrameKind, packed: Vec<u8>) -> SealJob {
        let header = self.header(kind, 0);
        SealJob {
            header,
            packed,
            stored: Vec::new(),
            compress: false,
        }
    }

    fn header(&mut self, kind: FrameKind, raw_len: u32) -> FrameHeader {
        let h = FrameHeader {
            kind,
            codec: Codec::None,
            index: self.next_index,
            stream_offset: self.stream_offset,
            raw_len,
            packed_len: 0,
            unpacked_len: 0,
            stored_len: 0,
            digest: [0; 32],
        };
        self.next_index += 1;
        self.stream_offset += raw_len as u64;
        h
    }

    /// Plans one DATA frame: asks `holdings` once about every chunk the
    /// window does not cover, then writes the ops.
    pub fn plan(
        &mut self,
        frame: AnalyzedFrame,
        holdings: &mut dyn ReceiverHoldings,
    ) -> Result<SealJob, CacheError> {
        let mut asked = HashSet::with_hasher(BuildPrefixHasher::default());
        let mut question = Vec::new();
        for info in frame.chunks.iter().flatten() {
            if !self.window.contains(&info.hash) && asked.insert(info.hash) {
                question.push(info.hash);
            }
        }
        let mut held = HashSet::with_hasher(BuildPrefixHasher::default());
        if !question.is_empty() {
            let answers = holdings.holds(&question)?;
            if answers.len() != question.len() {
                return Err(CacheError::Holdings(format!(
                    "asked about {} chunks, got {} answers",
                    question.len(),
                    answers.len()
                )));
            }
            held.extend(
                question
                    .iter()
                    .zip(answers)
                    .filter(|(_, yes)| *yes)
                    .map(|(h, _)| *h),
            );
        }

        let header = self.header(FrameKind::Data, frame.raw.raw_len as u32);
        // Room for everything inline (the most the section can take):
        // growing it would copy it and touch fresh pages several times;
        // pages reserved but not written cost nothing.
        let mut ops = Ops::with_capacity(frame.raw.raw_len + 48 * frame.raw.records.len() + 64);
        let mut stored = Vec::new();
        let st = &mut self.stats;
        for ((record, _), info) in frame.raw.records.iter().zip(&frame.chunks) {
            st.records += 1;
            st.stream_bytes += record.wire_len();
            ops.literal(&record.raw_header);
            st.literal_bytes += record.raw_header.len() as u64;
            let payload = &record.payload;
            let len = payload.len();
            let Some(info) = info else {
                ops.literal(payload);
                st.literal_bytes += len as u64;
                continue;
            };
            let hash = info.hash;
            if self.window.touch(&hash).is_some() {
                ops.hashed(OP_REF, len, &hash);
                st.window_refs += 1;
                st.window_ref_bytes += len as u64;
            } else if held.contains(&hash) {
                ops.hashed(OP_REF, len, &hash);
                self.window.insert(hash, len, ());
                st.cache_refs += 1;
                st.cache_ref_bytes += len as u64;
            } else if !info.compressible && len >= MIN_STORED {
                ops.hashed(OP_STORED, len, &hash);
                stored.push(payload.clone());
                self.window.insert(hash, len, ());
                st.stored_bytes += len as u64;
            } else {
                ops.chunk(payload);
                self.window.insert(hash, len, ());
                st.chunk_bytes += len as u64;
            }
        }
        Ok(SealJob {
            header,
            packed: ops.finish(),
            stored,
            // Always worth trying: record headers alone shrink several
            // times over, and incompressible payloads went to `stored`.
            compress: true,
        })
    }
}

/// The packed section being written: runs of literal bytes are merged into
/// one op.
struct Ops {
    buf: Vec<u8>,
    /// Where the open LITERAL's length field is.
    open_literal: Option<usize>,
}

impl Ops {
    fn with_capacity(n: usize) -> Ops {
        Ops {
            buf: Vec::with_capacity(n),
            open_literal: None,
        }
    }

    fn literal(&mut self, bytes: &[u8]) {
        let at = match self.open_literal {
            Some(at) => at,
            None => {
                format::put_op(&mut self.buf, OP_LITERAL, 0);
                let at = self.buf.len() - 4;
                self.open_literal = Some(at);
                at
            }
        };
        self.buf.extend_from_slice(bytes);
        let len = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }

    fn chunk(&mut self, bytes: &[u8]) {
        self.open_literal = None;
        format::put_op(&mut self.buf, OP_CHUNK, bytes.len());
        self.buf.extend_from_slice(bytes);
    }

    fn hashed(&mut self, op: u8, len: usize, hash: &ChunkHash) {
        self.open_literal = None;
        format::put_hashed_op(&mut self.buf, op, len, hash);
    }

    fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Stage 4: compresses the packed section when that makes it smaller,
/// computes the digest and lays the frame out. `compressor` is reused
/// across frames by each worker (a fresh zstd context per frame costs more
/// than compressing small frames).
pub fn seal(
    job: SealJob,
    compressor: &mut zstd::bulk::Compressor<'_>,
) -> Result<SealedFrame, PackError> {
    let SealJob {
        mut header,
        packed,
        stored,
        compress,
    } = job;
    let compressed = if compress && packed.len() >= 64 {
        let c = compressor
            .compress(&packed)
            .map_err(|e| PackError::Compress(e.to_string()))?;
        (c.len() < packed.len()).then_some(c)
    } else {
        None
    };
    header.unpacked_len = packed.len() as u32;
    let wire_packed = match &compressed {
        Some(c) => {
            header.codec = Codec::Zstd;
            c.as_slice()
        }
        None => packed.as_slice(),
    };
    header.packed_len = wire_packed.len() as u32;
    header.stored_len = stored.iter().map(|s| s.len() as u32).sum();
    header.digest = header.compute_digest(wire_packed);
    let mut head = Vec::with_capacity(format::HEADER_LEN + wire_packed.len());
    head.extend_from_slice(&header.to_bytes());
    head.extend_from_slice(wire_packed);
    Ok(SealedFrame {
        header,
        head,
        stored,
    })
}

/// A sealed frame as it goes on the wire: the header and packed section in
/// one buffer, then the stored payloads as they came from the input. They
/// are kept apart so the stored bytes (most of a `-c` or incompressible
/// stream) are not copied again to lay the frame out.
#[derive(Debug)]
pub struct SealedFrame {
    /// The frame's header, lengths and digest filled in.
    pub header: FrameHeader,
    /// Header bytes, then the packed section as on the wire.
    pub head: Vec<u8>,
    /// The stored section, in op order.
    pub stored: Vec<Bytes>,
}

impl SealedFrame {
    /// Length of the frame on the wire.
    pub fn wire_len(&self) -> u64 {
        self.header.wire_len()
    }

    /// Writes the frame to `out` with vectored writes (one system call for
    /// a whole frame where `out` is a file or pipe).
    pub fn write_to<W: std::io::Write>(&self, out: &mut W) -> std::io::Result<()> {
        let mut slices: Vec<std::io::IoSlice<'_>> = std::iter::once(&self.head[..])
            .chain(self.stored.iter().map(|s| &s[..]))
            .map(std::io::IoSlice::new)
            .collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match out.write_vectored(rest) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => std::io::IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The frame's wire bytes in one buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.wire_len() as usize);
        out.extend_from_slice(&self.head);
        for s in &self.stored {
            out.extend_from_slice(s);
        }
        out
    }
}

/// A zstd compressor at `level`, for [`seal`].
pub fn compressor(level: i32) -> Result<zstd::bulk::Compressor<'static>, PackError> {
    zstd::bulk::Compressor::new(level).map_err(|e| PackError::Compress(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes at most `max` bytes per call and splits vectored writes, as a
    /// pipe or socket under pressure does.
    struct Trickle {
        out: Vec<u8>,
        max: usize,
    }

    impl std::io::Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.max);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_sealed_frame_writes_its_wire_bytes_whatever_the_writer_takes_per_call() {
        let job = SealJob {
            header: FrameHeader {
                kind: FrameKind::Data,
                codec: Codec::None,
                index: 3,
                stream_offset: 4096,
                raw_len: 5143,
                packed_len: 0,
                unpacked_len: 0,
                stored_len: 0,
                digest: [0; 32],
            },
            packed: b"packed section".repeat(10),
            stored: vec![Bytes::from(vec![1u8; 5000]), Bytes::from(vec![2u8; 3])],
            compress: true,
        };
        let frame = seal(job, &mut compressor(1).expect("zstd")).expect("seals");
        let whole = frame.to_vec();
        assert_eq!(whole.len() as u64, frame.wire_len());
        assert_eq!(&whole[whole.len() - 3..], &[2, 2, 2]);
        let head: [u8; format::HEADER_LEN] = whole[..format::HEADER_LEN].try_into().expect("72");
        let parsed = FrameHeader::parse(&head).expect("parses");
        assert_eq!((parsed.stored_len, parsed.index), (5003, 3));
        assert_eq!(parsed, frame.header);
        for max in [1, 7, 100, 1 << 20] {
            let mut w = Trickle {
                out: Vec::new(),
                max,
            };
            frame.write_to(&mut w).expect("writes");
            assert!(w.out == whole, "max {max} per call");
        }
    }
}
