//! The incremental, sans-IO send-stream decoder.
//!
//! Feed it bytes in pieces of any size; it yields whole records, each one
//! checked (structure, limits, trailer checksum, END checksum) before it is
//! handed out, so that a consumer never sees a record that `zfs recv` would
//! refuse. It holds at most one record plus whatever input it was given and
//! has not yet turned into records, so memory is bounded by the largest
//! record when it is fed in modest pieces.
//!
//! The stream grammar it enforces:
//!
//! ```text
//! stream    := substream | package
//! substream := BEGIN(substream) record* END        (END absent for `zfs send -S`)
//! package   := BEGIN(compound) END substream* END(all zero)
//! ```

use crate::error::{Part, StreamError};
use crate::features::{split_versioninfo, FeatureFlags, HeaderType, BACKUP_MAGIC};
use crate::fletcher::Fletcher4;
use crate::nvlist::{self, NvList};
use crate::record::{Body, Header, RecordType, RECORD_SIZE, TRAILER_OFFSET};
use crate::validate::{self, MAX_BEGIN_PAYLOAD, MAX_BLOCK_SIZE};
use crate::{ByteOrder, Checksum};
use bytes::{Bytes, BytesMut};

/// Options for [`Decoder`].
#[derive(Clone, Copy, Debug)]
pub struct DecoderOptions {
    /// Check trailer and END checksums (default: on). Off only to salvage
    /// records from a stream already known to be damaged.
    pub verify_checksums: bool,
    /// Accept a substream that stops on a record boundary without END, as
    /// `zfs send -S` (saved, partial receive state) writes (default: off,
    /// since without END a truncated stream looks the same).
    pub allow_missing_end: bool,
}

impl Default for DecoderOptions {
    fn default() -> Self {
        DecoderOptions {
            verify_checksums: true,
            allow_missing_end: false,
        }
    }
}

/// One verified record.
#[derive(Clone, Debug)]
pub struct Record {
    /// Position in the stream, from 0.
    pub index: u64,
    /// Byte offset of the header in the stream.
    pub offset: u64,
    /// The parsed header.
    pub header: Header,
    /// The header exactly as read.
    pub raw_header: [u8; RECORD_SIZE],
    /// The payload, shared with the input buffer where possible.
    pub payload: Bytes,
    /// For a BEGIN with a payload: the decoded nvlist.
    pub nvlist: Option<Box<NvList>>,
}

impl Record {
    /// The record type.
    pub fn record_type(&self) -> RecordType {
        self.header.record_type()
    }

    /// Header plus payload length.
    pub fn wire_len(&self) -> u64 {
        RECORD_SIZE as u64 + self.payload.len() as u64
    }
}

/// Where the decoder is in the stream grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Nothing read yet.
    Start,
    /// After a compound BEGIN: its END comes next.
    PackageHeader,
    /// Inside a package, between substreams: BEGIN or the final END.
    BetweenSubstreams,
    /// Inside a substream; `in_package` says where its END leads.
    Substream { in_package: bool },
    /// After the last END.
    Done,
}

/// A header read, waiting for its payload.
struct Pending {
    header: Header,
    raw: [u8; RECORD_SIZE],
    payload_len: usize,
}

/// What the decoder knows about the stream as a whole.
#[derive(Clone, Debug, Default)]
pub struct StreamState {
    /// Byte order, once the first BEGIN is read.
    pub order: Option<ByteOrder>,
    /// Whether the stream is a compound package.
    pub compound: bool,
    /// Substreams begun so far.
    pub substreams: u64,
    /// The stream ended without END where that was allowed (`-S`).
    pub ended_without_end: bool,
}

