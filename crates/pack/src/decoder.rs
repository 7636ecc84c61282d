//! The receiving side, sans-IO: [`FrameReader`] cuts pack bytes into frames
//! and checks each one's BLAKE3; [`Unpacker`] rebuilds the original stream
//! from them, verifies it record by record with [`fjord_stream::Decoder`]
//! and releases only bytes that a matched checksum covers.
//! [`PackDecoder`] joins the two.

use crate::error::UnpackError;
use crate::format::{
    Codec, FrameHeader, FrameKind, HeaderProblem, Receipt, StartParams, HEADER_LEN, OP_CHUNK,
    OP_LITERAL, OP_REF, OP_STORED, START_ALLOW_MISSING_END,
};
use crate::hash::ChunkHash;
use crate::holdings::ChunkStore;
use crate::window::{ChunkWindow, MAX_WINDOW_BYTES};
use bytes::{Buf, Bytes, BytesMut};
use fjord_stream::{Decoder, DecoderOptions};
use std::collections::VecDeque;

/// A frame whose header parsed and whose digest matched.
#[derive(Debug)]
pub struct Frame {
    /// The header.
    pub header: FrameHeader,
    /// Where the frame starts in the pack.
    pub offset: u64,
    /// The packed section as on the wire.
    pub packed: Bytes,
    /// The stored section.
    pub stored: Bytes,
}

impl Frame {
    /// Checks the frame's BLAKE3 (header and packed section).
    pub fn check_digest(&self) -> Result<(), UnpackError> {
        if self.header.compute_digest(&self.packed) != self.header.digest {
            return Err(UnpackError::Corrupt {
                frame: self.header.index,
                offset: self.offset,
                what: "header and packed section".into(),
            });
        }
        Ok(())
    }
}

/// Parses the header of frame `frame`, at pack offset `offset`, and checks
/// that it carries that index.
pub fn parse_header(
    raw: &[u8; HEADER_LEN],
    frame: u64,
    offset: u64,
) -> Result<FrameHeader, UnpackError> {
    let header = FrameHeader::parse(raw).map_err(|p| match p {
        HeaderProblem::Magic(found) => UnpackError::BadMagic {
            frame,
            offset,
            found,
        },
        HeaderProblem::Version(version) => UnpackError::UnsupportedVersion {
            frame,
            offset,
            version,
        },
        HeaderProblem::Field(reason) => UnpackError::Malformed {
            frame,
            offset,
            reason,
        },
    })?;
    if header.index != frame {
        return Err(UnpackError::Malformed {
            frame,
            offset,
            reason: format!(
                "it carries index {} (frames lost, repeated or reordered)",
                header.index
            ),
        });
    }
    Ok(header)
}

/// Cuts a byte stream into checked frames.
#[derive(Default)]
pub struct FrameReader {
    buf: BytesMut,
    /// Pack offset of `buf[0]`.
    offset: u64,
    /// Index the next frame must carry.
    index: u64,
    header: Option<FrameHeader>,
}

impl FrameReader {
    /// A reader at the start of a pack.
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Appends input.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Appends input without copying it when nothing is buffered and
    /// `data` is not shared.
    pub fn feed_bytes(&mut self, data: Bytes) {
        if self.buf.is_empty() {
            self.buf = BytesMut::from(data);
        } else {
            self.buf.extend_from_slice(&data);
        }
    }

    /// Pack bytes taken so far.
    pub fn bytes_in(&self) -> u64 {
        self.offset + self.buf.len() as u64
    }

    /// Frames returned so far.
    pub fn frames(&self) -> u64 {
        self.index
    }

