//! Where a receiver puts a stream: the [`Sink`] trait, the pure
//! [`Verifier`] that lets through only checksum-verified bytes, and the
//! [`FileSink`] that stores each stream as a file in a directory.

use crate::identity::PublicKey;
use crate::message::Offer;
use bytes::Bytes;
use fjord_stream::{Body, Decoder, DecoderOptions, StreamError};
use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a sink failed.
#[derive(Debug, Error)]
pub enum SinkError {
    /// The stream is damaged or invalid.
    #[error("the stream is invalid: {0}")]
    Stream(#[from] StreamError),
    /// Unverified data grew beyond the limit.
    #[error("more than {limit_mib} MiB of stream without a checksum to verify it (at byte {at}); this stream cannot be verified with bounded memory")]
    HeldTooMuch {
        /// The limit.
        limit_mib: u64,
        /// Stream offset reached.
        at: u64,
    },
    /// Writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The offer cannot be stored here.
    #[error("{0}")]
    Refused(String),
    /// Another transfer is writing the same target.
    #[error("{0}")]
    Busy(String),
    /// The frame encoding is not supported by this sink.
    #[error("frame encoding {0:?} is not supported by this receiver; upgrade fjord-recv")]
    Encoding(crate::message::FrameEncoding),
}

/// What a finished sink reports.
#[derive(Clone, Debug, Default)]
pub struct SinkOutcome {
    /// Downstream exit status (0 for files).
    pub status: i32,
    /// Guid of the snapshot the stream creates (its last BEGIN's toguid).
    pub snapshot_guid: Option<u64>,
    /// For the operator: where the stream went.
    pub message: String,
}

/// The downstream of a receiving session. Calls are blocking; the driver
/// runs them on a blocking thread.
pub trait Sink: Send {
    /// Stream bytes at `start` (always contiguous with the last call).
    fn write(&mut self, start: u64, data: Bytes) -> Result<(), SinkError>;
    /// The stream is complete at `length` bytes: verify and commit.
    fn finish(&mut self, length: u64) -> Result<SinkOutcome, SinkError>;
    /// The session failed: discard everything, present nothing as complete.
    fn abort(&mut self, why: &str);
}

/// Checks that a write at `start` continues where the last one ended
/// (`next`), then moves `next` past its `len` bytes. Every sink keeps this
/// invariant of the session layer; a gap is a bug, refused rather than
/// written.
pub fn advance_contiguous(next: &mut u64, start: u64, len: usize) -> Result<(), SinkError> {
    if start != *next {
        return Err(SinkError::Refused(format!(
            "internal: write at {start}, expected {next}"
        )));
    }
    *next += len as u64;
    Ok(())
}

/// Makes a sink for each accepted offer.
pub trait SinkFactory: Send + Sync + 'static {
    /// A sink for `offer` from the sender whose key is `peer`, or why it
    /// is refused (the factory decides what that sender may write).
    fn open(&self, offer: &Offer, peer: &PublicKey) -> Result<Box<dyn Sink>, SinkError>;
}

/// A send-stream checker between the network and a downstream: bytes come
/// out only once a checksum covering them matched (see
/// `fjord_stream::Decoder::verified_offset`).
pub struct Verifier {
    decoder: Decoder,
    held: VecDeque<Bytes>,
    held_bytes: u64,
    released: u64,
    limit: u64,
    toguid: Option<u64>,
}

impl Verifier {
    /// A verifier that holds at most `limit` unverified bytes.
    pub fn new(limit: u64) -> Verifier {
        Verifier {
            decoder: Decoder::new(DecoderOptions::default()),
            held: VecDeque::new(),
            held_bytes: 0,
            released: 0,
            limit,
            toguid: None,
        }
    }

    /// Bytes released (verified) so far.
    pub fn released(&self) -> u64 {
        self.released
    }

    /// Takes `data`; calls `out` with every newly verified byte range.
    pub fn push(
        &mut self,
        data: Bytes,
        out: &mut dyn FnMut(&[u8]) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        self.decoder.feed(&data);
        self.held_bytes += data.len() as u64;
        self.held.push_back(data);
        while let Some(r) = self.decoder.next_record()? {
            if let Body::Begin(b) = &r.header.body {
                if b.toguid != 0 {
                    self.toguid = Some(b.toguid);
                }
            }
        }
        self.release(out)?;
        if self.held_bytes > self.limit {
            return Err(SinkError::HeldTooMuch {
                limit_mib: self.limit >> 20,
                at: self.decoder.bytes_in(),
            });
        }
        Ok(())
    }

