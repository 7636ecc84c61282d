//! The ransomware tripwire: per push and dataset, how much of what the
//! stream writes is incompressible and how much rewrites existing files,
//! against that dataset's own history.
//!
//! - [`meter`] and [`judge`] (from `fjord-tripwire`, which the DR node
//!   shares): the two shares, measured from the send stream on its way to
//!   the DR node, and the decision (pure).
//! - [`book`]: the history and the alarm, in `state_dir/<job>.tripwire.json`;
//!   the acknowledgement; the metrics.

pub mod book;
pub use fjord_tripwire::{judge, meter};

pub use book::{Alarm, Book, TripwireReport};
pub use judge::{Judgement, Sample, Verdict};
pub use meter::{MeteredStream, StreamFigures};

use crate::job::StateFiles;
use crate::lock::{JobLock, LockError};
use crate::status::StatusError;
use fjord_config::tripwire::TripwireConfig;
use thiserror::Error;

/// Judges one dataset's push: `figures` are its incremental streams'
/// (`None`: nothing measured, e.g. a full or resumed send).
pub fn assess(
    config: &TripwireConfig,
    book: &Book,
    source: &str,
    figures: Option<StreamFigures>,
    time: i64,
    snapshot: &str,
) -> Option<TripwireReport> {
    let figures = figures?;
    let sample = Sample {
        time,
        snapshot: snapshot.into(),
        write_bytes: figures.write_bytes,
        incompressible: figures.incompressible_share(),
        rewritten: figures.rewritten_share(),
    };
    let judgement = judge(config, book.history(source), &sample);
    let waiting = judgement.verdict == Verdict::Tripped || book.alarm(source).is_some();
    Some(TripwireReport {
        sample,
        judgement,
        pruning_paused: config.pause_pruning && waiting,
    })
}

/// Whether source-side pruning of `source` waits for an acknowledgement.
pub fn pruning_paused(config: &TripwireConfig, book: &Book, source: &str) -> bool {
    config.pause_pruning && book.alarm(source).is_some()
}

/// Why an acknowledgement failed.
#[derive(Debug, Error)]
pub enum AckError {
    /// The job's lock could not be taken (a push is running, or state_dir
    /// is unusable).
    #[error("{0}")]
    Lock(#[from] LockError),
    /// The tripwire file could not be read or written.
    #[error("{0}")]
    State(#[from] StatusError),
    /// The metrics file could not be rewritten.
    #[error("cannot rewrite the metrics file: {0}")]
    Metrics(String),
}

/// `fjord-send tripwire ack`: clears the alarm of `dataset` (or of every
/// dataset) of `job`, under the job's lock, and rewrites the metrics.
/// Returns the datasets whose alarm it cleared.
pub fn acknowledge(
    state: &StateFiles,
    job: &str,
    dataset: Option<&str>,
    now: i64,
) -> Result<Vec<String>, AckError> {
    let _lock = JobLock::acquire(&state.state_dir, job)?;
    let mut book = Book::load(&state.state_dir, job)?;
    let cleared = book.acknowledge(dataset);
    if !cleared.is_empty() {
        book.save(&state.state_dir)?;
        if let Some(path) = &state.metrics_file {
            crate::job::write_metrics(&state.state_dir, path, now)
                .map_err(|e| AckError::Metrics(e.to_string()))?;
        }
    }
    Ok(cleared)
}
