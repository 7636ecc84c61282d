//! Where a receiver puts a stream: the [`Sink`] trait, the pure
//! [`Verifier`] that lets through only checksum-verified bytes, and the
//! [`FileSink`] that stores each stream as a file in a directory.

use bytes::Bytes;
use fjord_proto::message::{Offer, RefuseCode};
use fjord_proto::PublicKey;
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
    /// The receiver refuses the offer: its name, its policy, or what it
    /// already holds say no. Retrying the same offer would not help.
    #[error("{reason}")]
    Refused {
        /// What the sender is told (see [`SinkError::refuse_code`]).
        code: RefuseCode,
        /// Why, for the operator on both sides.
        reason: String,
    },
    /// The downstream failed: `zfs recv` (or a `zfs` command the sink ran
    /// before it, such as a rollback) exited non-zero, or could not run.
    #[error("{what} {}: {}", downstream_words(*status), stderr.trim())]
    Downstream {
        /// What ran, for the message (`zfs recv into backup/fs@b`).
        what: String,
        /// Its exit status; `None` when it never ran or no status is
        /// known (then `stderr` says why).
        status: Option<i32>,
        /// What it wrote to stderr (or why it could not run).
        stderr: String,
    },
    /// A bug or a local failure that is neither the stream's, the
    /// sender's nor the downstream's: a write out of order, a sink thread
    /// that cannot start, a sink used after it closed.
    #[error("internal error in the receiver: {0}")]
    Internal(String),
    /// Another transfer is writing the same target.
    #[error("{0}")]
    Busy(String),
    /// The frame encoding is not supported by this sink.
    #[error("frame encoding {0:?} is not supported by this receiver; upgrade fjord-recv")]
    Encoding(fjord_proto::message::FrameEncoding),
    /// A compound (`zfs send -R` or `-I`) package reached a receiver that
    /// takes single streams only. A package carries one END per
    /// substream, and `zfs recv` commits each substream's snapshot at its
    /// END: before the sender's End and the announced length could be
    /// checked. fjord does not send packages.
    #[error("compound (zfs send -R) streams are not accepted by this receiver")]
    Compound,
    /// The stream verified up to its final END, but the sender announced
    /// another length: the END was not released, nothing was committed.
    #[error("verified {verified} bytes but the sender announced {announced}; the stream's END was held back and nothing was committed")]
    LengthMismatch {
        /// Bytes of stream verified, the held END included.
        verified: u64,
        /// The length the sender announced.
        announced: u64,
    },
    /// The input ended with bytes no checksum covers.
    #[error("{bytes} bytes at the end of the stream were never covered by a checksum")]
    Unverified {
        /// How many.
        bytes: u64,
    },
    /// The verifier already failed or finished; it takes nothing more.
    #[error("the stream verifier already failed or finished; nothing more is accepted")]
    VerifierClosed,
    /// The pack of a packed transfer is invalid (damaged, incomplete, or
    /// its receipt does not match the stream it rebuilt).
    #[error("the packed stream is invalid: {0}")]
    Pack(#[from] fjord_pack::UnpackError),
    /// The sender's End announced another pack length than arrived.
    #[error("the sender announced {announced} pack bytes but {arrived} arrived")]
    PackLengthMismatch {
        /// The length the sender announced.
        announced: u64,
        /// Pack bytes that arrived.
        arrived: u64,
    },
    /// The pack's receipt names another stream length than was decoded.
    #[error("the pack's receipt says {receipt} stream bytes but {decoded} were decoded")]
    ReceiptLength {
        /// The receipt's stream length.
        receipt: u64,
        /// Stream bytes decoded.
        decoded: u64,
    },
}

fn downstream_words(status: Option<i32>) -> String {
    match status {
        Some(code) => format!("exited {code}"),
        None => "failed".into(),
    }
}

impl SinkError {
    /// A refusal with `code` and `reason`.
    pub fn refused(code: RefuseCode, reason: impl Into<String>) -> SinkError {
        SinkError::Refused {
            code,
            reason: reason.into(),
        }
    }

    /// The refusal code the sender gets when opening a sink fails with
    /// this error: a refusal's own code, [`RefuseCode::Busy`] for a busy
    /// target, [`RefuseCode::Other`] for an internal error and
    /// [`RefuseCode::SinkFailed`] for everything that failed while
    /// storing (the downstream, the disk, the stream).
    pub fn refuse_code(&self) -> RefuseCode {
        match self {
            SinkError::Refused { code, .. } => *code,
            SinkError::Busy(_) => RefuseCode::Busy,
            SinkError::Internal(_) => RefuseCode::Other,
            _ => RefuseCode::SinkFailed,
        }
    }

