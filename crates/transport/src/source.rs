//! What a transfer sends: the stream in pieces, produced on a thread of
//! its own (reading a pipe or packing blocks; never on a runtime worker).
//! A raw stream is read into buffers; a packed one is handed over frame by
//! frame as the `Bytes` the pack stage made, without a pipe and without
//! being copied or cut again.

use bytes::{Bytes, BytesMut};
use fjord_pack::{FrameOutput, PackOptions, PackSummary, ReceiverHoldings};
use std::io::Read;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// A stream to send, in pieces.
pub trait StreamSource: Send + 'static {
    /// The next piece, at most `max` bytes (never empty), or `None` at the
    /// end. Called on the source's own thread: it may block.
    fn next_piece(&mut self, max: usize) -> std::io::Result<Option<Bytes>>;
}

/// Any reader is a raw stream, read `max` bytes at a time (fewer only at
/// the end). `read_to_end` reads into the vector's spare capacity without
/// zero-filling it first (files and pipes read into uninitialised
/// buffers), and the vector becomes the piece without a copy.
impl<R: Read + Send + 'static> StreamSource for R {
    fn next_piece(&mut self, max: usize) -> std::io::Result<Option<Bytes>> {
        let mut buf = Vec::with_capacity(max);
        self.by_ref().take(max as u64).read_to_end(&mut buf)?;
        if buf.is_empty() {
            return Ok(None);
        }
        Ok(Some(Bytes::from(buf)))
    }
}

/// A source chosen at run time (raw or packed).
impl StreamSource for Box<dyn StreamSource> {
    fn next_piece(&mut self, max: usize) -> std::io::Result<Option<Bytes>> {
        (**self).next_piece(max)
    }
}

/// Pieces below this size are gathered into one (a copy of small pieces
/// only) so that a stream of small records is not sent as tiny frames.
const SMALL_PIECE: usize = 64 << 10;

/// Sealed frames queued between the pack stage and the transfer: the
/// pack stage's own slots bound the rest.
const QUEUED_PIECES: usize = 64;

/// The pack of a send stream, produced on a worker pool, as pieces: each
/// frame's head (header and packed section) and its stored sections, the
/// blocks read from `zfs send`, as they are. A pack failure (an invalid
/// stream, or the input failing) is an error at the end, never a clean
/// end of stream.
pub struct PackSource {
    pieces: Receiver<Bytes>,
    current: Bytes,
    worker: Option<JoinHandle<Result<PackSummary, fjord_pack::PackError>>>,
}

/// The pack stage's output: frames into the channel.
struct ChannelFrames(SyncSender<Bytes>);

impl FrameOutput for ChannelFrames {
    fn put(&mut self, frame: fjord_pack::encoder::SealedFrame) -> std::io::Result<()> {
        let gone = |_| std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        self.0.send(Bytes::from(frame.head)).map_err(gone)?;
        for stored in frame.stored {
            self.0.send(stored).map_err(gone)?;
        }
        Ok(())
    }
}

impl PackSource {
    /// Starts packing `input` with `opts`; `holdings` says which chunks
    /// the receiver promised to hold (its
    /// [`Inventory`](fjord_pack::Inventory), or
    /// [`NoCache`](fjord_pack::NoCache)).
    pub fn spawn<R: Read + Send + 'static>(
        input: R,
        opts: PackOptions,
        mut holdings: Box<dyn ReceiverHoldings + Send>,
    ) -> std::io::Result<PackSource> {
        let (tx, pieces) = sync_channel(QUEUED_PIECES);
        let worker = std::thread::Builder::new()
            .name("fjord-pack".into())
            .spawn(move || {
                fjord_pack::pack_frames(input, ChannelFrames(tx), &opts, &mut *holdings)
            })?;
        Ok(PackSource {
            pieces,
            current: Bytes::new(),
            worker: Some(worker),
        })
    }

    /// The next piece from the pack stage; at its end, its verdict.
    fn pull(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            match self.pieces.recv() {
                Ok(p) if p.is_empty() => continue,
                Ok(p) => return Ok(Some(p)),
                Err(_) => return self.finished().map(|()| None),
            }
        }
    }

    fn finished(&mut self) -> std::io::Result<()> {
        let Some(worker) = self.worker.take() else {
            return Ok(());
        };
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
                );
                Ok(())
            }
            Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
            Err(_) => Err(std::io::Error::other("the pack thread panicked")),
        }
    }
}