    /// The input is complete: an error unless the whole stream verified.
    pub fn finish(
        &mut self,
        out: &mut dyn FnMut(&[u8]) -> Result<(), SinkError>,
    ) -> Result<Option<u64>, SinkError> {
        self.decoder.finish()?;
        self.release(out)?;
        if self.held_bytes != 0 {
            // The decoder accepted the end, so everything is verified.
            return Err(SinkError::Refused(format!(
                "{} bytes at the end of the stream were never covered by a checksum",
                self.held_bytes
            )));
        }
        Ok(self.toguid)
    }

    fn release(
        &mut self,
        out: &mut dyn FnMut(&[u8]) -> Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        let verified = self.decoder.verified_offset();
        while self.released < verified {
            let Some(front) = self.held.front_mut() else {
                break;
            };
            let n = (verified - self.released).min(front.len() as u64) as usize;
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

/// Stores each stream as `DIR/<dataset with / as _>@<snapshot>.zsend`.
/// Data goes to a hidden `.partial` file first, renamed only once the
/// whole stream verified and was synced; a failed or abandoned transfer
/// leaves no file behind.
pub struct FileSinkFactory {
    dir: PathBuf,
    held_limit: u64,
}

impl FileSinkFactory {
    /// Streams go to `dir`; at most `held_limit` unverified bytes are held.
    pub fn new(dir: PathBuf, held_limit: u64) -> FileSinkFactory {
        FileSinkFactory { dir, held_limit }
    }
}

/// The file name a stream is stored under, or why the names are unusable.
pub fn stream_file_name(offer: &Offer) -> Result<String, String> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 255
            && !s.split('/').any(|c| c.is_empty() || c == "." || c == "..")
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.:/ ".contains(c))
    };
    if !ok(&offer.dataset) {
        return Err(format!(
            "dataset name {:?} is not a valid ZFS dataset name",
            offer.dataset
        ));
    }
    let snap = offer
        .to
        .name
        .rsplit('@')
        .next()
        .unwrap_or(&offer.to.name)
        .to_string();
    if !ok(&snap) || snap.contains('/') {
        return Err(format!("snapshot name {:?} is not valid", offer.to.name));
    }
    Ok(format!("{}@{snap}.zsend", offer.dataset.replace('/', "_")))
}

impl SinkFactory for FileSinkFactory {
    fn open(&self, offer: &Offer, _peer: &PublicKey) -> Result<Box<dyn Sink>, SinkError> {
        let zfs_only =
            crate::message::offer_flags::FORCE_ROLLBACK | crate::message::offer_flags::RESUME_TOKEN;
        if offer.flags & zfs_only != 0 {
            return Err(SinkError::Refused(format!(
                "the file sink stores plain streams only; offer flags {:#x} (rollback or resume-token) need a ZFS target",
                offer.flags
            )));
        }
        let name = stream_file_name(offer).map_err(SinkError::Refused)?;
        let target = self.dir.join(&name);
        if target.exists() {
            return Err(SinkError::Refused(format!(
                "{} already exists; move it away to receive this stream again",
                target.display()
            )));
        }
        let temp = self.dir.join(format!(".{name}.partial"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp)
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::AlreadyExists {
                    SinkError::Busy(format!(
                        "{} exists: another transfer of this stream is in progress (or a receiver crashed; then remove it)",
                        temp.display()
                    ))
                } else {
                    SinkError::Io {
                        path: temp.display().to_string(),
                        source,
                    }
                }
            })?;
        Ok(Box::new(FileSink {
            temp,
            target,
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            verifier: Verifier::new(self.held_limit),
            next: 0,
        }))
    }
}