    /// The downstream exit status for the sender's report of a session
    /// that failed with this error: the downstream's own status when it
    /// exited, 1 otherwise.
    pub fn report_status(&self) -> i32 {
        match self {
            SinkError::Downstream {
                status: Some(code), ..
            } if *code != 0 => *code,
            _ => 1,
        }
    }
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
        return Err(SinkError::Internal(format!(
            "write at stream offset {start}, expected {next}"
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

/// Stores each stream as `DIR/<dataset with / as _>@<snapshot>.zsend`.
/// Data goes to a hidden `.partial` file first, renamed only once the
/// whole stream verified, its length matched the sender's End and it was
/// synced; a failed or abandoned transfer leaves no file behind. Both
/// files are created mode 0600 (owner only).
///
/// A file is inert until the operator replays it, so compound
/// (`zfs send -R`) packages are stored too (see
/// [`VerifierOptions::accept_compound`]).
pub struct FileSinkFactory {
    dir: PathBuf,
    held_limit: u64,
}

impl FileSinkFactory {
    /// Streams go to `dir`; at most `held_limit` unverified bytes are held.
    /// A `dir` that group or others may enter is reported once, as a
    /// warning (the streams themselves are 0600, their names are not).
    pub fn new(dir: PathBuf, held_limit: u64) -> FileSinkFactory {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(&dir) {
                let mode = meta.permissions().mode() & 0o7777;
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        dir = %dir.display(),
                        mode = %format_args!("{mode:04o}"),
                        "the stream directory is open to group or others; run: chmod 700 {}",
                        dir.display()
                    );
                }
            }
        }
        FileSinkFactory { dir, held_limit }
    }
}

/// Creates `path` for writing, owner-only (0600), failing if it exists.
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
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
        let zfs_only = fjord_proto::message::offer_flags::FORCE_ROLLBACK
            | fjord_proto::message::offer_flags::RESUME_TOKEN;
        if offer.flags & zfs_only != 0 {
            return Err(SinkError::refused(
                RefuseCode::Other,
                format!(
                    "the file sink stores plain streams only; offer flags {:#x} (rollback or resume-token) need a ZFS target",
                    offer.flags
                ),
            ));
        }
        let name = stream_file_name(offer)
            .map_err(|why| SinkError::refused(RefuseCode::BadDataset, why))?;
        let target = self.dir.join(&name);
        if target.exists() {
            return Err(SinkError::refused(
                RefuseCode::Exists,
                format!(
                    "{} already exists; move it away to receive this stream again",
                    target.display()
                ),
            ));
        }
        let temp = self.dir.join(format!(".{name}.partial"));
        let file = create_private_file(&temp).map_err(|source| {
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
            verifier: Verifier::with_options(
                self.held_limit,
                VerifierOptions {
                    accept_compound: true,
                },
            ),
            next: 0,
            committed: false,
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
    /// Renamed into place: the partial file no longer exists.
    committed: bool,
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
            return Err(SinkError::Internal("the file sink is closed".into()));
        };
        let temp = &self.temp;
        self.verifier
            .push(data, &mut |b| file.write_all(b).map_err(io_err(temp)))
    }

