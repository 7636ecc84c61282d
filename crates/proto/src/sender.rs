//! The sending end of a session, sans-IO.
//!
//! The driver tells it what happened (a connection came up or went down, a
//! message arrived, the source produced a frame, time passed) and asks it
//! what to transmit next. It owns the bounded replay buffer: every frame
//! not yet acknowledged by the receiver stays there, and the source may only
//! add a frame when it fits, so after a reconnection at most the replay
//! window is sent again.

use crate::message::{
    Answer, DataFrame, FrameEncoding, Message, Offer, RefuseCode, Report, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION, PUBLIC_KEY_LEN,
};
use crate::SessionError;
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Counters a sender session exposes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// Payload bytes of data frames transmitted, re-sent ones included.
    pub bytes_sent: u64,
    /// Payload bytes transmitted a second (or later) time after a reconnection.
    pub bytes_resent: u64,
    /// Connections established after the first.
    pub reconnects: u64,
    /// Highest offset the receiver acknowledged as delivered downstream.
    pub acked: u64,
    /// Largest number of payload bytes the replay buffer ever held.
    pub replay_peak: u64,
    /// Most bytes any single resumption had to send again (the distance
    /// from the receiver's resume offset to the highest offset sent).
    pub resend_max: u64,
}

/// Where the sender is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderPhase {
    /// No connection (before the first, or after a loss).
    Disconnected,
    /// Hello and offer sent; waiting for the answer.
    Offered,
    /// Sending frames.
    Streaming,
    /// End sent; waiting for the receiver's report.
    Ending,
    /// The receiver reported success.
    Done(Report),
    /// Failed for good.
    Failed,
}

/// The sending end of one transfer.
pub struct SenderSession {
    offer: Offer,
    key: [u8; PUBLIC_KEY_LEN],
    window: u64,
    grace: Duration,
    phase: SenderPhase,
    /// Unacknowledged frames, contiguous, oldest first.
    replay: VecDeque<DataFrame>,
    /// Payload bytes in `replay`.
    replay_bytes: u64,
    /// How many frames at the front of `replay` were sent on this connection.
    sent_here: usize,
    /// End offset of the last frame the source produced.
    produced: u64,
    /// Highest end offset ever transmitted.
    high_water: u64,
    input_end: Option<(u64, Bytes)>,
    answered_once: bool,
    connected_once: bool,
    /// Since when no answered connection exists (grace period start).
    down_since: Option<Instant>,
    version: u16,
    stats: SenderStats,
    outbox: VecDeque<Message>,
    /// The receiver's reason when its last answer was `Busy`.
    busy: Option<String>,
}

impl SenderSession {
    /// A session that will offer `offer`, identify as `key`, keep at most
    /// `window` payload bytes unacknowledged and give up after `grace`
    /// without a working connection (counted from `now`).
    pub fn new(
        offer: Offer,
        key: [u8; PUBLIC_KEY_LEN],
        window: u64,
        grace: Duration,
        now: Instant,
    ) -> SenderSession {
        SenderSession {
            offer,
            key,
            window,
            grace,
            phase: SenderPhase::Disconnected,
            replay: VecDeque::new(),
            replay_bytes: 0,
            sent_here: 0,
            produced: 0,
            high_water: 0,
            input_end: None,
            answered_once: false,
            connected_once: false,
            down_since: Some(now),
            version: PROTOCOL_VERSION,
            stats: SenderStats::default(),
            outbox: VecDeque::new(),
            busy: None,
        }
    }

    /// The counters.
    pub fn stats(&self) -> SenderStats {
        self.stats
    }

    /// The current phase.
    pub fn phase(&self) -> &SenderPhase {
        &self.phase
    }

    /// The offer (with the session id).
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// The protocol version agreed on.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// True once the receiver reported success.
    pub fn is_done(&self) -> bool {
        matches!(self.phase, SenderPhase::Done(_))
    }

    /// Offset the next produced frame must start at.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// True when the source has declared the end of input.
    pub fn input_finished(&self) -> bool {
        self.input_end.is_some()
    }