    /// The next whole, digest-checked frame, or `None` if more input is needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, UnpackError> {
        let frame = self.next_unchecked()?;
        if let Some(f) = &frame {
            f.check_digest()?;
        }
        Ok(frame)
    }

    /// The next whole frame, its digest not yet checked
    /// ([`Frame::check_digest`]), or `None` if more input is needed.
    pub fn next_unchecked(&mut self) -> Result<Option<Frame>, UnpackError> {
        let (frame, offset) = (self.index, self.offset);
        if self.header.is_none() {
            if self.buf.len() < HEADER_LEN {
                return Ok(None);
            }
            let mut raw = [0u8; HEADER_LEN];
            raw.copy_from_slice(&self.buf[..HEADER_LEN]);
            self.header = Some(parse_header(&raw, frame, offset)?);
        }
        let Some(header) = self.header.as_ref() else {
            return Ok(None);
        };
        let wire_len = header.wire_len() as usize;
        if self.buf.len() < wire_len {
            self.buf.reserve(wire_len - self.buf.len());
            return Ok(None);
        }
        let Some(header) = self.header.take() else {
            return Ok(None);
        };
        self.buf.advance(HEADER_LEN);
        let packed = self.buf.split_to(header.packed_len as usize).freeze();
        let stored = self.buf.split_to(header.stored_len as usize).freeze();
        self.offset += wire_len as u64;
        self.index += 1;
        Ok(Some(Frame {
            header,
            offset,
            packed,
            stored,
        }))
    }

    /// Declares the end of input: an error if it stops inside a frame.
    pub fn finish(&self) -> Result<(), UnpackError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = self
            .header
            .as_ref()
            .map_or(HEADER_LEN as u64, FrameHeader::wire_len);
        Err(UnpackError::Truncated {
            frame: self.index,
            offset: self.offset,
            have: self.buf.len() as u64,
            need,
        })
    }
}

/// Settings of the receiving side.
#[derive(Clone, Debug)]
pub struct UnpackOptions {
    /// Most bytes held waiting for a checksum to cover them before the
    /// stream is refused as unverifiable with bounded memory.
    pub max_held: u64,
    /// Keep every new chunk in the [`ChunkStore`] for later transfers.
    pub store_chunks: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions {
            max_held: 64 << 20,
            store_chunks: true,
        }
    }
}

/// Counters of what the decoder did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Frames decoded.
    pub frames: u64,
    /// Stream bytes rebuilt.
    pub stream_bytes: u64,
    /// Stream bytes released (verified).
    pub released_bytes: u64,
    /// References resolved from the dedup window.
    pub window_refs: u64,
    /// References resolved from the chunk store.
    pub cache_refs: u64,
    /// Records verified.
    pub records: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    ExpectStart,
    Data,
    Done,
}

/// A chunk operation of a DATA frame, to run against the dedup window in
/// op order.
enum WindowOp {
    /// A chunk received (CHUNK or STORED): an exact-size copy, so that the
    /// window never pins a whole frame buffer.
    Keep(ChunkHash, Bytes),
    /// A reference: its bytes go to `raw[at..at + len]`.
    Ref {
        hash: ChunkHash,
        len: usize,
        at: usize,
    },
}

/// The order-independent part of a DATA frame's decoding: the rebuilt
/// bytes, with gaps where references go, and the window operations.
struct DataBody {
    raw: Vec<u8>,
    ops: Vec<WindowOp>,
    pool: BufferPool,
}

/// A frame after the work that needs no decoder state (frame digest,
/// decompression, op parsing, stored-chunk BLAKE3 checks, chunk addresses):
/// [`prepare`] makes it on any thread, [`Unpacker::apply`] finishes it in
/// frame order.
pub struct PreparedFrame {
    header: FrameHeader,
    offset: u64,
    packed: Bytes,
    digest_ok: bool,
    /// DATA frames: the body, or why the frame is malformed or damaged.
    body: Option<Result<DataBody, UnpackError>>,
}

impl PreparedFrame {
    /// The frame's index.
    pub fn index(&self) -> u64 {
        self.header.index
    }

    /// The frame's kind.
    pub fn kind(&self) -> FrameKind {
        self.header.kind
    }
}

