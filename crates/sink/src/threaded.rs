//! A sink on a thread of its own, so that the receiver's network loop
//! (QUIC, decryption, message framing) runs while the previous frames are
//! decoded, verified and written: the two overlap instead of alternating.
//!
//! Frames are acknowledged when queued, a little before they are written.
//! That is safe: acks only let the sender drop its replay copy, and a
//! queued frame is lost only together with the session (receiver crash),
//! which is then refused as unknown and sent again from the start or from
//! ZFS's resume token.

use crate::{Sink, SinkError, SinkOutcome};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Frames queued ahead of the writer (about 1 MiB each): bounds memory.
const QUEUE_FRAMES: usize = 16;

enum Command {
    Write(u64, Bytes),
    Finish(u64, oneshot::Sender<Result<SinkOutcome, SinkError>>),
    Abort(String),
}

/// Runs another sink on its own thread (see the module docs). Its
/// methods are async: a full queue or a finish waits without blocking a
/// runtime worker. Dropping it closes the queue and returns at once; the
/// thread drops the inner sink (discarding what it holds) by itself.
pub struct ThreadedSink {
    tx: Option<mpsc::Sender<Command>>,
    failed: Arc<Mutex<Failure>>,
    /// Set by an abort: queued writes are skipped.
    aborting: Arc<AtomicBool>,
    /// Resolves when the thread has let go of the inner sink.
    released: Option<oneshot::Receiver<()>>,
}

/// The inner sink's first error: handed over as it is once, then named.
#[derive(Default)]
struct Failure {
    /// Not yet handed to the session.
    error: Option<SinkError>,
    /// Its message, once it failed.
    message: Option<String>,
}

impl Failure {
    fn set(&mut self, e: SinkError) {
        if self.message.is_none() {
            self.message = Some(e.to_string());
            self.error = Some(e);
        }
    }

    /// The error, typed the first time; afterwards an internal error
    /// naming it (the session already saw the real one).
    fn take(&mut self) -> Option<SinkError> {
        let message = self.message.as_ref()?;
        Some(
            self.error.take().unwrap_or_else(|| {
                SinkError::Internal(format!("the sink failed earlier: {message}"))
            }),
        )
    }
}

impl ThreadedSink {
    /// Starts the thread that owns `inner`.
    pub fn spawn(inner: Box<dyn Sink>) -> std::io::Result<ThreadedSink> {
        let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
        let failed = Arc::new(Mutex::new(Failure::default()));
        let aborting = Arc::new(AtomicBool::new(false));
        let (released_tx, released) = oneshot::channel();
        let (flag, stop) = (failed.clone(), aborting.clone());
        std::thread::Builder::new()
            .name("fjord-sink".into())
            .spawn(move || {
                run(inner, rx, flag, stop);
                let _ = released_tx.send(());
            })?;
        Ok(ThreadedSink {
            tx: Some(tx),
            failed,
            aborting,
            released: Some(released),
        })
    }

    fn failure(&self) -> Option<SinkError> {
        lock(&self.failed).take()
    }

    fn gone(&self) -> SinkError {
        self.failure()
            .unwrap_or_else(|| SinkError::Internal("the sink thread ended unexpectedly".into()))
    }

    /// Queues `data` at stream offset `start` (waiting while the queue is
    /// full). An earlier failure of the inner sink is returned instead.
    pub async fn write(&mut self, start: u64, data: Bytes) -> Result<(), SinkError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let Some(tx) = &self.tx else {
            return Err(self.gone());
        };
        if tx.send(Command::Write(start, data)).await.is_err() {
            return Err(self.gone());
        }
        Ok(())
    }

    /// Finishes the inner sink once everything queued was written.
    pub async fn finish(&mut self, length: u64) -> Result<SinkOutcome, SinkError> {
        let Some(tx) = &self.tx else {
            return Err(self.gone());
        };
        let (reply_tx, reply_rx) = oneshot::channel();
        if tx.send(Command::Finish(length, reply_tx)).await.is_err() {
            return Err(self.gone());
        }
        match reply_rx.await {
            Ok(r) => r,
            Err(_) => Err(self.gone()),
        }
    }

    /// Aborts the inner sink (queued writes are skipped) and waits until
    /// the thread has let go of it: its target is free afterwards.
    pub async fn abort(&mut self, why: &str) {
        self.aborting.store(true, Ordering::Relaxed);
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Command::Abort(why.to_string())).await;
        }
        if let Some(released) = self.released.take() {
            let _ = released.await;
        }
    }
}

fn lock(failed: &Mutex<Failure>) -> std::sync::MutexGuard<'_, Failure> {
    failed.lock().unwrap_or_else(|p| p.into_inner())
}