    /// True when a frame of `len` payload bytes fits in the replay window.
    pub fn can_push(&self, len: usize) -> bool {
        self.input_end.is_none() && self.replay_bytes + len as u64 <= self.window
    }

    /// Adds a frame from the source. It must start where the last ended and
    /// fit in the window ([`SenderSession::can_push`]).
    pub fn push(&mut self, frame: DataFrame) -> Result<(), SessionError> {
        if frame.start != self.produced || frame.end < frame.start {
            return Err(SessionError::Internal(format!(
                "frame {}..{} does not follow offset {}",
                frame.start, frame.end, self.produced
            )));
        }
        let len = frame.payload.len() as u64;
        if len > self.window {
            return Err(SessionError::Internal(format!(
                "frame of {len} bytes is larger than the replay window of {} bytes; raise the window",
                self.window
            )));
        }
        if !self.can_push(frame.payload.len()) {
            return Err(SessionError::Internal("replay window full".into()));
        }
        self.produced = frame.end;
        self.replay_bytes += len;
        self.stats.replay_peak = self.stats.replay_peak.max(self.replay_bytes);
        self.replay.push_back(frame);
        Ok(())
    }

    /// The source is exhausted: the stream is `produced()` bytes long.
    pub fn finish_input(&mut self, receipt: Bytes) {
        self.input_end = Some((self.produced, receipt));
    }

    /// A connection is up: the hello and offer are queued.
    pub fn connected(&mut self, now: Instant) -> Result<(), SessionError> {
        self.check_grace(now)?;
        match self.phase {
            SenderPhase::Disconnected => {}
            SenderPhase::Done(_) | SenderPhase::Failed => return Ok(()),
            _ => self.disconnected(now),
        }
        if self.connected_once {
            self.stats.reconnects += 1;
        }
        self.connected_once = true;
        self.outbox.clear();
        self.sent_here = 0;
        self.outbox.push_back(Message::Hello {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            sender_key: self.key,
        });
        let mut offer = self.offer.clone();
        offer.resuming = self.answered_once;
        self.outbox.push_back(Message::Offer(offer));
        self.phase = SenderPhase::Offered;
        Ok(())
    }

    /// The connection is gone; the grace period runs from the first loss
    /// until an answered connection exists again.
    pub fn disconnected(&mut self, now: Instant) {
        if matches!(
            self.phase,
            SenderPhase::Done(_) | SenderPhase::Failed | SenderPhase::Disconnected
        ) {
            return;
        }
        self.phase = SenderPhase::Disconnected;
        self.outbox.clear();
        self.sent_here = 0;
        if self.down_since.is_none() {
            self.down_since = Some(now);
        }
    }