/// Frame-sized buffers for reuse: a buffer handed out as [`Bytes`] by
/// [`BufferPool::wrap`] comes back when the last of its `Bytes` is
/// dropped, so that a frame's bytes land in memory already mapped rather
/// than in fresh pages the kernel must fault in and zero.
#[derive(Clone)]
pub struct BufferPool {
    tx: crossbeam_channel::Sender<Vec<u8>>,
    rx: crossbeam_channel::Receiver<Vec<u8>>,
}

/// Idle buffers a pool keeps, and the largest it takes back.
const POOL_BUFFERS: usize = 8;
const POOL_MAX_CAPACITY: usize = 4 << 20;

impl Default for BufferPool {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::bounded(POOL_BUFFERS);
        BufferPool { tx, rx }
    }
}

impl BufferPool {
    /// An empty buffer with room for `len` bytes.
    pub fn get(&self, len: usize) -> Vec<u8> {
        let mut v = self.rx.try_recv().unwrap_or_default();
        v.clear();
        v.reserve(len);
        v
    }

    /// `buf` as `Bytes` that return it to the pool once dropped.
    pub fn wrap(&self, buf: Vec<u8>) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            pool: self.tx.clone(),
        })
    }
}

struct Pooled {
    buf: Vec<u8>,
    pool: crossbeam_channel::Sender<Vec<u8>>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.buf.capacity() <= POOL_MAX_CAPACITY {
            let _ = self.pool.try_send(std::mem::take(&mut self.buf));
        }
    }
}

/// Reusable state of [`prepare`]: a zstd context, a scratch buffer and the
/// pool rebuilt frames are taken from.
#[derive(Default)]
pub struct PrepareScratch {
    zstd: Option<zstd::bulk::Decompressor<'static>>,
    plain: Vec<u8>,
    pool: BufferPool,
}

impl PrepareScratch {
    /// Scratch taking rebuilt frames from `pool` (shared between threads).
    pub fn with_pool(pool: BufferPool) -> PrepareScratch {
        PrepareScratch {
            pool,
            ..PrepareScratch::default()
        }
    }
}

/// Does the order-independent work on `frame` (see [`PreparedFrame`]).
pub fn prepare(frame: Frame, scratch: &mut PrepareScratch) -> PreparedFrame {
    let digest_ok = frame.check_digest().is_ok();
    let body =
        (digest_ok && frame.header.kind == FrameKind::Data).then(|| prepare_data(&frame, scratch));
    // A DATA frame's wire bytes are no longer needed: let them go now.
    let packed = if frame.header.kind == FrameKind::Data {
        Bytes::new()
    } else {
        frame.packed
    };
    PreparedFrame {
        header: frame.header,
        offset: frame.offset,
        packed,
        digest_ok,
        body,
    }
}