fn run(
    mut inner: Box<dyn Sink>,
    mut rx: mpsc::Receiver<Command>,
    failed: Arc<Mutex<Failure>>,
    aborting: Arc<AtomicBool>,
) {
    let mut broken = false;
    while let Some(cmd) = rx.blocking_recv() {
        match cmd {
            Command::Write(start, data) => {
                if broken || aborting.load(Ordering::Relaxed) {
                    continue;
                }
                if let Err(e) = inner.write(start, data) {
                    lock(&failed).set(e);
                    broken = true;
                }
            }
            Command::Finish(length, reply) => {
                let earlier = lock(&failed).take();
                let r = match earlier {
                    Some(e) => Err(e),
                    None => inner.finish(length),
                };
                let _ = reply.send(r);
            }
            Command::Abort(why) => {
                inner.abort(&why);
                return;
            }
        }
    }
    // The session dropped the sink without finishing: `inner`'s own drop
    // discards what it holds.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Log {
        writes: Vec<(u64, usize)>,
        finished: Option<u64>,
        aborted: Option<String>,
    }

    struct Recording {
        log: Arc<Mutex<Log>>,
        fail_at: Option<u64>,
    }

    impl Sink for Recording {
        fn write(&mut self, start: u64, data: Bytes) -> Result<(), SinkError> {
            if Some(start) == self.fail_at {
                return Err(SinkError::Downstream {
                    what: "zfs recv into backup/fs@b".into(),
                    status: Some(1),
                    stderr: format!("disk full at {start}\n"),
                });
            }
            self.log.lock().unwrap().writes.push((start, data.len()));
            Ok(())
        }
        fn finish(&mut self, length: u64) -> Result<SinkOutcome, SinkError> {
            self.log.lock().unwrap().finished = Some(length);
            Ok(SinkOutcome {
                message: format!("stored {length}"),
                ..SinkOutcome::default()
            })
        }
        fn abort(&mut self, why: &str) {
            self.log.lock().unwrap().aborted = Some(why.into());
        }
    }

    fn sink(fail_at: Option<u64>) -> (ThreadedSink, Arc<Mutex<Log>>) {
        let log = Arc::new(Mutex::new(Log::default()));
        let inner = Recording {
            log: log.clone(),
            fail_at,
        };
        (ThreadedSink::spawn(Box::new(inner)).unwrap(), log)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_arrive_in_order_before_finish() {
        let (mut s, log) = sink(None);
        for i in 0..100u64 {
            s.write(i * 10, Bytes::from(vec![0u8; 10])).await.unwrap();
        }
        let out = s.finish(1000).await.unwrap();
        assert_eq!(out.message, "stored 1000");
        let log = log.lock().unwrap();
        assert_eq!(log.writes.len(), 100);
        assert!(log
            .writes
            .iter()
            .enumerate()
            .all(|(i, w)| w.0 == i as u64 * 10));
        assert_eq!(log.finished, Some(1000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_error_fails_later_writes_and_the_finish() {
        let (mut s, log) = sink(Some(30));
        let mut first_err = None;
        for i in 0..50u64 {
            if let Err(e) = s.write(i * 10, Bytes::from(vec![0u8; 10])).await {
                first_err = Some((i, e));
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let err = s
            .finish(500)
            .await
            .expect_err("finish after a failed write");
        assert!(err.to_string().contains("disk full at 30"), "{err}");
        match first_err {
            // The write saw the inner error as it is; the finish names it.
            Some((i, e)) => {
                assert!(i > 3, "{i}");
                assert!(
                    matches!(
                        &e,
                        SinkError::Downstream {
                            status: Some(1),
                            ..
                        }
                    ),
                    "{e:?}"
                );
                assert!(matches!(err, SinkError::Internal(_)), "{err:?}");
            }
            // The failure came after the last write: the finish has it.
            None => assert!(
                matches!(
                    err,
                    SinkError::Downstream {
                        status: Some(1),
                        ..
                    }
                ),
                "{err:?}"
            ),
        }
        assert_eq!(log.lock().unwrap().finished, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abort_reaches_the_inner_sink() {
        let (mut s, log) = sink(None);
        s.write(0, Bytes::from_static(b"abc")).await.unwrap();
        s.abort("grace expired").await;
        assert_eq!(
            log.lock().unwrap().aborted.as_deref(),
            Some("grace expired")
        );
        assert!(s.write(3, Bytes::from_static(b"d")).await.is_err());
    }

    /// An inner sink stuck in a write (a `zfs recv` that stopped reading):
    /// dropping the sink returns at once, and an abort waits for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drop_never_waits_and_abort_waits_for_the_inner_sink() {
        struct Slow(Arc<AtomicBool>);
        impl Sink for Slow {
            fn write(&mut self, _: u64, _: Bytes) -> Result<(), SinkError> {
                std::thread::sleep(std::time::Duration::from_millis(300));
                Ok(())
            }
            fn finish(&mut self, _: u64) -> Result<SinkOutcome, SinkError> {
                Ok(SinkOutcome::default())
            }
            fn abort(&mut self, _: &str) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let aborted = Arc::new(AtomicBool::new(false));
        let mut s = ThreadedSink::spawn(Box::new(Slow(aborted.clone()))).unwrap();
        s.write(0, Bytes::from_static(b"a")).await.unwrap();
        let t = std::time::Instant::now();
        drop(s);
        assert!(t.elapsed() < std::time::Duration::from_millis(100));

        let mut s = ThreadedSink::spawn(Box::new(Slow(aborted.clone()))).unwrap();
        s.write(0, Bytes::from_static(b"a")).await.unwrap();
        s.abort("replaced").await;
        assert!(
            aborted.load(Ordering::SeqCst),
            "the abort reached the inner sink before returning"
        );
    }
}