impl StreamSource for PackSource {
    fn next_piece(&mut self, max: usize) -> std::io::Result<Option<Bytes>> {
        let max = max.max(1);
        if self.current.is_empty() {
            match self.pull()? {
                Some(p) => self.current = p,
                None => return Ok(None),
            }
        }
        if self.current.len() >= SMALL_PIECE.min(max) {
            let n = self.current.len().min(max);
            return Ok(Some(self.current.split_to(n)));
        }
        // Gather small pieces up to SMALL_PIECE; a large one waits for the
        // next call, whole.
        let mut gathered = BytesMut::with_capacity(SMALL_PIECE.min(max));
        gathered.extend_from_slice(&std::mem::take(&mut self.current));
        while gathered.len() < SMALL_PIECE.min(max) {
            match self.pull()? {
                Some(p) if p.len() < SMALL_PIECE && gathered.len() + p.len() <= max => {
                    gathered.extend_from_slice(&p)
                }
                Some(p) => {
                    self.current = p;
                    break;
                }
                None => break,
            }
        }
        Ok(Some(gathered.freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_pack::NoCache;

    fn drain(mut s: impl StreamSource, max: usize) -> std::io::Result<Vec<Bytes>> {
        let mut out = Vec::new();
        while let Some(p) = s.next_piece(max)? {
            assert!(!p.is_empty() && p.len() <= max);
            out.push(p);
        }
        Ok(out)
    }

    #[test]
    fn a_reader_comes_in_pieces_of_at_most_max() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let pieces = drain(std::io::Cursor::new(data.clone()), 4096).unwrap();
        assert_eq!(
            pieces.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [4096, 4096, 1808]
        );
        assert_eq!(pieces.concat(), data);
    }

    /// A pipe: short reads and an interrupted call, then an error.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        calls: usize,
        fail_at_end: bool,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.calls += 1;
            if self.calls == 2 {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            if self.at == self.data.len() && self.fail_at_end {
                return Err(std::io::Error::other("zfs send died"));
            }
            let n = buf.len().min(700).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn short_and_interrupted_reads_still_fill_whole_pieces_and_errors_surface() {
        let data: Vec<u8> = (0..5_000u32).map(|i| (i * 7) as u8).collect();
        let pipe = |fail_at_end| Trickle {
            data: data.clone(),
            at: 0,
            calls: 0,
            fail_at_end,
        };
        let pieces = drain(pipe(false), 2048).unwrap();
        assert_eq!(
            pieces.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [2048, 2048, 904]
        );
        assert_eq!(pieces.concat(), data);
        let err = drain(pipe(true), 2048).unwrap_err();
        assert_eq!(err.to_string(), "zfs send died");
    }

    #[test]
    fn the_pieces_of_a_pack_are_the_bytes_pack_writes() {
        let stream = fjord_suite_stream(3);
        let mut expected = Vec::new();
        fjord_pack::pack(
            &stream[..],
            &mut expected,
            &PackOptions::default(),
            &mut NoCache,
        )
        .unwrap();
        for max in [1 << 20, 100_000, 1000] {
            let source = PackSource::spawn(
                std::io::Cursor::new(stream.clone()),
                PackOptions::default(),
                Box::new(NoCache),
            )
            .unwrap();
            let pieces = drain(source, max).unwrap();
            assert_eq!(pieces.concat(), expected, "max {max}");
        }
    }

    #[test]
    fn a_bad_stream_is_an_error_at_the_end_not_a_clean_end() {
        let mut stream = fjord_suite_stream(1);
        let n = stream.len();
        stream.truncate(n - 100);
        let source = PackSource::spawn(
            std::io::Cursor::new(stream),
            PackOptions::default(),
            Box::new(NoCache),
        )
        .unwrap();
        assert!(drain(source, 1 << 20).is_err());
    }

    /// A valid synthetic send stream of about `mib` MiB of mixed blocks.
    fn fjord_suite_stream(mib: usize) -> Vec<u8> {
        use fjord_stream::builder::StreamBuilder;
        use fjord_stream::ByteOrder;
        let mut b = StreamBuilder::full(ByteOrder::Little, "tank/fs@snap", 0xfeed);
        b.object(2, 131072, &[0u8; 168]);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..(mib * 8) as u64 {
            let block: Vec<u8> = (0..131072)
                .map(|j| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Half the blocks compressible.
                    if i % 2 == 0 {
                        (j % 7) as u8
                    } else {
                        x as u8
                    }
                })
                .collect();
            b.write(2, i * 131072, &block);
        }
        b.finish()
    }
}
