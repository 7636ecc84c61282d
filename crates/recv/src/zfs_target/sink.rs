//! One stream on its way into `zfs recv`: the sink, the DR node's
//! tripwire meter over it, and what runs after its commit.
//!
//! `zfs recv` starts at the first verified bytes, not when the offer is
//! accepted: its flags depend on what the stream creates (a file system or
//! a volume, its BEGIN record's `drr_type`), and `zfs recv` refuses `-o`
//! and `-x` of properties that do not apply to that type.

use super::{now, zfs_failure, ZfsTarget};
use bytes::Bytes;
use fjord_config::config::{Client, RecvConfig, RecvOptions, StreamKind};
use fjord_sink::{advance_contiguous, Sink, SinkError, SinkOutcome, Verifier};
use fjord_zfs::{RecvProcess, RecvResult, Zfs, ZfsError};
use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Verified bytes kept while no snapshot's BEGIN has been read (a
/// package's header comes first): far more than any header needs.
const EARLY_LIMIT: usize = 16 << 20;

/// Frees the dataset for the next receive when the sink goes away.
pub(super) struct ReceivingGuard {
    pub(super) set: Arc<Mutex<HashSet<String>>>,
    pub(super) dataset: String,
}

impl Drop for ReceivingGuard {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.dataset);
    }
}

/// One stream on its way into `zfs recv`: only verified bytes are written
/// to its standard input.
pub(super) struct ZfsSink {
    child: Option<RecvProcess>,
    /// How to start `zfs recv` once the stream's type is known; `None`
    /// once started.
    pending: Option<PendingRecv>,
    verifier: Verifier,
    next: u64,
    target: String,
    /// Whether verified bytes have reached `zfs recv` yet (logged once).
    flowing: bool,
    /// What runs once `zfs recv` committed: holds and DR retention.
    commit: Option<AfterCommit>,
    /// The DR node's tripwire meter, when it judges this stream.
    meter: Option<TripwireMeter>,
    /// Frees the dataset for the next receive: dropped with the sink, or
    /// once `zfs recv` exited when the sink is dropped while it runs.
    guard: Option<ReceivingGuard>,
}

/// The DR node's own tripwire over one stream: measures the verified bytes
/// given to `zfs recv`; once the snapshot is committed, judges them.
pub(super) struct TripwireMeter {
    meter: fjord_tripwire::Meter,
    state_dir: std::path::PathBuf,
    config: fjord_config::tripwire::TripwireConfig,
}

impl TripwireMeter {
    /// A meter when the DR node keeps a tripwire (`state_dir`, enabled) and
    /// the stream is `judgeable`: an incremental from its start (a full
    /// stream has no history to compare with; a resumed one starts
    /// mid-record).
    pub(super) fn for_offer(config: &RecvConfig, judgeable: bool) -> Option<TripwireMeter> {
        let state_dir = config.state_dir.clone()?;
        (config.tripwire.enabled && judgeable).then(|| TripwireMeter {
            meter: fjord_tripwire::Meter::new(None),
            state_dir,
            config: config.tripwire.clone(),
        })
    }

    /// Judges the committed `target` (`dataset@snapshot`) and records it;
    /// a failure to keep the page is logged, never the receive's failure.
    fn judge(self, target: &str) {
        let Some(figures) = self.meter.figures() else {
            return;
        };
        let (dataset, snapshot) = target.split_once('@').unwrap_or((target, ""));
        match crate::tripwire::record(
            &self.state_dir,
            &self.config,
            dataset,
            figures,
            now(),
            snapshot,
        ) {
            Ok((sample, j)) if j.verdict == fjord_tripwire::Verdict::Tripped => {
                tracing::error!(dataset, snapshot, incompressible = ?sample.incompressible, reason = %j.reason, "ransomware tripwire: the DR node's alarm is raised (fjord-recv status; fjord-recv tripwire ack after checking)");
            }
            Ok((sample, j)) => {
                tracing::info!(dataset, snapshot, incompressible = ?sample.incompressible, verdict = ?j.verdict, "tripwire measured the receive");
            }
            Err(e) => {
                tracing::warn!(
                    dataset,
                    snapshot,
                    "the DR node's tripwire page could not be kept: {e:#}"
                );
            }
        }
    }
}

/// The DR node's work after a committed receive.
pub(super) struct AfterCommit {
    pub(super) handle: tokio::runtime::Handle,
    pub(super) target: Arc<ZfsTarget>,
    pub(super) client: Client,
    pub(super) dataset: String,
    /// The sender's [`offer_flags::INHERIT_KEY`](fjord_proto::message::offer_flags::INHERIT_KEY).
    pub(super) inherit_key: bool,
}

/// A `zfs recv` not started yet, and the verified bytes it will read first.
pub(super) struct PendingRecv {
    pub(super) zfs: Zfs,
    pub(super) options: RecvOptions,
    pub(super) dataset: String,
    pub(super) force: bool,
    pub(super) early: Vec<u8>,
}

