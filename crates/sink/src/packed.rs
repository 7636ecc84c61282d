//! Packed transfers: the sender runs the send stream through `fjord-pack`
//! (`fjord_transport::source::PackSource`)
//! (record-aligned frames, BLAKE3 dedup within the stream, adaptive zstd)
//! and the transport carries the pack bytes like any stream; offsets,
//! acks and resumes count pack bytes. The receiver decodes them back
//! (checking each frame's BLAKE3, every record's checksum, and the receipt)
//! before its sink sees a byte. Offers say so with
//! [`offer_flags::PACKED`](fjord_proto::message::offer_flags::PACKED).

use crate::{advance_contiguous, Sink, SinkError, SinkOutcome};
use bytes::Bytes;
use fjord_pack::{ChunkStore, NoCache, PackDecoder, UnpackOptions};

/// Decodes a packed transfer in front of another sink: `inner` gets the
/// original stream, verified, at stream offsets.
///
/// The commit waits for the proof: `inner.finish` (which alone lets a
/// [`Verifier`](crate::Verifier)-based sink release the stream's
/// final END downstream) is called only once the pack length the sender
/// announced, the pack's END frame and its BLAKE3 receipt have matched.
/// The decoded END record itself reaches `inner.write` earlier, as soon as
/// its checksum matched; `inner` must hold it (its verifier does).
pub struct PackedSink {
    inner: Box<dyn Sink>,
    /// The sender's chunk cache, when the receiver keeps one.
    store: Box<dyn ChunkStore + Send>,
    decoder: PackDecoder,
    /// Next pack offset expected.
    next: u64,
    /// Stream bytes handed to `inner`.
    out: u64,
    decoded: Vec<Bytes>,
}

impl PackedSink {
    /// Wraps `inner`; references outside the stream resolve from `store`,
    /// which also keeps the stream's new chunks.
    pub fn new(inner: Box<dyn Sink>, store: Option<Box<dyn ChunkStore + Send>>) -> PackedSink {
        let store_chunks = store.is_some();
        PackedSink {
            inner,
            store: store.unwrap_or_else(|| Box::new(NoCache)),
            decoder: PackDecoder::new(UnpackOptions {
                store_chunks,
                ..UnpackOptions::default()
            }),
            next: 0,
            out: 0,
            decoded: Vec::new(),
        }
    }

    fn drain(&mut self) -> Result<(), SinkError> {
        for b in self.decoded.drain(..) {
            let len = b.len() as u64;
            self.inner.write(self.out, b)?;
            self.out += len;
        }
        Ok(())
    }
}

impl Sink for PackedSink {
    fn write(&mut self, start: u64, data: Bytes) -> Result<(), SinkError> {
        advance_contiguous(&mut self.next, start, data.len())?;
        self.decoder.feed_bytes(data);
        let r = self.decoder.decode(&mut *self.store, &mut self.decoded);
        // What decoded before an error is verified: pass it on first.
        self.drain()?;
        r.map_err(SinkError::Pack)
    }

    fn finish(&mut self, length: u64) -> Result<SinkOutcome, SinkError> {
        if length != self.next {
            return Err(SinkError::PackLengthMismatch {
                announced: length,
                arrived: self.next,
            });
        }
        // The END frame and its receipt were checked when they arrived;
        // this fails unless they did.
        let receipt = self.decoder.finish()?;
        self.drain()?;
        if receipt.stream_len != self.out {
            return Err(SinkError::ReceiptLength {
                receipt: receipt.stream_len,
                decoded: self.out,
            });
        }
        // Only now may `inner` release the stream's END.
        let mut outcome = self.inner.finish(self.out)?;
        outcome.message = format!(
            "{} (packed: {length} bytes on the wire for {} stream bytes)",
            outcome.message, self.out
        );
        Ok(outcome)
    }