fn prepare_data(frame: &Frame, scratch: &mut PrepareScratch) -> Result<DataBody, UnpackError> {
    let h = &frame.header;
    let (index, offset) = (h.index, frame.offset);
    let malformed = |reason: String| UnpackError::Malformed {
        frame: index,
        offset,
        reason,
    };
    let plain: &[u8] = match h.codec {
        Codec::None => &frame.packed,
        Codec::Zstd => {
            let d = match &mut scratch.zstd {
                Some(d) => d,
                None => scratch.zstd.insert(
                    zstd::bulk::Decompressor::new().map_err(|e| malformed(format!("zstd: {e}")))?,
                ),
            };
            scratch.plain.clear();
            scratch.plain.reserve(h.unpacked_len as usize);
            d.decompress_to_buffer(&frame.packed[..], &mut scratch.plain)
                .map_err(|e| malformed(format!("zstd: {e}")))?;
            &scratch.plain
        }
    };
    if plain.len() != h.unpacked_len as usize {
        return Err(malformed(format!(
            "packed section decodes to {} bytes, header says {}",
            plain.len(),
            h.unpacked_len
        )));
    }
    let raw_len = h.raw_len as usize;
    let mut raw = scratch.pool.get(raw_len);
    let mut wops = Vec::new();
    let mut ops = plain;
    let mut stored = &frame.stored[..];
    while !ops.is_empty() {
        let op = ops[0];
        let len = read_u32(&ops[1..]).ok_or_else(|| malformed("op cut short".into()))? as usize;
        ops = &ops[5..];
        if raw.len() + len > raw_len {
            return Err(malformed(format!(
                "ops rebuild more than the {raw_len} bytes the header announces"
            )));
        }
        match op {
            OP_LITERAL | OP_CHUNK => {
                let bytes = ops
                    .get(..len)
                    .ok_or_else(|| malformed("op data runs past the packed section".into()))?;
                ops = &ops[len..];
                raw.extend_from_slice(bytes);
                if op == OP_CHUNK {
                    wops.push(WindowOp::Keep(
                        ChunkHash::of(bytes),
                        Bytes::copy_from_slice(bytes),
                    ));
                }
            }
            OP_STORED | OP_REF => {
                let hash = ops
                    .get(..32)
                    .map(|b| {
                        let mut a = [0u8; 32];
                        a.copy_from_slice(b);
                        ChunkHash(a)
                    })
                    .ok_or_else(|| malformed("op cut short".into()))?;
                ops = &ops[32..];
                if op == OP_STORED {
                    let bytes = stored.get(..len).ok_or_else(|| {
                        malformed("stored chunks run past the stored section".into())
                    })?;
                    stored = &stored[len..];
                    if ChunkHash::of(bytes) != hash {
                        return Err(UnpackError::Corrupt {
                            frame: index,
                            offset,
                            what: format!("stored chunk {hash}"),
                        });
                    }
                    raw.extend_from_slice(bytes);
                    wops.push(WindowOp::Keep(hash, Bytes::copy_from_slice(bytes)));
                } else {
                    wops.push(WindowOp::Ref {
                        hash,
                        len,
                        at: raw.len(),
                    });
                    raw.resize(raw.len() + len, 0);
                }
            }
            other => return Err(malformed(format!("unknown op {other}"))),
        }
    }
    if !stored.is_empty() {
        return Err(malformed(format!(
            "{} bytes of the stored section are not used by any op",
            stored.len()
        )));
    }
    if raw.len() != raw_len {
        return Err(malformed(format!(
            "ops rebuild {} bytes, the header announces {raw_len}",
            raw.len()
        )));
    }
    Ok(DataBody {
        raw,
        ops: wops,
        pool: scratch.pool.clone(),
    })
}

/// Where the receipt (BLAKE3 of the rebuilt stream) is computed: inline,
/// or on a thread of [`crate::pipeline::unpack`].
enum ReceiptHasher {
    Inline(Box<blake3::Hasher>),
    Offloaded {
        bytes: Option<crossbeam_channel::Sender<Bytes>>,
        digest: crossbeam_channel::Receiver<[u8; 32]>,
    },
}

impl ReceiptHasher {
    fn update(&mut self, raw: &Bytes) {
        match self {
            ReceiptHasher::Inline(h) => {
                h.update(raw);
            }
            ReceiptHasher::Offloaded { bytes, .. } => {
                if let Some(tx) = bytes {
                    // A receipt thread that stopped shows at finalize.
                    let _ = tx.send(raw.clone());
                }
            }
        }
    }

    fn finalize(&mut self) -> [u8; 32] {
        match self {
            ReceiptHasher::Inline(h) => *h.finalize().as_bytes(),
            ReceiptHasher::Offloaded { bytes, digest } => {
                bytes.take();
                // A thread that died yields no digest: a mismatch.
                digest.recv().unwrap_or([0; 32])
            }
        }
    }
}

/// Rebuilds and verifies the original stream, frame by frame.
pub struct Unpacker {
    opts: UnpackOptions,
    phase: Phase,
    window: ChunkWindow<Bytes>,
    stream: Decoder,
    receipt: ReceiptHasher,
    /// Rebuilt bytes not yet released, from stream offset `released`.
    held: VecDeque<Bytes>,
    held_bytes: u64,
    scratch: PrepareScratch,
    /// Counters.
    pub stats: UnpackStats,
    receipt_checked: Option<Receipt>,
}