    fn finish(&mut self, length: u64) -> Result<SinkOutcome, SinkError> {
        let Some(mut file) = self.file.take() else {
            return Err(SinkError::Internal("the file sink is closed".into()));
        };
        let temp = &self.temp;
        // A length mismatch fails here, before the END is written and
        // long before the rename: the partial file is discarded.
        let guid = self
            .verifier
            .finish(length, &mut |b| file.write_all(b).map_err(io_err(temp)))?;
        let file = file
            .into_inner()
            .map_err(|e| io_err(temp)(e.into_error()))?;
        file.sync_all().map_err(io_err(temp))?;
        drop(file);
        if self.target.exists() {
            return Err(SinkError::refused(
                RefuseCode::Exists,
                format!(
                    "{} appeared while receiving; not overwriting it",
                    self.target.display()
                ),
            ));
        }
        std::fs::rename(&self.temp, &self.target).map_err(io_err(&self.target))?;
        self.committed = true;
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
        if self.committed {
            return;
        }
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
        // Also after a failed finish: the partial file must not stay.
        if !self.committed {
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

    const END_LEN: usize = fjord_stream::RECORD_SIZE;

    /// Feeds `s` in pieces of `step` bytes; returns what came out.
    fn push_all(v: &mut Verifier, s: &[u8], step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in s.chunks(step) {
            v.push(Bytes::copy_from_slice(c), &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            })
            .expect("a valid stream verifies");
            assert_eq!(&out[..], &s[..out.len()]);
        }
        out
    }

    fn finish_into(
        v: &mut Verifier,
        length: u64,
        out: &mut Vec<u8>,
    ) -> Result<Option<u64>, SinkError> {
        v.finish(length, &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
    }

    /// Two substreams in a `zfs send -R` package.
    fn package() -> Vec<u8> {
        use fjord_stream::builder::PackageBuilder;
        use fjord_stream::nvlist::{NvList, Value};
        let hdr = NvList::new()
            .with("tosnap", Value::String("a".into()))
            .with("fss", Value::List(NvList::new()));
        let mut p = PackageBuilder::new(ByteOrder::Little, "tank/fs@a", &hdr);
        p.substream(&stream());
        let mut child = StreamBuilder::full(ByteOrder::Little, "tank/fs/child@a", 0x78);
        child.object(2, 4096, &[0u8; 64]);
        child.write(2, 0, &[9u8; 4096]);
        p.substream(&child.finish());
        p.finish()
    }

    #[test]
    fn verifier_releases_only_verified_bytes_and_the_end_only_at_finish() {
        let s = stream();
        for step in [1usize, 100, 312, 5000, s.len()] {
            let mut v = Verifier::new(1 << 30);
            let mut out = push_all(&mut v, &s, step);
            assert!(v.end_held(), "step {step}");
            assert_eq!(out.len(), s.len() - END_LEN, "step {step}: the END is held");
            assert_eq!(v.released(), (s.len() - END_LEN) as u64);
            let guid = finish_into(&mut v, s.len() as u64, &mut out).expect("finish");
            assert_eq!(out, s);
            assert_eq!(guid, Some(0x77));
            assert_eq!(v.released(), s.len() as u64);
        }
    }

    #[test]
    fn the_verifier_tells_a_volume_from_a_file_system_past_a_package_header() {
        let mut volume = StreamBuilder::volume(ByteOrder::Big, "tank/vm@a", 0x79);
        volume.object(1, 8192, &[]);
        let volume = volume.finish();
        for (s, want) in [(stream(), 2), (package(), 2), (volume, 3)] {
            let mut v = Verifier::with_options(
                1 << 30,
                VerifierOptions {
                    accept_compound: true,
                },
            );
            assert_eq!(v.objset_type(), None);
            push_all(&mut v, &s, 97);
            assert_eq!(v.objset_type(), Some(want));
        }
    }

    #[test]
    fn a_wrong_length_fails_and_the_end_is_never_released() {
        let s = stream();
        let len = s.len() as u64;
        for wrong in [0, len - 1, len - END_LEN as u64, len + 1, len + 4096] {
            let mut v = Verifier::new(1 << 30);
            let mut out = push_all(&mut v, &s, 4096);
            match finish_into(&mut v, wrong, &mut out) {
                Err(SinkError::LengthMismatch {
                    verified,
                    announced,
                }) => {
                    assert_eq!((verified, announced), (len, wrong));
                }
                r => panic!("{wrong}: {r:?}"),
            }
            assert_eq!(out, &s[..s.len() - END_LEN], "{wrong}: no END byte out");
            // Closed for good: the right length afterwards changes nothing.
            assert!(matches!(
                finish_into(&mut v, len, &mut out),
                Err(SinkError::VerifierClosed)
            ));
            assert!(matches!(
                v.push(Bytes::from_static(b"x"), &mut |_| Ok(())),
                Err(SinkError::VerifierClosed)
            ));
            assert_eq!(out.len(), s.len() - END_LEN);
        }
    }

    #[test]
    fn a_stream_cut_before_its_end_never_finishes() {
        let s = stream();
        let cut = &s[..s.len() - 100];
        let mut v = Verifier::new(1 << 30);
        let mut out = push_all(&mut v, cut, 1000);
        assert!(!v.end_held());
        let r = finish_into(&mut v, cut.len() as u64, &mut out);
        assert!(matches!(r, Err(SinkError::Stream(_))), "{r:?}");
        assert!(out.len() <= s.len() - END_LEN);
    }

    #[test]
    fn compound_streams_are_refused_before_a_byte_is_released() {
        let p = package();
        for step in [1usize, 300, p.len()] {
            let mut v = Verifier::new(1 << 30);
            let mut out = Vec::new();
            let mut err = None;
            for c in p.chunks(step) {
                if let Err(e) = v.push(Bytes::copy_from_slice(c), &mut |b| {
                    out.extend_from_slice(b);
                    Ok(())
                }) {
                    err = Some(e);
                    break;
                }
            }
            let err = err.expect("a package is refused");
            assert!(matches!(err, SinkError::Compound), "{err:?}");
            assert_eq!(
                err.to_string(),
                "compound (zfs send -R) streams are not accepted by this receiver"
            );
            assert!(out.is_empty(), "step {step}: {} bytes out", out.len());
            assert!(matches!(
                finish_into(&mut v, p.len() as u64, &mut out),
                Err(SinkError::VerifierClosed)
            ));
        }
    }

    #[test]
    fn an_accepted_compound_stream_holds_its_last_ends_until_finish() {
        let p = package();
        let mut v = Verifier::with_options(
            1 << 30,
            VerifierOptions {
                accept_compound: true,
            },
        );
        let mut out = push_all(&mut v, &p, 777);
        assert!(v.end_held());
        // The last substream's END and the package's final END wait.
        assert_eq!(out.len(), p.len() - 2 * END_LEN);
        let r = finish_into(&mut v, p.len() as u64 + 1, &mut out);
        assert!(matches!(r, Err(SinkError::LengthMismatch { .. })), "{r:?}");
        // The last substream's END and the package's final END wait.
        assert_eq!(out.len(), p.len() - 2 * END_LEN);

        let mut v = Verifier::with_options(
            1 << 30,
            VerifierOptions {
                accept_compound: true,
            },
        );
        let mut out = push_all(&mut v, &p, 777);
        let guid = finish_into(&mut v, p.len() as u64, &mut out).expect("finish");
        assert_eq!(out, p);
        assert_eq!(guid, Some(0x78), "the last BEGIN's toguid");
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

    /// What the sender reads when opening a sink fails with `e`: the
    /// refusal goes over the wire and is decoded on the sending side.
    fn sender_sees(e: &SinkError) -> (RefuseCode, String) {
        let (m, _) = *fjord_proto::receiver::refuse(e.refuse_code(), e.to_string());
        match fjord_proto::message::Message::decode(m.to_bytes().slice(4..)) {
            Ok(fjord_proto::message::Message::Refuse { code, reason }) => (
                code,
                fjord_proto::SessionError::Refused {
                    code,
                    reason: reason.clone(),
                }
                .to_string(),
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_kind_of_sink_error_reaches_the_sender_as_its_own_refusal() {
        let policy = SinkError::refused(
            RefuseCode::Policy,
            "refused by the DR node's policy: client oslo may not roll backup/oslo/fs back",
        );
        assert_eq!(
            sender_sees(&policy),
            (
                RefuseCode::Policy,
                "refused by the receiver (DR policy): refused by the DR node's policy: client oslo may not roll backup/oslo/fs back".into()
            )
        );
        let name = SinkError::refused(RefuseCode::BadDataset, "client oslo: tank/x is outside");
        assert_eq!(sender_sees(&name).0, RefuseCode::BadDataset);
        let exists = SinkError::refused(RefuseCode::Exists, "/srv/x@a.zsend already exists");
        assert_eq!(sender_sees(&exists).0, RefuseCode::Exists);

        let recv = SinkError::Downstream {
            what: "zfs recv into backup/oslo/fs@b".into(),
            status: Some(1),
            stderr: "cannot receive incremental stream: destination backup/oslo/fs has been modified\nsince most recent snapshot\n".into(),
        };
        assert_eq!(
            sender_sees(&recv),
            (
                RefuseCode::SinkFailed,
                "refused by the receiver (receiver's storage failed): zfs recv into backup/oslo/fs@b exited 1: cannot receive incremental stream: destination backup/oslo/fs has been modified\nsince most recent snapshot".into()
            )
        );
        assert_eq!(recv.report_status(), 1);
        let killed = SinkError::Downstream {
            what: "zfs recv into backup/oslo/fs@b".into(),
            status: Some(137),
            stderr: String::new(),
        };
        assert_eq!(killed.report_status(), 137);
        let missing = SinkError::Downstream {
            what: "zfs recv into backup/oslo/fs@b".into(),
            status: None,
            stderr: "cannot run /sbin/zfs: not found".into(),
        };
        assert_eq!(
            missing.to_string(),
            "zfs recv into backup/oslo/fs@b failed: cannot run /sbin/zfs: not found"
        );
        assert_eq!(missing.report_status(), 1);

        let thread = SinkError::Internal("cannot start the sink thread: out of memory".into());
        assert_eq!(
            sender_sees(&thread),
            (
                RefuseCode::Other,
                "refused by the receiver (other): internal error in the receiver: cannot start the sink thread: out of memory".into()
            )
        );
        let busy = SinkError::Busy("a stream into backup/oslo/fs is already being received".into());
        assert_eq!(sender_sees(&busy).0, RefuseCode::Busy);
        let io = SinkError::Io {
            path: "/srv/x".into(),
            source: std::io::Error::other("no space left on device"),
        };
        assert_eq!(sender_sees(&io).0, RefuseCode::SinkFailed);
        assert_eq!(io.report_status(), 1);
    }

    #[test]
    fn a_write_out_of_order_is_an_internal_error() {
        let mut next = 10;
        match advance_contiguous(&mut next, 12, 5) {
            Err(SinkError::Internal(why)) => {
                assert_eq!(why, "write at stream offset 12, expected 10")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(next, 10);
        advance_contiguous(&mut next, 10, 5).expect("contiguous");
        assert_eq!(next, 15);
    }

    #[test]
    fn the_file_sink_refuses_by_name_by_existing_file_and_by_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let factory = FileSinkFactory::new(dir.path().to_path_buf(), 1 << 20);
        let key = PublicKey([1; 32]);
        let code = |r: Result<Box<dyn Sink>, SinkError>| match r {
            Err(e) => e.refuse_code(),
            Ok(_) => panic!("expected a refusal"),
        };
        assert_eq!(
            code(factory.open(&offer("../etc"), &key)),
            RefuseCode::BadDataset
        );
        std::fs::write(dir.path().join("backup_fs@a.zsend"), b"old").expect("write");
        assert_eq!(
            code(factory.open(&offer("backup/fs"), &key)),
            RefuseCode::Exists
        );
        let mut forced = offer("backup/other");
        forced.flags = fjord_proto::message::offer_flags::FORCE_ROLLBACK;
        assert_eq!(code(factory.open(&forced, &key)), RefuseCode::Other);
    }

    #[test]
    fn file_names_refuse_path_tricks() {
        let mut o = Offer {
            session: fjord_proto::SessionId(1),
            resuming: false,
            dataset: "backup/fs".into(),
            from: None,
            to: fjord_proto::message::Snapshot {
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

    fn offer(dataset: &str) -> Offer {
        Offer {
            session: fjord_proto::SessionId(1),
            resuming: false,
            dataset: dataset.into(),
            from: None,
            to: fjord_proto::message::Snapshot {
                name: "tank/fs@a".into(),
                guid: 0x77,
            },
            flags: 0,
            size_estimate: None,
        }
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn the_file_sink_never_renames_a_partial_whose_length_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let factory = FileSinkFactory::new(dir.path().to_path_buf(), 1 << 20);
        let s = stream();
        let target = dir.path().join("backup_fs@a.zsend");
        let partial = dir.path().join(".backup_fs@a.zsend.partial");
        let mut sink = factory
            .open(&offer("backup/fs"), &PublicKey([1; 32]))
            .expect("open");
        #[cfg(unix)]
        assert_eq!(mode(&partial), 0o600);
        let mut at = 0u64;
        for c in s.chunks(1000) {
            sink.write(at, Bytes::copy_from_slice(c)).expect("write");
            at += c.len() as u64;
        }
        let err = sink.finish(at + 1).expect_err("a wrong length fails");
        assert!(matches!(err, SinkError::LengthMismatch { .. }), "{err}");
        assert!(!target.exists(), "never renamed");
        // What reached the partial file stops before the END.
        let written = std::fs::read(&partial).expect("partial still there");
        assert_eq!(written, &s[..s.len() - END_LEN]);
        drop(sink);
        assert!(!partial.exists(), "discarded when the session goes");
        assert!(!target.exists());
    }

    #[test]
    fn the_file_sink_stores_owner_only_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let factory = FileSinkFactory::new(dir.path().to_path_buf(), 1 << 20);
        let s = stream();
        let mut sink = factory
            .open(&offer("backup/fs"), &PublicKey([1; 32]))
            .expect("open");
        sink.write(0, Bytes::from(s.clone())).expect("write");
        let outcome = sink.finish(s.len() as u64).expect("finish");
        assert_eq!(outcome.snapshot_guid, Some(0x77));
        drop(sink);
        let target = dir.path().join("backup_fs@a.zsend");
        assert_eq!(std::fs::read(&target).expect("stored"), s);
        #[cfg(unix)]
        assert_eq!(mode(&target), 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("ls").count(),
            1,
            "no partial left"
        );
    }
}
