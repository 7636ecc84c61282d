//! The [`Verifier`]: between the network and a downstream, it lets
//! through only checksum-verified bytes, and the stream's final END only
//! once the caller's proof has matched.

use crate::SinkError;
use bytes::Bytes;
use fjord_stream::{Body, Decoder, DecoderOptions};
use std::collections::VecDeque;

/// What a [`Verifier`] accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifierOptions {
    /// Accept compound (`zfs send -R`/`-I`) packages (default: off, they
    /// are refused with [`SinkError::Compound`]). Only the package's final
    /// END is held back until [`Verifier::finish`]; each substream's own
    /// END is released as soon as it verifies. Turn this on only for a
    /// downstream that commits nothing before `finish` (a file that is
    /// renamed into place then), never for `zfs recv`, which commits each
    /// substream's snapshot at its END.
    pub accept_compound: bool,
}

/// A send-stream checker between the network and a downstream: bytes come
/// out only once a checksum covering them matched (see
/// `fjord_stream::Decoder::verified_offset`), and the stream's final END
/// record (whose arrival makes `zfs recv` commit the snapshot) comes out
/// only from [`finish`](Verifier::finish), once the caller's proof (the
/// sender's End, the announced length, the pack's receipt) has matched.
///
/// After any error the verifier is closed: every later call fails with
/// [`SinkError::VerifierClosed`] and nothing more is released.
pub struct Verifier {
    decoder: Decoder,
    held: VecDeque<Bytes>,
    held_bytes: u64,
    released: u64,
    limit: u64,
    toguid: Option<u64>,
    /// The first snapshot's `drr_type` (a package's header has none).
    objset_type: Option<u32>,
    opts: VerifierOptions,
    /// Stream offset of the final END record, once decoded: nothing from
    /// there on is released before `finish`.
    end_at: Option<u64>,
    /// Failed or finished: takes nothing more.
    closed: bool,
}

impl Verifier {
    /// A verifier that holds at most `limit` unverified bytes and refuses
    /// compound streams.
    pub fn new(limit: u64) -> Verifier {
        Verifier::with_options(limit, VerifierOptions::default())
    }

    /// A verifier that holds at most `limit` unverified bytes, with `opts`.
    pub fn with_options(limit: u64, opts: VerifierOptions) -> Verifier {
        Verifier {
            decoder: Decoder::new(DecoderOptions::default()),
            held: VecDeque::new(),
            held_bytes: 0,
            released: 0,
            limit,
            toguid: None,
            objset_type: None,
            opts,
            end_at: None,
            closed: false,
        }
    }

    /// Bytes released (verified) so far.
    pub fn released(&self) -> u64 {
        self.released
    }

    /// What the stream creates (`drr_type` of its first snapshot's BEGIN:
    /// 2 a file system, 3 a volume), once that BEGIN has been decoded. A
    /// package's header BEGIN names no snapshot and is skipped.
    pub fn objset_type(&self) -> Option<u32> {
        self.objset_type
    }

    /// True once the stream's final END has been read and verified; it is
    /// held until [`finish`](Verifier::finish).
    pub fn end_held(&self) -> bool {
        self.end_at.is_some() && !self.closed
    }

    /// Takes `data`; calls `out` with every newly verified byte range
    /// (never any byte of the final END record).
    pub fn push(
        &mut self,
        data: Bytes,
        out: &mut dyn FnMut(&[u8]) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        if self.closed {
            return Err(SinkError::VerifierClosed);
        }
        let r = self.push_inner(data, out);
        self.closed = r.is_err();
        r
    }

    fn push_inner(
        &mut self,
        data: Bytes,
        out: &mut dyn FnMut(&[u8]) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        self.decoder.feed(&data);
        self.held_bytes += data.len() as u64;
        self.held.push_back(data);
        while let Some(r) = self.decoder.next_record()? {
            if self.decoder.state().compound && !self.opts.accept_compound {
                return Err(SinkError::Compound);
            }
            // Hold from each END on: in a single stream it is the final
            // one; in a package (`-I`, `-R`) a substream's END is released
            // when the next substream BEGINs, so the last substream's END
            // (followed by the package's final END) waits for `finish`: the
            // newest snapshot commits only after the proof.
            match &r.header.body {
                Body::Begin(b) => {
                    if b.toguid != 0 {
                        self.toguid = Some(b.toguid);
                        self.objset_type.get_or_insert(b.objset_type);
                    }
                    self.end_at = None;
                }
                Body::End(_) if self.end_at.is_none() => self.end_at = Some(r.offset),
                _ => {}
            }
        }
        let upto = self
            .decoder
            .verified_offset()
            .min(self.end_at.unwrap_or(u64::MAX));
        self.release(upto, out)?;
        if self.held_bytes > self.limit {
            return Err(SinkError::HeldTooMuch {
                limit_mib: self.limit >> 20,
                at: self.decoder.bytes_in(),
            });
        }
        Ok(())
    }

    /// The input is complete and the sender announced `length` bytes: an
    /// error unless the whole stream verified and is exactly `length`
    /// bytes long (the held END included). Only then is the final END
    /// released to `out`; on any error it never is. Returns the guid of
    /// the snapshot the stream creates (its last BEGIN's toguid).
    ///
    /// Call it only once everything else the commit depends on (the
    /// sender's End, the pack's receipt) has been checked.
    pub fn finish(
        &mut self,
        length: u64,
        out: &mut dyn FnMut(&[u8]) -> Result<(), SinkError>,
    ) -> Result<Option<u64>, SinkError> {
        if self.closed {
            return Err(SinkError::VerifierClosed);
        }
        self.closed = true;
        self.decoder.finish()?;
        let total = self.decoder.bytes_in();
        let verified = self.decoder.verified_offset();
        if verified != total {
            // The decoder accepted the end, so this cannot happen; refuse
            // rather than release what no checksum covers.
            return Err(SinkError::Unverified {
                bytes: total - verified.min(total),
            });
        }
        if length != total {
            return Err(SinkError::LengthMismatch {
                verified: total,
                announced: length,
            });
        }
        self.release(total, out)?;
        if self.held_bytes != 0 {
            return Err(SinkError::Unverified {
                bytes: self.held_bytes,
            });
        }
        Ok(self.toguid)
    }

    /// Passes held bytes before stream offset `upto` to `out`.
    fn release(
        &mut self,
        upto: u64,
        out: &mut dyn FnMut(&[u8]) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        while self.released < upto {
            let Some(front) = self.held.front_mut() else {
                break;
            };
            let n = (upto - self.released).min(front.len() as u64) as usize;
            out(&front[..n])?;
            self.released += n as u64;
            self.held_bytes -= n as u64;
            if n == front.len() {
                self.held.pop_front();
            } else {
                let _ = front.split_to(n);
            }
        }
        Ok(())
    }
}