impl Unpacker {
    /// An unpacker waiting for a START frame.
    pub fn new(opts: UnpackOptions) -> Unpacker {
        Unpacker {
            opts,
            phase: Phase::ExpectStart,
            window: ChunkWindow::new(0),
            stream: Decoder::default(),
            receipt: ReceiptHasher::Inline(Box::new(blake3::Hasher::new())),
            held: VecDeque::new(),
            held_bytes: 0,
            scratch: PrepareScratch::default(),
            stats: UnpackStats::default(),
            receipt_checked: None,
        }
    }

    /// Computes the receipt elsewhere: each rebuilt frame goes to `bytes`,
    /// in order; the digest of all of them comes back on `digest` once
    /// `bytes` is closed. Call before the first frame.
    pub(crate) fn offload_receipt(
        &mut self,
        bytes: crossbeam_channel::Sender<Bytes>,
        digest: crossbeam_channel::Receiver<[u8; 32]>,
    ) {
        self.receipt = ReceiptHasher::Offloaded {
            bytes: Some(bytes),
            digest,
        };
    }

    /// Stops sending frames to the receipt thread (it then finishes).
    pub(crate) fn drop_receipt_offload(&mut self) {
        if let ReceiptHasher::Offloaded { bytes, .. } = &mut self.receipt {
            bytes.take();
        }
    }

    /// True once the END frame has been accepted.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The receipt, once the END frame has been checked against it.
    pub fn receipt(&self) -> Option<Receipt> {
        self.receipt_checked
    }