/// One stream being written (see [`FileSinkFactory`]).
pub struct FileSink {
    temp: PathBuf,
    target: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
    verifier: Verifier,
    next: u64,
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl Sink for FileSink {
    fn write(&mut self, start: u64, data: Bytes) -> Result<(), SinkError> {
        advance_contiguous(&mut self.next, start, data.len())?;
        let Some(file) = self.file.as_mut() else {
            return Err(SinkError::Refused("the sink is closed".into()));
        };
        let temp = &self.temp;
        self.verifier
            .push(data, &mut |b| file.write_all(b).map_err(io_err(temp)))
    }

    fn finish(&mut self, length: u64) -> Result<SinkOutcome, SinkError> {
        let Some(mut file) = self.file.take() else {
            return Err(SinkError::Refused("the sink is closed".into()));
        };
        let temp = &self.temp;
        let guid = self
            .verifier
            .finish(&mut |b| file.write_all(b).map_err(io_err(temp)))?;
        if self.verifier.released() != length {
            return Err(SinkError::Refused(format!(
                "verified {} bytes but the sender announced {length}",
                self.verifier.released()
            )));
        }
        let file = file
            .into_inner()
            .map_err(|e| io_err(temp)(e.into_error()))?;
        file.sync_all().map_err(io_err(temp))?;
        drop(file);
        if self.target.exists() {
            return Err(SinkError::Refused(format!(
                "{} appeared while receiving; not overwriting it",
                self.target.display()
            )));
        }
        std::fs::rename(&self.temp, &self.target).map_err(io_err(&self.target))?;
        if let Some(dir) = self.target.parent() {
            // Make the rename durable; failure here is not fatal.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(SinkOutcome {
            status: 0,
            snapshot_guid: guid,
            message: format!("stored {} bytes as {}", length, self.target.display()),
        })
    }

    fn abort(&mut self, why: &str) {
        self.file = None;
        match std::fs::remove_file(&self.temp) {
            Ok(()) => tracing::warn!(file = %self.temp.display(), why, "partial stream discarded"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(file = %self.temp.display(), error = %e, "cannot remove partial stream file")
            }
        }
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if self.file.is_some() {
            self.abort("receiver dropped the session");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_stream::builder::StreamBuilder;
    use fjord_stream::ByteOrder;

    fn stream() -> Vec<u8> {
        let mut b = StreamBuilder::full(ByteOrder::Little, "tank/fs@a", 0x77);
        b.object(2, 4096, &[0u8; 64]);
        for i in 0..8u64 {
            b.write(2, i * 4096, &vec![i as u8; 4096]);
        }
        b.finish()
    }

    #[test]
    fn verifier_releases_only_verified_bytes_and_everything_at_the_end() {
        let s = stream();
        for step in [1usize, 100, 312, 5000] {
            let mut v = Verifier::new(1 << 30);
            let mut out = Vec::new();
            for c in s.chunks(step) {
                v.push(Bytes::copy_from_slice(c), &mut |b| {
                    out.extend_from_slice(b);
                    Ok(())
                })
                .unwrap();
                assert_eq!(&out[..], &s[..out.len()]);
            }
            let guid = v
                .finish(&mut |b| {
                    out.extend_from_slice(b);
                    Ok(())
                })
                .unwrap();
            assert_eq!(out, s);
            assert_eq!(guid, Some(0x77));
        }
    }

    #[test]
    fn a_flipped_byte_stops_before_the_damage() {
        let mut s = stream();
        let at = s.len() / 2;
        s[at] ^= 1;
        let mut v = Verifier::new(1 << 30);
        let mut out = Vec::new();
        let r = v.push(Bytes::from(s.clone()), &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        });
        assert!(r.is_err());
        assert!(out.len() <= at);
        assert_eq!(&out[..], &s[..out.len()]);
    }

    #[test]
    fn file_names_refuse_path_tricks() {
        let mut o = Offer {
            session: crate::SessionId(1),
            resuming: false,
            dataset: "backup/fs".into(),
            from: None,
            to: crate::message::Snapshot {
                name: "tank/fs@b".into(),
                guid: 1,
            },
            flags: 0,
            size_estimate: None,
        };
        assert_eq!(stream_file_name(&o).unwrap(), "backup_fs@b.zsend");
        for bad in ["../etc", "/abs", "a//b", "", "a\0b"] {
            o.dataset = bad.into();
            assert!(stream_file_name(&o).is_err(), "{bad}");
        }
    }
}
