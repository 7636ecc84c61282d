//! Blocking edges over the sans-IO stages: [`pack`] drives them from any
//! `Read` to any `Write` on a worker pool, [`unpack`] the other way.
//!
//! Pack threads: the caller's thread reads, verifies records with
//! [`fjord_stream::Decoder`] and cuts frames; one worker per core hashes,
//! probes and compresses; a coordinator plans frames in order (dedup needs
//! order) and writes sealed frames in order. At most `2 × workers + 2`
//! frames are in flight, which bounds memory whatever the stream's size.

use crate::decoder::{
    parse_header, prepare, BufferPool, Frame, PrepareScratch, PreparedFrame, UnpackOptions,
    UnpackStats, Unpacker,
};
use crate::encoder::{
    analyze, compressor, receipt_update, seal, AnalyzedFrame, FrameCutter, FramePlanner,
    PackOptions, PackStats, RawFrame, SealJob, SealedFrame,
};
use crate::error::{PackError, UnpackError, UnpackFailed};
use crate::format::{FrameKind, Receipt, HEADER_LEN};
use crate::holdings::{ChunkStore, ReceiverHoldings};
use bytes::Bytes;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use fjord_stream::{Decoder, DecoderOptions};
use std::collections::BTreeMap;
use std::io::{Read, Write};

/// Bytes read from the input at a time.
pub const READ_CHUNK: usize = 1 << 20;

/// What a finished pack did.
#[derive(Clone, Debug)]
pub struct PackSummary {
    /// Counters.
    pub stats: PackStats,
    /// Length and BLAKE3 of the original stream.
    pub receipt: Receipt,
}

enum Job {
    Analyze(RawFrame),
    Seal(u64, SealJob),
}

enum Event {
    Analyzed(AnalyzedFrame),
    Sealed(u64, Result<SealedFrame, PackError>),
    /// The input is exhausted after `data_frames` frames.
    InputDone {
        data_frames: u64,
        receipt: Receipt,
    },
    /// The input failed; stop.
    InputFailed,
}