    fn abort(&mut self, why: &str) {
        self.inner.abort(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Verifier;
    use fjord_pack::format::{FrameHeader, FrameKind, Receipt, END_LEN, HEADER_LEN};
    use fjord_pack::{PackOptions, UnpackError};
    use fjord_stream::builder::StreamBuilder;
    use fjord_stream::{ByteOrder, RECORD_SIZE};
    use std::sync::{Arc, Mutex};

    /// A verifier in front of a vector: what a downstream would see.
    struct Recording {
        verifier: Verifier,
        next: u64,
        seen: Arc<Mutex<Vec<u8>>>,
    }

    impl Sink for Recording {
        fn write(&mut self, start: u64, data: Bytes) -> Result<(), SinkError> {
            advance_contiguous(&mut self.next, start, data.len())?;
            let seen = &self.seen;
            self.verifier.push(data, &mut |b| {
                seen.lock().expect("lock").extend_from_slice(b);
                Ok(())
            })
        }
        fn finish(&mut self, length: u64) -> Result<SinkOutcome, SinkError> {
            let seen = &self.seen;
            let guid = self.verifier.finish(length, &mut |b| {
                seen.lock().expect("lock").extend_from_slice(b);
                Ok(())
            })?;
            Ok(SinkOutcome {
                snapshot_guid: guid,
                ..SinkOutcome::default()
            })
        }
        fn abort(&mut self, _why: &str) {}
    }

    fn packed_sink() -> (PackedSink, Arc<Mutex<Vec<u8>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let inner = Recording {
            verifier: Verifier::new(64 << 20),
            next: 0,
            seen: seen.clone(),
        };
        (PackedSink::new(Box::new(inner), None), seen)
    }

    /// About 3 MiB of pseudo-random 128 KiB blocks.
    fn stream() -> Vec<u8> {
        let mut b = StreamBuilder::full(ByteOrder::Little, "tank/fs@a", 0x77);
        b.object(2, 131072, &[0u8; 168]);
        let mut rng = fastrand::Rng::with_seed(14);
        let mut block = vec![0u8; 131072];
        for i in 0..24u64 {
            rng.fill(&mut block);
            b.write(2, i * 131072, &block);
        }
        b.finish()
    }

    /// The pack of `stream` in frames of 64 KiB: many frames.
    fn pack(stream: &[u8]) -> Vec<u8> {
        let opts = PackOptions {
            frame_target: 64 << 10,
            ..PackOptions::default()
        };
        let mut out = Vec::new();
        fjord_pack::pack(
            std::io::Cursor::new(stream.to_vec()),
            &mut out,
            &opts,
            &mut NoCache,
        )
        .expect("pack");
        out
    }

    /// Changes the receipt in the pack's END frame and seals the frame
    /// again, so that only the receipt check can catch it.
    fn forge_receipt(pack: &mut [u8], change: impl FnOnce(&mut Receipt)) {
        let at = pack.len() - HEADER_LEN - END_LEN;
        let raw: [u8; HEADER_LEN] = pack[at..at + HEADER_LEN].try_into().expect("header");
        let mut header = FrameHeader::parse(&raw).expect("END frame header");
        assert_eq!(header.kind, FrameKind::End);
        let body = &mut pack[at + HEADER_LEN..];
        let mut receipt = Receipt::parse(body).expect("receipt");
        change(&mut receipt);
        body.copy_from_slice(&receipt.to_bytes());
        header.digest = header.compute_digest(body);
        pack[at..at + HEADER_LEN].copy_from_slice(&header.to_bytes());
    }

    /// Feeds `pack` in 16 KiB pieces; the first error, if any.
    fn feed(sink: &mut PackedSink, pack: &[u8]) -> Option<SinkError> {
        let mut at = 0u64;
        for c in pack.chunks(16 << 10) {
            if let Err(e) = sink.write(at, Bytes::copy_from_slice(c)) {
                return Some(e);
            }
            at += c.len() as u64;
        }
        None
    }

    fn assert_no_end(seen: &Mutex<Vec<u8>>, stream: &[u8]) {
        let seen = seen.lock().expect("lock");
        assert!(
            seen.len() <= stream.len() - RECORD_SIZE,
            "{} of {} bytes reached the downstream: the END went through",
            seen.len(),
            stream.len()
        );
        assert_eq!(&seen[..], &stream[..seen.len()]);
    }

    #[test]
    fn the_end_reaches_the_downstream_only_after_the_receipt_and_length() {
        let s = stream();
        let p = pack(&s);
        let (mut sink, seen) = packed_sink();
        assert!(feed(&mut sink, &p).is_none());
        assert_eq!(
            seen.lock().expect("lock").len(),
            s.len() - RECORD_SIZE,
            "everything but the END, before finish"
        );
        let outcome = sink.finish(p.len() as u64).expect("finish");
        assert_eq!(outcome.snapshot_guid, Some(0x77));
        assert_eq!(*seen.lock().expect("lock"), s);
    }

    #[test]
    fn a_forged_receipt_never_lets_the_end_through() {
        let s = stream();
        let forgeries: [fn(&mut Receipt); 2] = [|r| r.digest[7] ^= 1, |r| r.stream_len += 1];
        for forge in forgeries {
            let mut p = pack(&s);
            forge_receipt(&mut p, forge);
            let (mut sink, seen) = packed_sink();
            let err = feed(&mut sink, &p).expect("the receipt check fails");
            assert!(
                matches!(err, SinkError::Pack(UnpackError::ReceiptMismatch { .. })),
                "{err}"
            );
            assert_no_end(&seen, &s);
            assert!(sink.finish(p.len() as u64).is_err());
            assert_no_end(&seen, &s);
        }
    }

    #[test]
    fn a_wrong_announced_pack_length_never_lets_the_end_through() {
        let s = stream();
        let p = pack(&s);
        for wrong in [p.len() as u64 - 1, p.len() as u64 + 1] {
            let (mut sink, seen) = packed_sink();
            assert!(feed(&mut sink, &p).is_none());
            let err = sink.finish(wrong).expect_err("wrong length");
            assert!(matches!(err, SinkError::PackLengthMismatch { .. }), "{err}");
            assert_no_end(&seen, &s);
        }
    }

    #[test]
    fn a_pack_cut_before_its_end_frame_never_lets_the_end_through() {
        let s = stream();
        let p = pack(&s);
        let cut = &p[..p.len() - HEADER_LEN - END_LEN];
        let (mut sink, seen) = packed_sink();
        assert!(feed(&mut sink, cut).is_none());
        let err = sink.finish(cut.len() as u64).expect_err("no END frame");
        assert!(
            matches!(err, SinkError::Pack(UnpackError::MissingEnd { .. })),
            "{err}"
        );
        assert_no_end(&seen, &s);
    }
}

#[cfg(test)]
mod window_tests {
    /// Admission charges each session the pack decoder's largest window;
    /// the protocol crate knows it only as a number.
    #[test]
    fn admission_charges_the_pack_decoders_largest_window() {
        assert_eq!(
            fjord_proto::admission::PACKED_WINDOW_BYTES,
            fjord_pack::window::MAX_WINDOW_BYTES
        );
    }
}
