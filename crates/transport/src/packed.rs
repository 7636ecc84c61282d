//! Packed transfers: the sender runs the send stream through `fjord-pack`
//! (record-aligned frames, BLAKE3 dedup within the stream, adaptive zstd)
//! and the transport carries the pack bytes like any stream; offsets,
//! acks and resumes count pack bytes. The receiver decodes them back
//! (checking each frame's BLAKE3, every record's checksum, and the receipt)
//! before its sink sees a byte. Offers say so with
//! [`offer_flags::PACKED`](crate::message::offer_flags::PACKED).

use crate::sink::{advance_contiguous, Sink, SinkError, SinkOutcome};
use bytes::Bytes;
use fjord_pack::{
    ChunkStore, NoCache, PackDecoder, PackOptions, PackSummary, ReceiverHoldings, UnpackOptions,
};
use std::io::Read;
use std::thread::JoinHandle;

/// A `Read` of the pack of `input`, produced on a worker pool: what the
/// transport sends for a packed transfer. A pack failure (an invalid
/// stream, or `input` failing) surfaces as a read error at the end, never
/// as a clean end of stream.
pub struct PackReader {
    pipe: std::io::PipeReader,
    worker: Option<JoinHandle<Result<PackSummary, fjord_pack::PackError>>>,
}

impl PackReader {
    /// Starts packing `input` with `opts`; `holdings` says which chunks
    /// the receiver promised to hold (its
    /// [`Inventory`](fjord_pack::Inventory), or [`NoCache`]).
    pub fn spawn<R: Read + Send + 'static>(
        input: R,
        opts: PackOptions,
        mut holdings: Box<dyn ReceiverHoldings + Send>,
    ) -> std::io::Result<PackReader> {
        let (pipe, writer) = std::io::pipe()?;
        let worker = std::thread::Builder::new()
            .name("fjord-pack".into())
            .spawn(move || fjord_pack::pack(input, writer, &opts, &mut *holdings))?;
        Ok(PackReader {
            pipe,
            worker: Some(worker),
        })
    }
}

impl Read for PackReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.pipe.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(worker) = self.worker.take() {
                match worker.join() {
                    Ok(Ok(summary)) => {
                        let s = &summary.stats;
                        tracing::info!(
                            stream_bytes = summary.receipt.stream_len,
                            wire_bytes = s.wire_bytes,
                            window_ref_bytes = s.window_ref_bytes,
                            cache_refs = s.cache_refs,
                            cache_ref_bytes = s.cache_ref_bytes,
                            "pack complete"
                        )
                    }
                    Ok(Err(e)) => return Err(std::io::Error::other(e.to_string())),
                    Err(_) => return Err(std::io::Error::other("the pack thread panicked")),
                }
            }
        }
        Ok(n)
    }
}

/// Decodes a packed transfer in front of another sink: `inner` gets the
/// original stream, verified, at stream offsets.
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

fn invalid(e: fjord_pack::UnpackError) -> SinkError {
    SinkError::Refused(format!("the packed stream is invalid: {e}"))
}

impl Sink for PackedSink {
    fn write(&mut self, start: u64, data: Bytes) -> Result<(), SinkError> {
        advance_contiguous(&mut self.next, start, data.len())?;
        self.decoder.feed_bytes(data);
        let r = self.decoder.decode(&mut *self.store, &mut self.decoded);
        // What decoded before an error is verified: pass it on first.
        self.drain()?;
        r.map_err(invalid)
    }

    fn finish(&mut self, length: u64) -> Result<SinkOutcome, SinkError> {
        if length != self.next {
            return Err(SinkError::Refused(format!(
                "the sender announced {length} pack bytes but {} arrived",
                self.next
            )));
        }
        let receipt = self.decoder.finish().map_err(invalid)?;
        self.drain()?;
        if receipt.stream_len != self.out {
            return Err(SinkError::Refused(format!(
                "the pack's receipt says {} stream bytes but {} were decoded",
                receipt.stream_len, self.out
            )));
        }
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