/// The incremental decoder. See the module documentation.
pub struct Decoder {
    opts: DecoderOptions,
    buf: BytesMut,
    /// Stream offset of `buf[0]`.
    offset: u64,
    index: u64,
    phase: Phase,
    features: FeatureFlags,
    cksum: Fletcher4,
    pending: Option<Pending>,
    last_type: Option<RecordType>,
    state: StreamState,
    /// Every byte before this offset is covered by a checksum that matched.
    verified: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DecoderOptions::default())
    }
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new(opts: DecoderOptions) -> Decoder {
        Decoder {
            opts,
            buf: BytesMut::new(),
            offset: 0,
            index: 0,
            phase: Phase::Start,
            features: FeatureFlags::default(),
            cksum: Fletcher4::new(),
            pending: None,
            last_type: None,
            state: StreamState::default(),
            verified: 0,
        }
    }

    /// Appends input (copied into the decoder's buffer).
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The input buffer, for reading straight into it (`read_buf`) without
    /// an extra copy. Append only; do not remove bytes.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes of input taken so far (the stream offset the next input lands at).
    pub fn bytes_in(&self) -> u64 {
        self.offset + self.buf.len() as u64
    }

    /// Bytes already turned into records.
    pub fn bytes_decoded(&self) -> u64 {
        self.offset
    }

    /// How many more bytes the decoder needs before it can yield the next
    /// record (0 if it may already have one).
    pub fn bytes_wanted(&self) -> usize {
        let need = match &self.pending {
            Some(p) => p.payload_len,
            None => RECORD_SIZE,
        };
        need.saturating_sub(self.buf.len())
    }

    /// Every byte of the stream before this offset is covered by a checksum
    /// that has matched: a record's trailer vouches for everything before
    /// it, so a record's payload is only verified once a later trailer (or
    /// the END checksum) has been checked. Consumers that must never forward
    /// a damaged byte hold records until their end is at or below this
    /// offset. With checksum verification off it follows the decoded bytes.
    pub fn verified_offset(&self) -> u64 {
        self.verified
    }

    /// True once the final END has been read.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// What is known about the stream so far.
    pub fn state(&self) -> &StreamState {
        &self.state
    }

    /// The next complete, verified record, or `None` if more input is needed.
    pub fn next_record(&mut self) -> Result<Option<Record>, StreamError> {
        if self.pending.is_none() {
            if self.phase == Phase::Done && !self.buf.is_empty() {
                return Err(StreamError::TrailingData {
                    offset: self.offset,
                    len: self.buf.len() as u64,
                });
            }
            if self.buf.len() < RECORD_SIZE {
                return Ok(None);
            }
            let mut raw = [0u8; RECORD_SIZE];
            raw.copy_from_slice(&self.buf[..RECORD_SIZE]);
            let pending = self.read_header(raw)?;
            self.pending = Some(pending);
        }
        let payload_len = self.pending.as_ref().map_or(0, |p| p.payload_len);
        if self.buf.len() < RECORD_SIZE + payload_len {
            // Make room for the whole record once, not piecemeal.
            self.buf.reserve(RECORD_SIZE + payload_len - self.buf.len());
            return Ok(None);
        }
        let Some(Pending {
            header,
            raw,
            payload_len,
        }) = self.pending.take()
        else {
            return Ok(None);
        };
        let record_offset = self.offset;
        let index = self.index;
        let _ = self.buf.split_to(RECORD_SIZE);
        let payload = self.buf.split_to(payload_len).freeze();
        self.offset += (RECORD_SIZE + payload_len) as u64;
        self.index += 1;
        let nvlist = self.verify_and_advance(index, record_offset, &header, &raw, &payload)?;
        if !self.opts.verify_checksums || header.record_type() == RecordType::End {
            // An END's checksum covers all before it and its own fields
            // were just compared, so the stream is verified through it.
            self.verified = self.offset;
        }
        self.last_type = Some(header.record_type());
        Ok(Some(Record {
            index,
            offset: record_offset,
            header,
            raw_header: raw,
            payload,
            nvlist,
        }))
    }

    /// Declares the end of input: an error unless the stream is complete.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        let at = self.bytes_in();
        if let Some(p) = &self.pending {
            return Err(StreamError::Truncated {
                at,
                index: self.index,
                record_type: Some(p.header.record_type()),
                part: if self.buf.len() >= RECORD_SIZE {
                    Part::Payload
                } else {
                    Part::Header
                },
            });
        }
        if !self.buf.is_empty() {
            if self.phase == Phase::Done {
                return Err(StreamError::TrailingData {
                    offset: self.offset,
                    len: self.buf.len() as u64,
                });
            }
            return Err(StreamError::Truncated {
                at,
                index: self.index,
                record_type: None,
                part: Part::Header,
            });
        }
        match (self.phase, self.last_type) {
            (Phase::Done, _) => Ok(()),
            (Phase::Start, _) | (_, None) => Err(StreamError::Empty),
            (Phase::Substream { in_package: false }, Some(_)) if self.opts.allow_missing_end => {
                self.state.ended_without_end = true;
                Ok(())
            }
            (_, Some(last_type)) => Err(StreamError::MissingEnd {
                at,
                last_index: self.index - 1,
                last_type,
            }),
        }
    }

    /// Parses and checks a header; works out its payload length.
    fn read_header(&mut self, raw: [u8; RECORD_SIZE]) -> Result<Pending, StreamError> {
        let (index, offset) = (self.index, self.offset);
        let order = match self.state.order {
            Some(o) => o,
            None => {
                let order = detect_order(&raw).ok_or(StreamError::BadMagic {
                    index,
                    offset,
                    found: ByteOrder::Little.u64(&raw[8..]),
                })?;
                self.state.order = Some(order);
                order
            }
        };
        let code = order.u32(&raw[0..]);
        let t = RecordType::from_code(code).ok_or(StreamError::UnknownType {
            index,
            offset,
            code,
        })?;
        let header = Header::parse(t, &raw, order);
        let invalid = |reason: String| StreamError::InvalidRecord {
            index,
            record_type: t,
            offset,
            reason,
        };
        match &header.body {
            Body::Begin(b) => {
                if b.magic != BACKUP_MAGIC {
                    return Err(StreamError::BadMagic {
                        index,
                        offset,
                        found: b.magic,
                    });
                }
                let (hdrtype, features) = split_versioninfo(b.versioninfo);
                if hdrtype != HeaderType::Substream.code() && hdrtype != HeaderType::Compound.code()
                {
                    return Err(StreamError::UnknownHeaderType {
                        index,
                        offset,
                        code: hdrtype,
                    });
                }
                let unknown = features.unknown_bits();
                if !unknown.is_empty() {
                    return Err(StreamError::UnknownFeatures {
                        index,
                        offset,
                        bits: unknown,
                    });
                }
                if header.payload_len() > MAX_BEGIN_PAYLOAD {
                    return Err(invalid(format!(
                        "nvlist payload of {} bytes exceeds the {} bytes zfs recv accepts",
                        header.payload_len(),
                        MAX_BEGIN_PAYLOAD
                    )));
                }
            }
            Body::End(_) => {
                // No checksum covers an END without a trailer (a package's
                // header END and its final END): libzfs zeroes every field
                // it does not set, so anything else there is damage.
                if header.trailer.is_zero() {
                    let stray = raw[4..8]
                        .iter()
                        .chain(&raw[48..TRAILER_OFFSET])
                        .position(|&b| b != 0);
                    if let Some(pos) = stray {
                        let at = if pos < 4 { 4 + pos } else { 48 + pos - 4 };
                        return Err(invalid(format!(
                            "unused byte {at} of an END without trailer checksum is not zero (damaged record)"
                        )));
                    }
                }
            }
            body => {
                validate::check_body(body, self.features).map_err(invalid)?;
                if header.payload_len() > MAX_BLOCK_SIZE {
                    return Err(invalid(format!(
                        "payload of {} bytes exceeds the maximum block size {}",
                        header.payload_len(),
                        MAX_BLOCK_SIZE
                    )));
                }
            }
        }
        self.check_grammar(index, offset, &header)?;
        Ok(Pending {
            payload_len: header.payload_len() as usize,
            header,
            raw,
        })
    }

    /// Refuses a record that cannot come next.
    fn check_grammar(&self, index: u64, offset: u64, header: &Header) -> Result<(), StreamError> {
        let t = header.record_type();
        let unexpected = |expected| {
            Err(StreamError::Unexpected {
                index,
                record_type: t,
                offset,
                expected,
            })
        };
        match (self.phase, &header.body) {
            (Phase::Start, Body::Begin(_)) => Ok(()),
            (Phase::Start, _) => unexpected("DRR_BEGIN to open the stream"),
            (Phase::PackageHeader, Body::End(e)) if e.toguid == 0 => Ok(()),
            (Phase::PackageHeader, _) => {
                unexpected("the DRR_END closing the package header (with toguid 0)")
            }
            (Phase::BetweenSubstreams, Body::Begin(b)) => {
                if split_versioninfo(b.versioninfo).0 == HeaderType::Compound.code() {
                    return unexpected("a substream DRR_BEGIN, not a nested package");
                }
                Ok(())
            }
            (Phase::BetweenSubstreams, Body::End(e)) => {
                if e.toguid != 0 || !e.checksum.is_zero() {
                    return unexpected("the package's final all-zero DRR_END");
                }
                Ok(())
            }
            (Phase::BetweenSubstreams, _) => {
                unexpected("a substream DRR_BEGIN or the package's final DRR_END")
            }
            (Phase::Substream { .. }, Body::Begin(_)) => {
                unexpected("records of the open substream or its DRR_END")
            }
            (Phase::Substream { .. }, _) => Ok(()),
            (Phase::Done, _) => unexpected("nothing after the final DRR_END"),
        }
    }

    /// Runs the checksums over a complete record and moves the grammar on.
    fn verify_and_advance(
        &mut self,
        index: u64,
        offset: u64,
        header: &Header,
        raw: &[u8; RECORD_SIZE],
        payload: &Bytes,
    ) -> Result<Option<Box<NvList>>, StreamError> {
        let order = self.state.order.unwrap_or(ByteOrder::Little);
        let verify = self.opts.verify_checksums;
        let t = header.record_type();
        let mut nv = None;
        match &header.body {
            Body::Begin(b) => {
                // A BEGIN starts a fresh checksum; its whole 312 bytes count,
                // as its trailer position holds the end of `toname`.
                self.cksum.reset();
                self.cksum.update(raw, order);
                let (hdrtype, features) = split_versioninfo(b.versioninfo);
                self.features = features;
                if !payload.is_empty() {
                    let (list, _) =
                        nvlist::decode(payload).map_err(|source| StreamError::BeginNvlist {
                            index,
                            offset,
                            source,
                        })?;
                    nv = Some(Box::new(list));
                }
                self.phase = match self.phase {
                    Phase::Start if hdrtype == HeaderType::Compound.code() => {
                        self.state.compound = true;
                        Phase::PackageHeader
                    }
                    Phase::Start => {
                        self.state.substreams += 1;
                        Phase::Substream { in_package: false }
                    }
                    _ => {
                        self.state.substreams += 1;
                        Phase::Substream { in_package: true }
                    }
                };
            }
            Body::End(e) => {
                let expected = self.cksum.value();
                if verify && e.checksum != expected {
                    return Err(StreamError::EndChecksum {
                        index,
                        offset,
                        expected,
                        found: e.checksum,
                    });
                }
                self.check_trailer(index, offset, t, raw, header.trailer, order)?;
                // Each substream's checksum starts from zero at its BEGIN;
                // between substreams it is zero, which is what the final
                // all-zero END carries.
                self.cksum.reset();
                self.phase = match self.phase {
                    Phase::PackageHeader => Phase::BetweenSubstreams,
                    Phase::Substream { in_package: true } => Phase::BetweenSubstreams,
                    _ => Phase::Done,
                };
            }
            _ => self.check_trailer(index, offset, t, raw, header.trailer, order)?,
        }
        if !payload.is_empty() {
            self.cksum.update(payload, order);
        }
        Ok(nv)
    }

    /// Sums the header up to its trailer, compares (zero trailers are not
    /// checked, as in OpenZFS), then sums the trailer itself.
    fn check_trailer(
        &mut self,
        index: u64,
        offset: u64,
        t: RecordType,
        raw: &[u8; RECORD_SIZE],
        trailer: Checksum,
        order: ByteOrder,
    ) -> Result<(), StreamError> {
        self.cksum.update(&raw[..TRAILER_OFFSET], order);
        let expected = self.cksum.value();
        if self.opts.verify_checksums && !trailer.is_zero() {
            if trailer != expected {
                return Err(StreamError::RecordChecksum {
                    index,
                    record_type: t,
                    offset,
                    expected,
                    found: trailer,
                });
            }
            self.verified = offset;
        }
        self.cksum.update(&raw[TRAILER_OFFSET..], order);
        Ok(())
    }
}

/// The byte order in which a BEGIN's type is 0 and its magic reads right.
fn detect_order(raw: &[u8; RECORD_SIZE]) -> Option<ByteOrder> {
    [ByteOrder::Little, ByteOrder::Big]
        .into_iter()
        .find(|o| o.u32(&raw[0..]) == RecordType::Begin.code() && o.u64(&raw[8..]) == BACKUP_MAGIC)
}