/// The number of workers `opts` asks for.
pub fn worker_count(opts: &PackOptions) -> usize {
    if opts.workers > 0 {
        opts.workers
    } else {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

/// Where [`pack_frames`] puts sealed frames, in order, from its
/// coordinating thread.
pub trait FrameOutput {
    /// Takes the next frame.
    fn put(&mut self, frame: SealedFrame) -> std::io::Result<()>;
    /// Every frame was put (the END frame last).
    fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A [`Write`] as a [`FrameOutput`]: one vectored write per frame, a
/// flush at the end.
pub struct WriteFrames<W>(pub W);

impl<W: Write> FrameOutput for WriteFrames<W> {
    fn put(&mut self, frame: SealedFrame) -> std::io::Result<()> {
        frame.write_to(&mut self.0)
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Packs the send stream read from `input` into frames written to
/// `output`. The stream is verified on the way (an invalid stream is not
/// packed); `holdings` says which chunks the receiver's cache holds.
pub fn pack<R: Read, W: Write + Send>(
    input: R,
    output: W,
    opts: &PackOptions,
    holdings: &mut (dyn ReceiverHoldings + Send),
) -> Result<PackSummary, PackError> {
    pack_frames(input, WriteFrames(output), opts, holdings)
}

/// Packs the send stream read from `input` into sealed frames handed to
/// `output` in order, without laying them out in a byte stream: their
/// stored sections stay the `Bytes` they were read into, so a caller that
/// sends frames (the transport) copies nothing.
pub fn pack_frames<R: Read, O: FrameOutput + Send>(
    mut input: R,
    output: O,
    opts: &PackOptions,
    holdings: &mut (dyn ReceiverHoldings + Send),
) -> Result<PackSummary, PackError> {
    opts.validate()?;
    let workers = worker_count(opts);
    let (job_tx, job_rx) = unbounded::<Job>();
    let (event_tx, event_rx) = unbounded::<Event>();
    // One slot per frame between cutting and writing: the memory bound.
    let (slot_tx, slot_rx) = bounded::<()>(2 * workers + 2);

    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (jobs, events) = (job_rx.clone(), event_tx.clone());
            let level = opts.zstd_level;
            scope.spawn(move || worker(jobs, events, level));
        }
        drop(job_rx);
        let coordinator = {
            let (jobs, events) = (job_tx.clone(), event_rx);
            scope.spawn(move || coordinate(opts, holdings, output, jobs, events, slot_rx))
        };
        let read = read_and_cut(&mut input, opts, &job_tx, &slot_tx);
        drop(job_tx);
        let _ = event_tx.send(match &read {
            Ok((data_frames, receipt)) => Event::InputDone {
                data_frames: *data_frames,
                receipt: *receipt,
            },
            Err(_) => Event::InputFailed,
        });
        drop(event_tx);
        let written = coordinator
            .join()
            .unwrap_or_else(|_| Err(PackError::Compress("a pack thread panicked".into())));
        match (read, written) {
            // A bad input explains a coordinator that stopped for lack of it.
            (Err(e @ (PackError::Stream(_) | PackError::Read { .. })), _) => Err(e),
            // A writer that failed explains a reader told to stop.
            (_, Err(e)) | (Err(e), Ok(_)) => Err(e),
            (Ok(_), Ok((stats, receipt))) => Ok(PackSummary { stats, receipt }),
        }
    })
}

/// The caller's thread: read, verify, cut. Returns the number of data
/// frames and the receipt.
fn read_and_cut<R: Read>(
    input: &mut R,
    opts: &PackOptions,
    jobs: &Sender<Job>,
    slots: &Sender<()>,
) -> Result<(u64, Receipt), PackError> {
    let mut decoder = Decoder::new(DecoderOptions {
        verify_checksums: true,
        allow_missing_end: opts.allow_missing_end,
    });
    // The receipt's BLAKE3 is the coordinator's: this thread already
    // reads, copies and runs Fletcher-4 over every byte.
    let mut cutter = FrameCutter::without_receipt(opts.frame_target);
    let mut frames = 0u64;
    // The coordinator stopped (write error): it reports why.
    let stopped = || PackError::Compress("the pack writer stopped".into());
    let mut submit = |frame: RawFrame| -> Result<(), PackError> {
        slots.send(()).map_err(|_| stopped())?;
        jobs.send(Job::Analyze(frame)).map_err(|_| stopped())?;
        frames += 1;
        Ok(())
    };
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let n = match input.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(PackError::Read {
                    at: decoder.bytes_in(),
                    source,
                })
            }
        };
        if n == 0 {
            decoder.finish()?;
            break;
        }
        decoder.feed(&chunk[..n]);
        while let Some(record) = decoder.next_record()? {
            if let Some(frame) = cutter.push(record) {
                submit(frame)?;
            }
        }
    }
    if let Some(frame) = cutter.flush() {
        submit(frame)?;
    }
    Ok((frames, cutter.receipt()))
}