    /// When [`SenderSession::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.down_since.map(|t| t + self.grace)
    }

    /// Fails the session if the grace period has run out.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        self.check_grace(now)
    }

    fn check_grace(&mut self, now: Instant) -> Result<(), SessionError> {
        if let Some(since) = self.down_since {
            if now.duration_since(since) >= self.grace {
                self.phase = SenderPhase::Failed;
                return Err(match &self.busy {
                    Some(reason) => SessionError::ReceiverBusy {
                        grace: self.grace,
                        reason: reason.clone(),
                    },
                    None => SessionError::GraceExpired {
                        grace: self.grace,
                        delivered: self.stats.acked,
                    },
                });
            }
        }
        Ok(())
    }

    /// The receiver answered `Busy` (to the offer, or by closing the
    /// connection with [`close_code::BUSY`](crate::close_code::BUSY)):
    /// the session is disconnected, not failed, and the driver retries
    /// with backoff. Should the grace period run out while the receiver
    /// is still busy, [`SenderSession::handle_timeout`] says so
    /// ([`SessionError::ReceiverBusy`]).
    pub fn receiver_busy(&mut self, reason: String, now: Instant) {
        if matches!(self.phase, SenderPhase::Done(_) | SenderPhase::Failed) {
            return;
        }
        self.busy = Some(reason);
        self.disconnected(now);
    }

    /// The receiver's reason, when its last answer was `Busy`.
    pub fn busy_reason(&self) -> Option<&str> {
        self.busy.as_deref()
    }

    fn fail<T>(&mut self, e: SessionError) -> Result<T, SessionError> {
        self.phase = SenderPhase::Failed;
        Err(e)
    }

    /// Handles a message from the receiver. A `Busy` refusal of the offer
    /// returns [`SessionError::Refused`] with [`RefuseCode::Busy`] but
    /// leaves the session retryable (see [`SenderSession::receiver_busy`]);
    /// every other error fails it.
    pub fn handle(&mut self, msg: Message, now: Instant) -> Result<(), SessionError> {
        match (&self.phase, msg) {
            (
                SenderPhase::Offered,
                Message::Refuse {
                    code: RefuseCode::Busy,
                    reason,
                },
            ) => {
                self.receiver_busy(reason.clone(), now);
                Err(SessionError::Refused {
                    code: RefuseCode::Busy,
                    reason,
                })
            }
            (SenderPhase::Offered, Message::Answer(answer)) => {
                let (version, offset) = match answer {
                    Answer::Accept { version } => (version, 0),
                    Answer::Resume { version, offset } => (version, offset),
                    Answer::ResumeToken { .. } => {
                        return self.fail(SessionError::Protocol(
                            "the receiver asked to resume from a ZFS resume token, which this sender cannot do yet"
                                .into(),
                        ))
                    }
                };
                if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
                    return self.fail(SessionError::Protocol(format!(
                        "the receiver chose protocol version {version}, which this sender does not speak"
                    )));
                }
                self.version = version;
                self.resume_at(offset)?;
                self.busy = None;
                self.answered_once = true;
                self.down_since = None;
                self.phase = SenderPhase::Streaming;
                Ok(())
            }
            (_, Message::Refuse { code, reason }) => {
                self.fail(SessionError::Refused { code, reason })
            }
            (_, Message::Abort { reason }) => self.fail(SessionError::PeerAborted(reason)),
            (SenderPhase::Streaming | SenderPhase::Ending, Message::Ack { offset }) => {
                if offset > self.high_water {
                    return self.fail(SessionError::Protocol(format!(
                        "the receiver acknowledged offset {offset}, beyond the {} bytes sent",
                        self.high_water
                    )));
                }
                self.release(offset);
                Ok(())
            }
            (SenderPhase::Ending, Message::Report(report)) => {
                self.release(report.delivered.min(self.high_water));
                if report.success {
                    self.phase = SenderPhase::Done(report);
                    Ok(())
                } else {
                    self.fail(SessionError::ReceiverFailed(report.message))
                }
            }
            // A resumed offer of a session the receiver had already stored
            // (its report was lost with the connection): the report again.
            // Only possible once everything, the end included, was sent.
            (SenderPhase::Offered, Message::Report(report)) if report.success => {
                match self.input_end {
                    Some((length, _)) if self.answered_once && report.delivered == length => {
                        self.release(length.min(self.high_water));
                        self.phase = SenderPhase::Done(report);
                        Ok(())
                    }
                    _ => self.fail(SessionError::Protocol(format!(
                        "the receiver reported the stream stored ({} bytes) before this sender finished sending it",
                        report.delivered
                    ))),
                }
            }
            (_, Message::Report(report)) if !report.success => {
                self.fail(SessionError::ReceiverFailed(report.message))
            }
            (phase, msg) => {
                let e = SessionError::Protocol(format!(
                    "unexpected {} message from the receiver while {phase:?}",
                    msg.kind()
                ));
                self.fail(e)
            }
        }
    }

    /// Drops acknowledged frames.
    fn release(&mut self, offset: u64) {
        if offset <= self.stats.acked {
            return;
        }
        self.stats.acked = offset;
        while let Some(f) = self.replay.front() {
            if f.end > offset {
                break;
            }
            self.replay_bytes -= f.payload.len() as u64;
            self.replay.pop_front();
            self.sent_here = self.sent_here.saturating_sub(1);
        }
    }

    /// Restarts transmission at `offset` (the receiver's delivered offset).
    fn resume_at(&mut self, offset: u64) -> Result<(), SessionError> {
        let base = self.replay.front().map_or(self.produced, |f| f.start);
        if offset < base || offset > self.produced {
            return self.fail(SessionError::ResumeOutsideWindow {
                offset,
                base,
                produced: self.produced,
            });
        }
        self.release(offset);
        self.sent_here = 0;
        self.stats.resend_max = self
            .stats
            .resend_max
            .max(self.high_water.saturating_sub(offset));
        // A frame that straddles the offset: raw frames are cut, others
        // must be resent whole (the receiver drops the part it has).
        if let Some(f) = self.replay.front_mut() {
            if f.start < offset && f.encoding == FrameEncoding::Raw {
                let cut = (offset - f.start) as usize;
                self.replay_bytes -= cut as u64;
                f.payload = f.payload.slice(cut..);
                f.start = offset;
            }
        }
        Ok(())
    }

    /// The next message to transmit on the current connection, if any.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        if let Some(m) = self.outbox.pop_front() {
            return Some(m);
        }
        if self.phase != SenderPhase::Streaming {
            return None;
        }
        if let Some(f) = self.replay.get(self.sent_here) {
            self.sent_here += 1;
            let len = f.payload.len() as u64;
            self.stats.bytes_sent += len;
            if f.start < self.high_water {
                self.stats.bytes_resent += self.high_water.min(f.end) - f.start;
            }
            self.high_water = self.high_water.max(f.end);
            return Some(Message::Data(f.clone()));
        }
        if let Some((length, receipt)) = &self.input_end {
            self.phase = SenderPhase::Ending;
            return Some(Message::End {
                length: *length,
                receipt: receipt.clone(),
            });
        }
        None
    }

    /// True when a data frame or control message is ready to transmit.
    pub fn wants_transmit(&self) -> bool {
        !self.outbox.is_empty()
            || (self.phase == SenderPhase::Streaming
                && (self.sent_here < self.replay.len() || self.input_end.is_some()))
    }

    /// Whether a refusal is final (retrying would not help).
    pub fn is_failed(&self) -> bool {
        self.phase == SenderPhase::Failed
    }
}