/// What the sender reads before a `zfs recv` failure: `zfs recv into
/// backup/fs@b`.
fn recv_what(target: &str) -> String {
    format!("zfs recv into {target}")
}

/// How `zfs recv` ended, as a downstream failure (`None` unless it failed).
fn recv_failure(target: &str, r: &RecvResult) -> Option<SinkError> {
    (r.status != 0).then(|| SinkError::Downstream {
        what: recv_what(target),
        // -1: neither an exit code nor a signal is known.
        status: (r.status >= 0).then_some(r.status),
        stderr: r.stderr.clone(),
    })
}

/// Waiting for `zfs recv` failed: no status, the reason instead.
fn recv_wait_failure(target: &str, e: &ZfsError) -> SinkError {
    SinkError::Downstream {
        what: recv_what(target),
        status: None,
        stderr: e.to_string(),
    }
}

impl ZfsSink {
    /// A sink into `target` (`dataset@snapshot`) whose `zfs recv` starts
    /// with the first verified bytes.
    pub(super) fn new(
        target: String,
        pending: PendingRecv,
        verifier: Verifier,
        meter: Option<TripwireMeter>,
        commit: AfterCommit,
        guard: ReceivingGuard,
    ) -> ZfsSink {
        ZfsSink {
            child: None,
            pending: Some(pending),
            verifier,
            next: 0,
            target,
            flowing: false,
            meter,
            commit: Some(commit),
            guard: Some(guard),
        }
    }

    /// Starts `zfs recv` once the stream's first snapshot BEGIN has been
    /// read, and gives it the verified bytes kept until then plus `more`.
    /// Before that BEGIN, keeps `more` (bounded).
    fn start_when_typed(&mut self, more: &[u8]) -> Result<(), SinkError> {
        let Some(pending) = self.pending.as_mut() else {
            return Ok(());
        };
        pending.early.extend_from_slice(more);
        let Some(objset_type) = self.verifier.objset_type() else {
            if pending.early.len() > EARLY_LIMIT {
                return Err(SinkError::Internal(format!(
                    "{} verified bytes into {} and still no snapshot BEGIN",
                    pending.early.len(),
                    self.target
                )));
            }
            return Ok(());
        };
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let kind = StreamKind::from_objset_type(objset_type);
        let spec = pending
            .options
            .spec_for(&pending.dataset, pending.force, kind);
        let mut child = pending
            .zfs
            .spawn_recv(&spec)
            .map_err(|e| match zfs_failure(e) {
                SinkError::Downstream { status, stderr, .. } => SinkError::Downstream {
                    what: recv_what(&self.target),
                    status,
                    stderr,
                },
                other => other,
            })?;
        tracing::info!(target = %self.target, ?kind, force = pending.force, "zfs recv started");
        let written = child.write_all(&pending.early);
        self.child = Some(child);
        written.map_err(|e| self.child_failed(e))
    }

    /// `zfs recv` stopped reading: collect why, for the sender's report.
    fn child_failed(&mut self, write_error: std::io::Error) -> SinkError {
        match self.child.take() {
            Some(child) => match child.finish() {
                Ok(r) => recv_failure(&self.target, &r).unwrap_or_else(|| {
                    // It exited 0 without reading everything: still a failure.
                    SinkError::Downstream {
                        what: recv_what(&self.target),
                        status: Some(0),
                        stderr: format!("stopped reading its input ({write_error})"),
                    }
                }),
                Err(e) => recv_wait_failure(&self.target, &e),
            },
            None => SinkError::Internal(format!(
                "zfs recv into {} was already collected: {write_error}",
                self.target
            )),
        }
    }
}

impl Sink for ZfsSink {
    fn write(&mut self, start: u64, data: Bytes) -> Result<(), SinkError> {
        advance_contiguous(&mut self.next, start, data.len())?;
        if self.child.is_none() && self.pending.is_none() {
            return Err(SinkError::Internal(format!(
                "zfs recv into {} has already ended",
                self.target
            )));
        }
        let mut failed = None;
        // verified bytes released before `zfs recv` started
        let mut early = Vec::new();
        let mut meter = self.meter.as_mut().map(|m| &mut m.meter);
        let child = &mut self.child;
        let r = self.verifier.push(data, &mut |b| {
            if let Some(m) = meter.as_mut() {
                m.feed(b);
            }
            let Some(child) = child.as_mut() else {
                early.extend_from_slice(b);
                return Ok(());
            };
            child.write_all(b).map_err(|e| {
                // Replaced by `child_failed` with zfs recv's own words.
                let msg = e.to_string();
                failed = Some(e);
                SinkError::Internal(msg)
            })
        });
        let r = match r {
            Ok(()) if self.pending.is_some() => self.start_when_typed(&early),
            r => r,
        };
        match (r, failed) {
            (Err(_), Some(e)) => Err(self.child_failed(e)),
            (r, _) => {
                if r.is_ok() && !self.flowing && self.verifier.released() > 0 {
                    self.flowing = true;
                    tracing::info!(target = %self.target, "verified bytes flowing into zfs recv");
                }
                r
            }
        }
    }

