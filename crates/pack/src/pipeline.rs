//! Blocking edges over the sans-IO stages: [`pack`] drives them from any
//! `Read` to any `Write` on a worker pool, [`unpack`] the other way.
//!
//! Pack threads: the caller's thread reads, verifies records with
//! [`fjord_stream::Decoder`] and cuts frames; one worker per core hashes,
//! probes and compresses; a coordinator plans frames in order (dedup needs
//! order) and writes sealed frames in order. At most `2 × workers + 2`
//! frames are in flight, which bounds memory whatever the stream's size.

use crate::decoder::{PackDecoder, UnpackOptions, UnpackStats};
use crate::encoder::{
    analyze, compressor, seal, AnalyzedFrame, FrameCutter, FramePlanner, PackOptions, PackStats,
    RawFrame, SealJob,
};
use crate::error::{PackError, UnpackError, UnpackFailed};
use crate::format::Receipt;
use crate::holdings::{ChunkStore, ReceiverHoldings};
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
    Sealed(u64, Result<Vec<u8>, PackError>),
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

/// Packs the send stream read from `input` into frames written to
/// `output`. The stream is verified on the way (an invalid stream is not
/// packed); `holdings` says which chunks the receiver's cache holds.
pub fn pack<R: Read, W: Write + Send>(
    mut input: R,
    output: W,
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
            (Ok((_, receipt)), Ok(stats)) => Ok(PackSummary { stats, receipt }),
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
    let mut cutter = FrameCutter::new(opts.frame_target);
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
fn coordinate<W: Write>(
    opts: &PackOptions,
    holdings: &mut (dyn ReceiverHoldings + Send),
    mut output: W,
    jobs: Sender<Job>,
    events: Receiver<Event>,
    slots: Receiver<()>,
) -> Result<PackStats, PackError> {
    let mut planner = FramePlanner::new(opts);
    let mut zstd = compressor(opts.zstd_level)?;
    let mut written = 0u64;
    let mut write = |bytes: &[u8], stats: &mut PackStats| -> Result<(), PackError> {
        output.write_all(bytes).map_err(|source| PackError::Write {
            at: written,
            source,
        })?;
        written += bytes.len() as u64;
        stats.wire_bytes += bytes.len() as u64;
        stats.frames += 1;
        Ok(())
    };
    let start = seal(planner.start(), &mut zstd)?;
    write(&start, &mut planner.stats)?;

    let mut analyzed: BTreeMap<u64, AnalyzedFrame> = BTreeMap::new();
    let mut sealed: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let (mut next_plan, mut next_write) = (0u64, 1u64);
    let mut input_done: Option<(u64, Receipt)> = None;
    loop {
        if let Some((data_frames, receipt)) = input_done {
            if next_write == data_frames + 1 {
                let end = seal(planner.end(&receipt), &mut zstd)?;
                write(&end, &mut planner.stats)?;
                output.flush().map_err(|source| PackError::Write {
                    at: written,
                    source,
                })?;
                return Ok(planner.stats);
            }
        }
        let Ok(event) = events.recv() else {
            return Err(PackError::Compress("pack workers stopped".into()));
        };
        match event {
            Event::Analyzed(frame) => {
                analyzed.insert(frame.raw.seq, frame);
                while let Some(frame) = analyzed.remove(&next_plan) {
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
                    let packed = packed_len(&frame);
                    planner.stats.packed_wire_bytes += packed;
                    write(&frame, &mut planner.stats)?;
                    let _ = slots.try_recv();
                    next_write += 1;
                }
            }
            Event::InputDone {
                data_frames,
                receipt,
            } => input_done = Some((data_frames, receipt)),
            Event::InputFailed => return Ok(planner.stats),
        }
    }
}

fn packed_len(frame: &[u8]) -> u64 {
    frame
        .get(28..32)
        .and_then(|b| b.try_into().ok())
        .map_or(0, |b| u32::from_le_bytes(b) as u64)
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
pub fn unpack<R: Read, W: Write>(
    mut input: R,
    mut output: W,
    store: &mut dyn ChunkStore,
    opts: &UnpackOptions,
) -> Result<UnpackSummary, UnpackFailed> {
    let mut decoder = PackDecoder::new(opts.clone());
    let mut written = 0u64;
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut ready = Vec::new();
    let mut read_at = 0u64;
    let result = (|| -> Result<Receipt, UnpackError> {
        loop {
            let n = match input.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(UnpackError::Read {
                        at: read_at,
                        source,
                    })
                }
            };
            read_at += n as u64;
            if n == 0 {
                return decoder.finish();
            }
            decoder.feed(&chunk[..n]);
            let decoded = decoder.decode(store, &mut ready);
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
    })();
    let flushed = output.flush().map_err(|source| UnpackError::Write {
        at: written,
        source,
    });
    match result.and_then(|r| flushed.map(|_| r)) {
        Ok(receipt) => Ok(UnpackSummary {
            stats: decoder.stats().clone(),
            receipt,
        }),
        Err(source) => Err(UnpackFailed { written, source }),
    }
}