/// Whether a refusal code means "try again later" rather than "give up".
pub fn refusal_is_transient(code: RefuseCode) -> bool {
    matches!(code, RefuseCode::Busy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{SessionId, Snapshot};

    fn offer() -> Offer {
        Offer {
            session: SessionId(1),
            resuming: false,
            dataset: "backup/fs".into(),
            from: None,
            to: Snapshot {
                name: "tank/fs@a".into(),
                guid: 9,
            },
            flags: 0,
            size_estimate: None,
        }
    }

    fn frame(start: u64, len: usize) -> DataFrame {
        DataFrame::raw(start, Bytes::from(vec![start as u8; len]))
    }

    fn drain(s: &mut SenderSession) -> Vec<Message> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    #[test]
    fn resends_only_the_unacknowledged_window_after_a_reconnect() {
        let t = Instant::now();
        let mut s = SenderSession::new(offer(), [1; 32], 300, Duration::from_secs(60), t);
        s.connected(t).unwrap();
        let hello = drain(&mut s);
        assert_eq!(hello.len(), 2);
        s.handle(Message::Answer(Answer::Accept { version: 1 }), t)
            .unwrap();
        for i in 0..3 {
            assert!(s.can_push(100));
            s.push(frame(i * 100, 100)).unwrap();
        }
        assert!(!s.can_push(1), "window of 300 bytes is full");
        assert_eq!(drain(&mut s).len(), 3);
        s.handle(Message::Ack { offset: 100 }, t).unwrap();
        assert!(s.can_push(100));
        s.disconnected(t);
        s.connected(t).unwrap();
        match &drain(&mut s)[1] {
            Message::Offer(o) => assert!(o.resuming),
            m => panic!("{m:?}"),
        }
        // The receiver had delivered 150 bytes: resend from there.
        s.handle(
            Message::Answer(Answer::Resume {
                version: 1,
                offset: 150,
            }),
            t,
        )
        .unwrap();
        let again = drain(&mut s);
        assert_eq!(again.len(), 2);
        match &again[0] {
            Message::Data(f) => assert_eq!((f.start, f.end), (150, 200)),
            m => panic!("{m:?}"),
        }
        let st = s.stats();
        assert_eq!(st.bytes_resent, 150);
        assert_eq!(st.reconnects, 1);
        assert!(st.bytes_resent <= 300);
        s.finish_input(Bytes::new());
        assert!(matches!(
            drain(&mut s)[..],
            [Message::End { length: 300, .. }]
        ));
        s.handle(
            Message::Report(Report {
                success: true,
                downstream_status: 0,
                delivered: 300,
                snapshot_guid: Some(9),
                message: String::new(),
            }),
            t,
        )
        .unwrap();
        assert!(s.is_done());
    }

    fn stored(delivered: u64) -> Message {
        Message::Report(Report {
            success: true,
            downstream_status: 0,
            delivered,
            snapshot_guid: Some(9),
            message: "stored".into(),
        })
    }

    #[test]
    fn a_report_replayed_to_a_resumed_offer_completes_a_fully_sent_session() {
        let t = Instant::now();
        let mut s = SenderSession::new(offer(), [1; 32], 300, Duration::from_secs(60), t);
        s.connected(t).unwrap();
        s.handle(Message::Answer(Answer::Accept { version: 1 }), t)
            .unwrap();
        s.push(frame(0, 100)).unwrap();
        s.finish_input(Bytes::new());
        drain(&mut s);
        // The connection dies before the report arrives; on the next one
        // the receiver answers the resumed offer with the report.
        s.disconnected(t);
        s.connected(t).unwrap();
        drain(&mut s);
        s.handle(stored(100), t).unwrap();
        assert!(s.is_done());
        assert_eq!(s.stats().acked, 100);
    }

    #[test]
    fn a_stored_report_before_the_end_was_sent_is_a_protocol_error() {
        let t = Instant::now();
        let mut s = SenderSession::new(offer(), [1; 32], 300, Duration::from_secs(60), t);
        s.connected(t).unwrap();
        s.handle(Message::Answer(Answer::Accept { version: 1 }), t)
            .unwrap();
        s.push(frame(0, 100)).unwrap();
        drain(&mut s);
        s.disconnected(t);
        s.connected(t).unwrap();
        let e = s.handle(stored(100), t).unwrap_err();
        assert!(matches!(e, SessionError::Protocol(_)), "{e:?}");
        // Nor a length other than the one sent.
        let mut s = SenderSession::new(offer(), [1; 32], 300, Duration::from_secs(60), t);
        s.connected(t).unwrap();
        s.handle(Message::Answer(Answer::Accept { version: 1 }), t)
            .unwrap();
        s.push(frame(0, 100)).unwrap();
        s.finish_input(Bytes::new());
        s.disconnected(t);
        s.connected(t).unwrap();
        assert!(s.handle(stored(99), t).is_err());
    }

    #[test]
    fn resume_before_the_window_is_refused() {
        let t = Instant::now();
        let mut s = SenderSession::new(offer(), [1; 32], 1000, Duration::from_secs(60), t);
        s.connected(t).unwrap();
        s.handle(Message::Answer(Answer::Accept { version: 1 }), t)
            .unwrap();
        s.push(frame(0, 100)).unwrap();
        drain(&mut s);
        s.handle(Message::Ack { offset: 100 }, t).unwrap();
        s.disconnected(t);
        s.connected(t).unwrap();
        let e = s
            .handle(Message::Answer(Answer::Accept { version: 1 }), t)
            .unwrap_err();
        assert!(matches!(e, SessionError::ResumeOutsideWindow { .. }), "{e}");
    }

    #[test]
    fn grace_runs_from_the_loss_until_an_answer() {
        let t = Instant::now();
        let g = Duration::from_secs(10);
        let mut s = SenderSession::new(offer(), [1; 32], 1000, g, t);
        s.connected(t).unwrap();
        s.handle(Message::Answer(Answer::Accept { version: 1 }), t)
            .unwrap();
        assert_eq!(s.poll_timeout(), None);
        s.disconnected(t);
        // A connection that never gets an answer does not reset the clock.
        s.connected(t + Duration::from_secs(5)).unwrap();
        s.disconnected(t + Duration::from_secs(6));
        assert_eq!(s.poll_timeout(), Some(t + g));
        assert!(s.handle_timeout(t + Duration::from_secs(9)).is_ok());
        assert!(matches!(
            s.handle_timeout(t + g),
            Err(SessionError::GraceExpired { .. })
        ));
        assert!(s.is_failed());
    }

    #[test]
    fn busy_leaves_the_session_retryable_until_the_grace_runs_out() {
        let t = Instant::now();
        let g = Duration::from_secs(10);
        let mut s = SenderSession::new(offer(), [1; 32], 1000, g, t);
        s.connected(t).unwrap();
        drain(&mut s);
        let busy = Message::Refuse {
            code: RefuseCode::Busy,
            reason: "a transfer into backup/fs is in progress".into(),
        };
        let e = s.handle(busy.clone(), t).unwrap_err();
        assert!(matches!(
            e,
            SessionError::Refused {
                code: RefuseCode::Busy,
                ..
            }
        ));
        assert!(!s.is_failed());
        assert_eq!(s.phase(), &SenderPhase::Disconnected);
        assert!(s.busy_reason().is_some());
        // Retry: hello and offer again; still busy.
        s.connected(t + Duration::from_secs(2)).unwrap();
        assert_eq!(drain(&mut s).len(), 2);
        s.handle(busy, t + Duration::from_secs(2)).unwrap_err();
        // The grace counts from the start: busy all along says so.
        match s.handle_timeout(t + g) {
            Err(SessionError::ReceiverBusy { reason, .. }) => {
                assert!(reason.contains("in progress"), "{reason}")
            }
            r => panic!("{r:?}"),
        }
        assert!(s.is_failed());

        // An answer after a busy spell clears it.
        let mut s = SenderSession::new(offer(), [1; 32], 1000, g, t);
        s.connected(t).unwrap();
        s.receiver_busy("limit".into(), t);
        s.connected(t).unwrap();
        s.handle(Message::Answer(Answer::Accept { version: 1 }), t)
            .unwrap();
        assert_eq!(s.busy_reason(), None);
        s.disconnected(t);
        assert!(matches!(
            s.handle_timeout(t + g),
            Err(SessionError::GraceExpired { .. })
        ));
    }

    #[test]
    fn other_refusals_fail_the_session() {
        let t = Instant::now();
        let mut s = SenderSession::new(offer(), [1; 32], 1000, Duration::from_secs(10), t);
        s.connected(t).unwrap();
        let e = s
            .handle(
                Message::Refuse {
                    code: RefuseCode::BadDataset,
                    reason: "no".into(),
                },
                t,
            )
            .unwrap_err();
        assert!(matches!(e, SessionError::Refused { .. }));
        assert!(s.is_failed());
    }

    #[test]
    fn an_ack_beyond_what_was_sent_is_a_protocol_error() {
        let t = Instant::now();
        let mut s = SenderSession::new(offer(), [1; 32], 1000, Duration::from_secs(60), t);
        s.connected(t).unwrap();
        s.handle(Message::Answer(Answer::Accept { version: 1 }), t)
            .unwrap();
        assert!(matches!(
            s.handle(Message::Ack { offset: 5 }, t),
            Err(SessionError::Protocol(_))
        ));
    }
}
