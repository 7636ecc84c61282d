//! The [`FileSink`]: each stream stored as a file in a directory, renamed
//! into place only once verified.

use crate::{
    advance_contiguous, Sink, SinkError, SinkFactory, SinkOutcome, Verifier, VerifierOptions,
};
use bytes::Bytes;
use fjord_proto::message::{Offer, RefuseCode};
use fjord_proto::PublicKey;
use std::io::Write;
use std::path::{Path, PathBuf};

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