    /// Decodes one frame whose digest was checked; appends the bytes it
    /// makes releasable to `out`. On error nothing more is released, ever:
    /// everything in `out` so far is covered by a checksum that matched.
    pub fn unpack_frame(
        &mut self,
        frame: Frame,
        store: &mut dyn ChunkStore,
        out: &mut Vec<Bytes>,
    ) -> Result<(), UnpackError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let prepared = prepare(frame, &mut scratch);
        self.scratch = scratch;
        self.apply(prepared, store, out)
    }

    /// Finishes a frame [`prepare`]d elsewhere, in frame order (see
    /// [`Unpacker::unpack_frame`]).
    pub fn apply(
        &mut self,
        frame: PreparedFrame,
        store: &mut dyn ChunkStore,
        out: &mut Vec<Bytes>,
    ) -> Result<(), UnpackError> {
        let (index, offset) = (frame.header.index, frame.offset);
        if !frame.digest_ok {
            return Err(UnpackError::Corrupt {
                frame: index,
                offset,
                what: "header and packed section".into(),
            });
        }
        let malformed = |reason: String| UnpackError::Malformed {
            frame: index,
            offset,
            reason,
        };
        self.stats.frames += 1;
        match (self.phase, frame.header.kind) {
            (Phase::ExpectStart, FrameKind::Start) => {
                let p = StartParams::parse(&frame.packed)
                    .ok_or_else(|| malformed("START frame of the wrong length".into()))?;
                if p.window_bytes > MAX_WINDOW_BYTES {
                    return Err(malformed(format!(
                        "dedup window of {} bytes exceeds the {MAX_WINDOW_BYTES} this receiver allows",
                        p.window_bytes
                    )));
                }
                self.window = ChunkWindow::new(p.window_bytes);
                self.stream = Decoder::new(DecoderOptions {
                    verify_checksums: true,
                    allow_missing_end: p.flags & START_ALLOW_MISSING_END != 0,
                });
                self.phase = Phase::Data;
                Ok(())
            }
            (Phase::ExpectStart, _) => {
                Err(malformed("the pack must open with a START frame".into()))
            }
            (Phase::Data, FrameKind::Data) => self.data(frame, store, out),
            (Phase::Data, FrameKind::End) => self.end(frame, out),
            (Phase::Data, FrameKind::Start) => Err(malformed("a second START frame".into())),
            (Phase::Done, _) => Err(malformed("a frame after the END frame".into())),
        }
    }

    fn data(
        &mut self,
        frame: PreparedFrame,
        store: &mut dyn ChunkStore,
        out: &mut Vec<Bytes>,
    ) -> Result<(), UnpackError> {
        let h = &frame.header;
        let (index, offset) = (h.index, frame.offset);
        if h.stream_offset != self.stats.stream_bytes {
            return Err(UnpackError::Malformed {
                frame: index,
                offset,
                reason: format!(
                    "it starts at stream byte {}, but {} bytes were rebuilt so far",
                    h.stream_offset, self.stats.stream_bytes
                ),
            });
        }
        let Some(body) = frame.body else {
            return Err(UnpackError::Malformed {
                frame: index,
                offset,
                reason: "internal: DATA frame not prepared".into(),
            });
        };
        let DataBody { mut raw, ops, pool } = body?;
        for op in ops {
            match op {
                WindowOp::Keep(hash, bytes) => self.keep(hash, bytes, store, index, offset)?,
                WindowOp::Ref { hash, len, at } => {
                    self.resolve(hash, &mut raw[at..at + len], store, index, offset)?
                }
            }
        }
        let raw = pool.wrap(raw);
        self.receipt.update(&raw);
        self.stats.stream_bytes += raw.len() as u64;
        self.stream.feed(&raw);
        loop {
            match self.stream.next_record() {
                Ok(Some(_)) => self.stats.records += 1,
                Ok(None) => break,
                Err(source) => {
                    return Err(UnpackError::Stream {
                        frame: index,
                        offset,
                        source,
                    })
                }
            }
        }
        self.held_bytes += raw.len() as u64;
        self.held.push_back(raw);
        self.release(self.stream.verified_offset(), out);
        if self.held_bytes > self.opts.max_held {
            return Err(UnpackError::Unverifiable {
                frame: index,
                offset,
                limit: self.opts.max_held,
            });
        }
        Ok(())
    }

    /// A chunk just received: into the window, and the store if wanted.
    fn keep(
        &mut self,
        hash: ChunkHash,
        bytes: Bytes,
        store: &mut dyn ChunkStore,
        frame: u64,
        offset: u64,
    ) -> Result<(), UnpackError> {
        if self.opts.store_chunks {
            store
                .put(&hash, &bytes)
                .map_err(|source| UnpackError::Cache {
                    frame,
                    offset,
                    source,
                })?;
        }
        self.window.insert(hash, bytes.len(), bytes);
        Ok(())
    }

    /// A reference: from the window, else from the store, into `dest`.
    fn resolve(
        &mut self,
        hash: ChunkHash,
        dest: &mut [u8],
        store: &mut dyn ChunkStore,
        frame: u64,
        offset: u64,
    ) -> Result<(), UnpackError> {
        let len = dest.len();
        let missing = || UnpackError::MissingChunk {
            frame,
            offset,
            hash,
            len: len as u32,
        };
        if let Some(bytes) = self.window.touch(&hash) {
            if bytes.len() != len {
                return Err(missing());
            }
            dest.copy_from_slice(bytes);
            self.stats.window_refs += 1;
            return Ok(());
        }
        let bytes = store
            .get(&hash, len)
            .map_err(|source| UnpackError::Cache {
                frame,
                offset,
                source,
            })?
            .filter(|b| b.len() == len)
            .ok_or_else(missing)?;
        dest.copy_from_slice(&bytes);
        self.window.insert(hash, len, bytes);
        self.stats.cache_refs += 1;
        Ok(())
    }

    fn end(&mut self, frame: PreparedFrame, out: &mut Vec<Bytes>) -> Result<(), UnpackError> {
        let (index, offset) = (frame.header.index, frame.offset);
        let receipt = Receipt::parse(&frame.packed).ok_or_else(|| UnpackError::Malformed {
            frame: index,
            offset,
            reason: "END frame of the wrong length".into(),
        })?;
        self.stream.finish().map_err(|source| UnpackError::Stream {
            frame: index,
            offset,
            source,
        })?;
        let found = self.receipt.finalize();
        if receipt.stream_len != self.stats.stream_bytes || receipt.digest != found {
            return Err(UnpackError::ReceiptMismatch {
                frame: index,
                offset,
                expected_len: receipt.stream_len,
                expected: receipt.hex(),
                found_len: self.stats.stream_bytes,
                found: blake3::Hash::from_bytes(found).to_hex().to_string(),
            });
        }
        // The stream is complete and every checksum matched (a `-S` stream's
        // last records have none: the sender allowed that in START).
        self.release(u64::MAX, out);
        self.phase = Phase::Done;
        self.receipt_checked = Some(receipt);
        Ok(())
    }

    /// Moves held bytes before stream offset `verified` to `out`.
    fn release(&mut self, verified: u64, out: &mut Vec<Bytes>) {
        let released = &mut self.stats.released_bytes;
        while let Some(front) = self.held.front_mut() {
            let can = verified.saturating_sub(*released).min(front.len() as u64) as usize;
            if can == 0 {
                break;
            }
            let piece = if can == front.len() {
                self.held.pop_front().unwrap_or_default()
            } else {
                front.split_to(can)
            };
            *released += piece.len() as u64;
            self.held_bytes -= piece.len() as u64;
            out.push(piece);
        }
    }
}