    fn finish(&mut self, length: u64) -> Result<SinkOutcome, SinkError> {
        if self.pending.is_some() {
            // a stream short enough that nothing was released before its
            // end: its BEGIN has been read by now, if it has one
            self.start_when_typed(&[])?;
        }
        let Some(mut child) = self.child.take() else {
            if self.pending.take().is_some() {
                // no snapshot BEGIN in the whole stream: the verifier says
                // what is wrong with it; nothing reached zfs recv
                let why = self.verifier.finish(length, &mut |_| Ok(())).err();
                return Err(why.unwrap_or_else(|| {
                    SinkError::Internal(format!(
                        "the stream into {} names no snapshot",
                        self.target
                    ))
                }));
            }
            return Err(SinkError::Internal(format!(
                "zfs recv into {} has already ended",
                self.target
            )));
        };
        let mut failed = None;
        // The verifier releases the stream's END (which makes zfs recv
        // commit the snapshot) only if the whole stream verified and is
        // exactly the `length` the sender announced.
        let mut meter = self.meter.as_mut().map(|m| &mut m.meter);
        let guid = self.verifier.finish(length, &mut |b| {
            if let Some(m) = meter.as_mut() {
                m.feed(b);
            }
            child.write_all(b).map_err(|e| {
                // Replaced by `child_failed` with zfs recv's own words.
                let msg = e.to_string();
                failed = Some(e);
                SinkError::Internal(msg)
            })
        });
        let guid = match (guid, failed) {
            (Ok(g), _) => g,
            (Err(e), None) => {
                // The stream is bad or its length is wrong. zfs recv has
                // only verified records and no END for the snapshot, so it
                // cannot commit it: closing its input mid-stream leaves a
                // resumable partial receive (`-s`).
                match child.finish() {
                    Ok(r) => {
                        tracing::warn!(target = %self.target, error = %e, status = r.status, "zfs recv ended without the stream's END")
                    }
                    Err(z) => {
                        tracing::warn!(target = %self.target, error = %e, wait_error = %z, "zfs recv ended without the stream's END")
                    }
                }
                return Err(e);
            }
            (Err(e), Some(_)) => {
                self.child = Some(child);
                return Err(self.child_failed(std::io::Error::other(e.to_string())));
            }
        };
        let r = child
            .finish()
            .map_err(|e| recv_wait_failure(&self.target, &e))?;
        if let Some(e) = recv_failure(&self.target, &r) {
            return Err(e);
        }
        if let Some(meter) = self.meter.take() {
            meter.judge(&self.target);
        }
        // The sink runs on its own thread, outside the runtime: waiting
        // for the short zfs commands here blocks no async worker.
        let after = match self.commit.take() {
            Some(c) => c.handle.block_on(async {
                let mut after = String::new();
                if c.inherit_key {
                    after = c.target.inherit_key(&c.client, &c.dataset).await;
                }
                after + &c.target.after_receive(&c.client, &c.dataset).await
            }),
            None => String::new(),
        };
        Ok(SinkOutcome {
            status: 0,
            snapshot_guid: guid,
            message: format!("received {} ({length} stream bytes){after}", self.target),
        })
    }

    fn abort(&mut self, why: &str) {
        if let Some(child) = self.child.take() {
            end_recv(child, &self.target, why);
        }
    }
}

impl Drop for ZfsSink {
    /// Never waits: a `zfs recv` still running (the session was dropped,
    /// not aborted) is ended and collected on a thread of its own, which
    /// frees the dataset only once it has exited, so that the next receive
    /// into it never finds it busy.
    fn drop(&mut self) {
        let Some(child) = self.child.take() else {
            return;
        };
        let guard = self.guard.take();
        let target = std::mem::take(&mut self.target);
        let reaper = std::thread::Builder::new()
            .name("zfs-recv-reaper".into())
            .spawn(move || {
                end_recv(child, &target, "receiver dropped the session");
                drop(guard);
            });
        if let Err(e) = reaper {
            tracing::warn!(error = %e, "no thread to collect an abandoned zfs recv; it exits once its input is closed");
        }
    }
}

/// Closes `zfs recv`'s input mid-stream and waits for it: `zfs recv -s`
/// keeps what it received (verified records only) as a resumable partial
/// receive.
fn end_recv(child: RecvProcess, target: &str, why: &str) {
    match child.finish() {
        Ok(r) => {
            tracing::warn!(target, why, status = r.status, stderr = %r.stderr.trim(), "zfs recv stopped")
        }
        Err(e) => tracing::warn!(target, why, error = %e, "zfs recv stopped"),
    }
}
