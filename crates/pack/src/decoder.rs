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
        let (frame, offset) = (self.index, self.offset);
        if self.header.is_none() {
            if self.buf.len() < HEADER_LEN {
                return Ok(None);
            }
            let mut raw = [0u8; HEADER_LEN];
            raw.copy_from_slice(&self.buf[..HEADER_LEN]);
            let header = FrameHeader::parse(&raw).map_err(|p| match p {
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
            self.header = Some(header);
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
        if header.compute_digest(&packed) != header.digest {
            return Err(UnpackError::Corrupt {
                frame,
                offset,
                what: "header and packed section".into(),
            });
        }
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

/// Rebuilds and verifies the original stream, frame by frame.
pub struct Unpacker {
    opts: UnpackOptions,
    phase: Phase,
    window: ChunkWindow<Bytes>,
    stream: Decoder,
    receipt: blake3::Hasher,
    /// Rebuilt bytes not yet released, from stream offset `released`.
    held: VecDeque<Bytes>,
    held_bytes: u64,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
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
            receipt: blake3::Hasher::new(),
            held: VecDeque::new(),
            held_bytes: 0,
            decompressor: None,
            stats: UnpackStats::default(),
            receipt_checked: None,
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

    /// Decodes one frame; appends the bytes it makes releasable to `out`.
    /// On error nothing more is released, ever: everything in `out` so far
    /// is covered by a checksum that matched.
    pub fn unpack_frame(
        &mut self,
        frame: Frame,
        store: &mut dyn ChunkStore,
        out: &mut Vec<Bytes>,
    ) -> Result<(), UnpackError> {
        let (index, offset) = (frame.header.index, frame.offset);
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
        frame: Frame,
        store: &mut dyn ChunkStore,
        out: &mut Vec<Bytes>,
    ) -> Result<(), UnpackError> {
        let h = &frame.header;
        let (index, offset) = (h.index, frame.offset);
        let malformed = |reason: String| UnpackError::Malformed {
            frame: index,
            offset,
            reason,
        };
        if h.stream_offset != self.stats.stream_bytes {
            return Err(malformed(format!(
                "it starts at stream byte {}, but {} bytes were rebuilt so far",
                h.stream_offset, self.stats.stream_bytes
            )));
        }
        let plain: Bytes = match h.codec {
            Codec::None => frame.packed.clone(),
            Codec::Zstd => {
                let d = match &mut self.decompressor {
                    Some(d) => d,
                    None => self.decompressor.insert(
                        zstd::bulk::Decompressor::new()
                            .map_err(|e| malformed(format!("zstd: {e}")))?,
                    ),
                };
                let v = d
                    .decompress(&frame.packed, h.unpacked_len as usize)
                    .map_err(|e| malformed(format!("zstd: {e}")))?;
                Bytes::from(v)
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
        let mut raw = Vec::with_capacity(raw_len);
        let mut ops = &plain[..];
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
                        self.keep(ChunkHash::of(bytes), bytes, store, index, offset)?;
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
                        self.keep(hash, bytes, store, index, offset)?;
                    } else {
                        self.resolve(hash, len, store, index, offset, &mut raw)?;
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
        self.receipt.update(&raw);
        self.stats.stream_bytes += raw_len as u64;
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
        self.held.push_back(Bytes::from(raw));
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
        bytes: &[u8],
        store: &mut dyn ChunkStore,
        frame: u64,
        offset: u64,
    ) -> Result<(), UnpackError> {
        // A copy: a slice would pin the whole frame buffer in the window.
        self.window
            .insert(hash, bytes.len(), Bytes::copy_from_slice(bytes));
        if self.opts.store_chunks {
            store
                .put(&hash, bytes)
                .map_err(|source| UnpackError::Cache {
                    frame,
                    offset,
                    source,
                })?;
        }
        Ok(())
    }

    /// A reference: from the window, else from the store.
    fn resolve(
        &mut self,
        hash: ChunkHash,
        len: usize,
        store: &mut dyn ChunkStore,
        frame: u64,
        offset: u64,
        raw: &mut Vec<u8>,
    ) -> Result<(), UnpackError> {
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
            raw.extend_from_slice(bytes);
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
        raw.extend_from_slice(&bytes);
        self.window.insert(hash, len, bytes);
        self.stats.cache_refs += 1;
        Ok(())
    }

    fn end(&mut self, frame: Frame, out: &mut Vec<Bytes>) -> Result<(), UnpackError> {
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
        let found = *self.receipt.finalize().as_bytes();
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
            match self.reader.next_frame()? {
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