fn read_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(..4)?.try_into().ok()?))
}

/// [`FrameReader`] and [`Unpacker`] together: feed pack bytes, collect
/// verified stream bytes.
pub struct PackDecoder {
    reader: FrameReader,
    unpacker: Unpacker,
    failed: bool,
}

impl PackDecoder {
    /// A decoder at the start of a pack.
    pub fn new(opts: UnpackOptions) -> PackDecoder {
        PackDecoder {
            reader: FrameReader::new(),
            unpacker: Unpacker::new(opts),
            failed: false,
        }
    }

    /// Appends pack bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.reader.feed(data);
    }

    /// Appends pack bytes, without copying them when the decoder holds no
    /// partial frame and `data` is not shared.
    pub fn feed_bytes(&mut self, data: Bytes) {
        self.reader.feed_bytes(data);
    }

    /// Decodes every complete frame fed so far, appending verified stream
    /// bytes to `out`. After an error, every later call fails too.
    pub fn decode(
        &mut self,
        store: &mut dyn ChunkStore,
        out: &mut Vec<Bytes>,
    ) -> Result<(), UnpackError> {
        if self.failed {
            return Err(UnpackError::Malformed {
                frame: self.reader.frames(),
                offset: self.reader.bytes_in(),
                reason: "decoding already failed".into(),
            });
        }
        let result = self.decode_inner(store, out);
        self.failed = result.is_err();
        result
    }

    fn decode_inner(
        &mut self,
        store: &mut dyn ChunkStore,
        out: &mut Vec<Bytes>,
    ) -> Result<(), UnpackError> {
        loop {
            if self.unpacker.is_done() {
                let trailing = self.reader.bytes_in() - self.reader.offset;
                if trailing > 0 {
                    return Err(UnpackError::TrailingData {
                        offset: self.reader.offset,
                        len: trailing,
                    });
                }
                return Ok(());
            }
            // `unpack_frame` checks the digest before anything else.
            match self.reader.next_unchecked()? {
                Some(frame) => self.unpacker.unpack_frame(frame, store, out)?,
                None => return Ok(()),
            }
        }
    }

    /// Declares the end of the pack: an error unless it was whole. Returns
    /// the checked receipt.
    pub fn finish(&self) -> Result<Receipt, UnpackError> {
        self.reader.finish()?;
        self.unpacker.receipt().ok_or(UnpackError::MissingEnd {
            frames: self.reader.frames(),
            offset: self.reader.bytes_in(),
        })
    }

    /// What the decoder did so far.
    pub fn stats(&self) -> &UnpackStats {
        &self.unpacker.stats
    }
}