fn worker(jobs: Receiver<Job>, events: Sender<Event>, level: i32) {
    let mut zstd = compressor(level);
    for job in jobs {
        let event = match job {
            Job::Analyze(raw) => Event::Analyzed(analyze(raw)),
            Job::Seal(index, job) => Event::Sealed(
                index,
                match &mut zstd {
                    Ok(c) => seal(job, c),
                    Err(e) => Err(PackError::Compress(e.to_string())),
                },
            ),
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// Plans analysed frames in order, writes sealed frames in order.
fn coordinate<O: FrameOutput>(
    opts: &PackOptions,
    holdings: &mut (dyn ReceiverHoldings + Send),
    mut output: O,
    jobs: Sender<Job>,
    events: Receiver<Event>,
    slots: Receiver<()>,
) -> Result<(PackStats, Receipt), PackError> {
    let mut planner = FramePlanner::new(opts);
    let mut receipt_hasher = blake3::Hasher::new();
    let mut zstd = compressor(opts.zstd_level)?;
    let mut written = 0u64;
    let mut write = |frame: SealedFrame, stats: &mut PackStats| -> Result<(), PackError> {
        let len = frame.wire_len();
        output.put(frame).map_err(|source| PackError::Write {
            at: written,
            source,
        })?;
        written += len;
        stats.wire_bytes += len;
        stats.frames += 1;
        Ok(())
    };
    let start = seal(planner.start(), &mut zstd)?;
    write(start, &mut planner.stats)?;

    let mut analyzed: BTreeMap<u64, AnalyzedFrame> = BTreeMap::new();
    let mut sealed: BTreeMap<u64, SealedFrame> = BTreeMap::new();
    let (mut next_plan, mut next_write) = (0u64, 1u64);
    let mut input_done: Option<(u64, Receipt)> = None;
    loop {
        if let Some((data_frames, mut receipt)) = input_done {
            if next_write == data_frames + 1 {
                receipt.digest = *receipt_hasher.finalize().as_bytes();
                let end = seal(planner.end(&receipt), &mut zstd)?;
                write(end, &mut planner.stats)?;
                output.finish().map_err(|source| PackError::Write {
                    at: written,
                    source,
                })?;
                return Ok((planner.stats, receipt));
            }
        }
        let Ok(event) = events.recv() else {
            return Err(PackError::Compress("pack workers stopped".into()));
        };
        match event {
            Event::Analyzed(frame) => {
                analyzed.insert(frame.raw.seq, frame);
                while let Some(frame) = analyzed.remove(&next_plan) {
                    for (record, _) in &frame.raw.records {
                        receipt_update(&mut receipt_hasher, record);
                    }
                    let plan = planner.plan(frame, holdings)?;
                    let index = plan.header.index;
                    let packed = plan.packed.len() as u64;
                    planner.stats.packed_plain_bytes += packed;
                    if jobs.send(Job::Seal(index, plan)).is_err() {
                        return Err(PackError::Compress("pack workers stopped".into()));
                    }
                    next_plan += 1;
                }
            }
            Event::Sealed(index, frame) => {
                sealed.insert(index, frame?);
                while let Some(frame) = sealed.remove(&next_write) {
                    planner.stats.packed_wire_bytes += frame.header.packed_len as u64;
                    write(frame, &mut planner.stats)?;
                    let _ = slots.try_recv();
                    next_write += 1;
                }
            }
            Event::InputDone {
                data_frames,
                receipt,
            } => input_done = Some((data_frames, receipt)),
            Event::InputFailed => return Ok((planner.stats, Receipt::default())),
        }
    }
}

/// What a finished unpack did.
#[derive(Clone, Debug)]
pub struct UnpackSummary {
    /// Counters.
    pub stats: UnpackStats,
    /// The receipt, checked against the rebuilt stream.
    pub receipt: Receipt,
}

/// Rebuilds the original stream from the pack read from `input`, writing
/// only verified bytes to `output`; references outside the dedup window
/// are resolved from `store`.
///
/// Threads: the caller's reads whole frames, resolves references, verifies
/// the rebuilt stream with [`fjord_stream::Decoder`] in frame order and
/// writes what that released; one worker per core checks frame digests,
/// decompresses, checks stored chunks and lays out each frame's bytes
/// (frames are independent for that); one thread computes the receipt. At
/// most `2 × workers + 2` frames are in flight.
pub fn unpack<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    store: &mut dyn ChunkStore,
    opts: &UnpackOptions,
) -> Result<UnpackSummary, UnpackFailed> {
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let depth = 2 * workers + 2;
    let mut unpacker = Unpacker::new(opts.clone());
    let mut written = 0u64;
    let result = std::thread::scope(|scope| -> Result<Receipt, UnpackError> {
        let (job_tx, job_rx) = unbounded::<Frame>();
        let (done_tx, done_rx) = unbounded::<PreparedFrame>();
        let raw_pool = BufferPool::default();
        for _ in 0..workers {
            let (jobs, done) = (job_rx.clone(), done_tx.clone());
            let pool = raw_pool.clone();
            scope.spawn(move || {
                let mut scratch = PrepareScratch::with_pool(pool);
                for frame in jobs {
                    if done.send(prepare(frame, &mut scratch)).is_err() {
                        return;
                    }
                }
            });
        }
        drop((job_rx, done_tx));
        // Bounded: a receipt thread starved of CPU holds back the
        // verifier rather than letting rebuilt frames pile up.
        let (bytes_tx, bytes_rx) = bounded::<Bytes>(depth);
        let (digest_tx, digest_rx) = bounded::<[u8; 32]>(1);
        scope.spawn(move || {
            let mut hasher = blake3::Hasher::new();
            for b in bytes_rx {
                hasher.update(&b);
            }
            let _ = digest_tx.send(*hasher.finalize().as_bytes());
        });
        unpacker.offload_receipt(bytes_tx, digest_rx);

        let mut reader = FrameSource::default();
        let mut ready = Vec::new();
        let mut prepared: BTreeMap<u64, PreparedFrame> = BTreeMap::new();
        let (mut submitted, mut applied) = (0u64, 0u64);
        // How reading ended, once it has: after `submitted` frames.
        let mut input_end: Option<Result<(), UnpackError>> = None;
        let run = (|| -> Result<Receipt, UnpackError> {
            loop {
                while input_end.is_none() && submitted - applied < depth as u64 {
                    match reader.next(&mut input) {
                        Ok(Some(frame)) => {
                            submitted += 1;
                            let _ = job_tx.send(frame);
                        }
                        Ok(None) => input_end = Some(Ok(())),
                        Err(e) => input_end = Some(Err(e)),
                    }
                }
                if applied == submitted {
                    break;
                }
                let frame = match prepared.remove(&applied) {
                    Some(frame) => frame,
                    None => {
                        let frame = done_rx.recv().map_err(|_| UnpackError::Malformed {
                            frame: applied,
                            offset: reader.offset,
                            reason: "internal: the unpack workers stopped".into(),
                        })?;
                        if frame.index() != applied {
                            prepared.insert(frame.index(), frame);
                            continue;
                        }
                        frame
                    }
                };
                applied += 1;
                let decoded = unpacker.apply(frame, store, &mut ready);
                // What was released before an error is verified: write it.
                for piece in ready.drain(..) {
                    output
                        .write_all(&piece)
                        .map_err(|source| UnpackError::Write {
                            at: written,
                            source,
                        })?;
                    written += piece.len() as u64;
                }
                decoded?;
            }
            input_end.take().unwrap_or(Ok(()))?;
            unpacker.receipt().ok_or(UnpackError::MissingEnd {
                frames: reader.index,
                offset: reader.offset,
            })
        })();
        drop(job_tx);
        // Closes the receipt thread's input if END never came.
        unpacker.drop_receipt_offload();
        run
    });
    let flushed = output.flush().map_err(|source| UnpackError::Write {
        at: written,
        source,
    });
    match result.and_then(|r| flushed.map(|_| r)) {
        Ok(receipt) => Ok(UnpackSummary {
            stats: unpacker.stats.clone(),
            receipt,
        }),
        Err(source) => Err(UnpackFailed { written, source }),
    }
}

/// Reads whole frames straight into buffers of their own (no copy beyond
/// the read); stops after the END frame, refusing bytes after it.
#[derive(Default)]
struct FrameSource {
    /// Where frame buffers come from and return to.
    pool: BufferPool,
    /// Pack bytes read.
    offset: u64,
    /// Index of the next frame.
    index: u64,
    /// The END frame was read.
    ended: bool,
}

impl FrameSource {
    fn next<R: Read>(&mut self, input: &mut R) -> Result<Option<Frame>, UnpackError> {
        let (frame, offset) = (self.index, self.offset);
        let read_err = |at: u64| move |source| UnpackError::Read { at, source };
        if self.ended {
            let mut probe = [0u8; 4096];
            let n = read_full(input, &mut probe).map_err(read_err(offset))?;
            if n > 0 {
                return Err(UnpackError::TrailingData {
                    offset,
                    len: n as u64,
                });
            }
            return Ok(None);
        }
        let mut raw = [0u8; HEADER_LEN];
        let n = read_full(input, &mut raw).map_err(read_err(offset))?;
        if n == 0 {
            return Ok(None);
        }
        if n < HEADER_LEN {
            return Err(UnpackError::Truncated {
                frame,
                offset,
                have: n as u64,
                need: HEADER_LEN as u64,
            });
        }
        let header = parse_header(&raw, frame, offset)?;
        let body_len = (header.packed_len as u64 + header.stored_len as u64) as usize;
        let mut body = self.pool.get(body_len);
        let got = input
            .take(body_len as u64)
            .read_to_end(&mut body)
            .map_err(read_err(offset + HEADER_LEN as u64))?;
        if got < body_len {
            return Err(UnpackError::Truncated {
                frame,
                offset,
                have: (HEADER_LEN + got) as u64,
                need: header.wire_len(),
            });
        }
        self.offset += header.wire_len();
        self.index += 1;
        self.ended = header.kind == FrameKind::End;
        let body = self.pool.wrap(body);
        let packed = body.slice(..header.packed_len as usize);
        let stored = body.slice(header.packed_len as usize..);
        Ok(Some(Frame {
            header,
            offset,
            packed,
            stored,
        }))
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoder::PackDecoder;
    use crate::holdings::NoCache;
    use crate::PackOptions;
    use fjord_stream::builder::StreamBuilder;
    use fjord_stream::{ByteOrder, FeatureFlags};
    use fjord_suite::XorShift;

    const BLOCK: usize = 32 * 1024;

    /// Random, text and repeated blocks: STORED, CHUNK and REF ops.
    fn stream() -> Vec<u8> {
        let features = FeatureFlags(FeatureFlags::LARGE_BLOCKS | FeatureFlags::EMBED_DATA);
        let mut b = StreamBuilder::with(ByteOrder::Little, "tank/fs@a", 7, 0, features, None);
        let mut rng = XorShift(11);
        b.object(2, BLOCK as u32, &[0u8; 168]);
        let mut blocks = Vec::new();
        for i in 0..40u64 {
            let block: Vec<u8> = match i % 3 {
                0 => (0..BLOCK).map(|_| rng.next_u64() as u8).collect(),
                1 => format!("line {i} of some text\n")
                    .repeat(BLOCK)
                    .into_bytes()[..BLOCK]
                    .to_vec(),
                _ => blocks.get(i as usize / 2).cloned().unwrap_or_default(),
            };
            let block = if block.is_empty() {
                vec![7u8; BLOCK]
            } else {
                block
            };
            b.write(2, i * BLOCK as u64, &block);
            blocks.push(block);
        }
        b.finish()
    }

    /// The sans-IO decoder's verdict: released bytes and error text.
    fn reference(packed: &[u8]) -> (Vec<u8>, Option<String>) {
        let mut d = PackDecoder::new(UnpackOptions::default());
        let (mut out, mut released) = (Vec::new(), Vec::new());
        d.feed_bytes(Bytes::copy_from_slice(packed));
        let r = d.decode(&mut NoCache, &mut out);
        released.extend(out.drain(..).flat_map(|b| b.to_vec()));
        let err = r.err().or_else(|| d.finish().err());
        (released, err.map(|e| e.to_string()))
    }

    fn pipelined(packed: &[u8]) -> (Vec<u8>, Option<String>) {
        let mut out = Vec::new();
        // Small reads: frames arrive in pieces.
        let input = std::io::BufReader::with_capacity(1000, packed);
        match unpack(input, &mut out, &mut NoCache, &UnpackOptions::default()) {
            Ok(_) => (out, None),
            Err(e) => {
                assert_eq!(e.written, out.len() as u64);
                (out, Some(e.source.to_string()))
            }
        }
    }

    #[test]
    fn the_pipeline_decodes_and_fails_exactly_as_the_sans_io_decoder() {
        let stream = stream();
        let opts = PackOptions {
            frame_target: 100 * 1024,
            ..Default::default()
        };
        let mut packed = Vec::new();
        let s = pack(&stream[..], &mut packed, &opts, &mut NoCache).expect("packs");
        assert!(s.stats.window_refs > 0 && s.stats.stored_bytes > 0 && s.stats.chunk_bytes > 0);
        let (out, err) = pipelined(&packed);
        assert_eq!(err, None);
        assert!(out == stream);

        let mut rng = XorShift(3);
        for _ in 0..60 {
            let pos = rng.range(0, packed.len() - 1);
            let mut damaged = packed.clone();
            damaged[pos] ^= 1 << rng.range(0, 7);
            let (want, want_err) = reference(&damaged);
            let (got, got_err) = pipelined(&damaged);
            assert!(got_err.is_some(), "flip at {pos} went unnoticed");
            assert_eq!(got_err, want_err, "flip at {pos}");
            assert!(got == want, "flip at {pos}: released bytes differ");
        }
        for _ in 0..30 {
            let cut = rng.range(0, packed.len() - 1);
            let (want, want_err) = reference(&packed[..cut]);
            let (got, got_err) = pipelined(&packed[..cut]);
            assert!(got_err.is_some(), "cut at {cut} went unnoticed");
            assert_eq!(got_err, want_err, "cut at {cut}");
            assert!(got == want, "cut at {cut}: released bytes differ");
        }
        let mut trailing = packed.clone();
        trailing.extend_from_slice(b"more");
        let (got, got_err) = pipelined(&trailing);
        assert!(got == stream);
        assert!(got_err.is_some_and(|e| e.contains("follow the END frame")));
    }
}
