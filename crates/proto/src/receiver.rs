//! The receiving end, sans-IO: the per-connection handshake
//! ([`Handshake`]) and the per-transfer session ([`ReceiverSession`]),
//! which outlives connections for its grace period.

use crate::message::{
    Answer, DataFrame, FrameEncoding, Message, Offer, RefuseCode, Report, MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION, PUBLIC_KEY_LEN,
};
use crate::SessionError;
use bytes::Bytes;
use std::time::{Duration, Instant};

/// What the receiver must do after a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Hand these stream bytes downstream, then call
    /// [`ReceiverSession::delivered`] with `end`.
    Deliver {
        /// Stream offset of the first byte.
        start: u64,
        /// Stream offset past the last byte.
        end: u64,
        /// Payload encoding.
        encoding: FrameEncoding,
        /// The bytes.
        payload: Bytes,
    },
    /// Transmit this message to the sender.
    Send(Message),
    /// The stream is complete: finish the downstream, then call
    /// [`ReceiverSession::finished`].
    Finish {
        /// The stream length.
        length: u64,
        /// The sender's receipt.
        receipt: Bytes,
    },
    /// Nothing to do.
    None,
}

/// The first two messages of a connection: hello, then offer.
#[derive(Debug)]
pub enum Handshake {
    /// Waiting for the hello.
    AwaitHello,
    /// Hello accepted; waiting for the offer.
    AwaitOffer {
        /// The protocol version agreed on.
        version: u16,
    },
}

impl Handshake {
    /// Handles the hello. `peer_key` is the key TLS authenticated; the
    /// hello must name the same key. On refusal, the returned message is
    /// to be sent before closing.
    pub fn hello(&mut self, msg: Message, peer_key: &[u8; PUBLIC_KEY_LEN]) -> Result<(), Refusal> {
        let Message::Hello {
            min_version,
            max_version,
            sender_key,
        } = msg
        else {
            return Err(refuse(
                RefuseCode::Other,
                format!("expected hello, got {}", msg.kind()),
            ));
        };
        if max_version < MIN_PROTOCOL_VERSION || min_version > PROTOCOL_VERSION {
            return Err(refuse(
                RefuseCode::UnsupportedVersion,
                format!(
                    "sender speaks protocol versions {min_version}..={max_version}, this receiver \
                     {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}: upgrade the older side"
                ),
            ));
        }
        if &sender_key != peer_key {
            return Err(refuse(
                RefuseCode::Other,
                "the hello names a different key than the TLS handshake authenticated".into(),
            ));
        }
        *self = Handshake::AwaitOffer {
            version: max_version.min(PROTOCOL_VERSION),
        };
        Ok(())
    }
}

/// A refusal: the message for the peer and the matching local error.
pub type Refusal = Box<(Message, SessionError)>;

/// A refusal message and the matching local error.
pub fn refuse(code: RefuseCode, reason: String) -> Refusal {
    Box::new((
        Message::Refuse {
            code,
            reason: reason.clone(),
        },
        SessionError::Refused { code, reason },
    ))
}

/// Counters of a receiving session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    /// Payload bytes received in data frames, duplicates included.
    pub bytes_received: u64,
    /// Payload bytes received that had already been delivered.
    pub bytes_duplicate: u64,
    /// Connections that resumed this session.
    pub resumes: u64,
    /// Stream bytes delivered downstream.
    pub delivered: u64,
}

/// Where a receiving session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceiverPhase {
    /// Receiving frames.
    Streaming,
    /// End received; the downstream is finishing.
    Finishing,
    /// Report sent.
    Done,
    /// Failed for good.
    Failed,
}

/// The receiving end of one transfer.
pub struct ReceiverSession {
    offer: Offer,
    sender_key: [u8; PUBLIC_KEY_LEN],
    version: u16,
    grace: Duration,
    phase: ReceiverPhase,
    /// Next stream offset expected.
    expected: u64,
    down_since: Option<Instant>,
    stats: ReceiverStats,
}

impl ReceiverSession {
    /// A new session for `offer` from `sender_key`; the answer to send is
    /// [`ReceiverSession::answer`].
    pub fn new(
        offer: Offer,
        sender_key: [u8; PUBLIC_KEY_LEN],
        version: u16,
        grace: Duration,
    ) -> ReceiverSession {
        ReceiverSession {
            offer,
            sender_key,
            version,
            grace,
            phase: ReceiverPhase::Streaming,
            expected: 0,
            down_since: None,
            stats: ReceiverStats::default(),
        }
    }

    /// The offer this session accepted.
    pub fn offer(&self) -> &Offer {
        &self.offer
    }

    /// The counters.
    pub fn stats(&self) -> ReceiverStats {
        self.stats
    }

    /// The phase.
    pub fn phase(&self) -> ReceiverPhase {
        self.phase
    }

    /// The answer for the current connection: accept at 0 or resume at
    /// the delivered offset.
    pub fn answer(&self) -> Message {
        if self.stats.delivered == 0 {
            Message::Answer(Answer::Accept {
                version: self.version,
            })
        } else {
            Message::Answer(Answer::Resume {
                version: self.version,
                offset: self.stats.delivered,
            })
        }
    }

    /// The key of the sender that offered this session.
    pub fn sender_key(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.sender_key
    }

    /// A sender reconnected with `offer` as `key` on protocol `version`.
    /// The key and the offer (dataset, snapshots, flags) must be the
    /// session's own; the server checks them too before it touches the
    /// connection that carries the session.
    pub fn reattach(
        &mut self,
        offer: &Offer,
        key: &[u8; PUBLIC_KEY_LEN],
        version: u16,
    ) -> Result<Message, Refusal> {
        if key != &self.sender_key {
            return Err(refuse(
                RefuseCode::UnknownSession,
                "this session belongs to another sender key".into(),
            ));
        }
        if let Some(what) = crate::admission::offer_mismatch(&self.offer, offer) {
            return Err(refuse(
                RefuseCode::Other,
                format!(
                    "the resumed offer differs from the session's original offer in its {what}"
                ),
            ));
        }
        if self.phase != ReceiverPhase::Streaming {
            return Err(refuse(
                RefuseCode::Other,
                format!("the session is {:?} and cannot take more data", self.phase),
            ));
        }
        self.version = version;
        self.down_since = None;
        self.stats.resumes += 1;
        // Anything received but not delivered will come again.
        self.expected = self.stats.delivered;
        Ok(self.answer())
    }

    /// The connection carrying this session is gone.
    pub fn disconnected(&mut self, now: Instant) {
        if self.down_since.is_none() && self.phase == ReceiverPhase::Streaming {
            self.down_since = Some(now);
        }
    }

    /// When the grace period ends, if the session is detached.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.down_since.map(|t| t + self.grace)
    }

    /// Fails the session when its grace period has run out.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        if let Some(t) = self.poll_timeout() {
            if now >= t {
                self.phase = ReceiverPhase::Failed;
                return Err(SessionError::GraceExpired {
                    grace: self.grace,
                    delivered: self.stats.delivered,
                });
            }
        }
        Ok(())
    }

    fn fail(&mut self, why: String) -> Result<Action, SessionError> {
        self.phase = ReceiverPhase::Failed;
        Err(SessionError::Protocol(why))
    }

    /// Handles a message from the sender.
    pub fn handle(&mut self, msg: Message) -> Result<Action, SessionError> {
        match (self.phase, msg) {
            (ReceiverPhase::Streaming, Message::Data(f)) => self.data(f),
            (ReceiverPhase::Streaming, Message::End { length, receipt }) => {
                if length != self.expected || length != self.stats.delivered {
                    return self.fail(format!(
                        "the sender ended the stream at {length} bytes, but {} were delivered",
                        self.stats.delivered
                    ));
                }
                self.phase = ReceiverPhase::Finishing;
                Ok(Action::Finish { length, receipt })
            }
            (_, Message::Abort { reason }) => {
                self.phase = ReceiverPhase::Failed;
                Err(SessionError::PeerAborted(reason))
            }
            (phase, m) => self.fail(format!(
                "unexpected {} message from the sender while {phase:?}",
                m.kind()
            )),
        }
    }

    fn data(&mut self, mut f: DataFrame) -> Result<Action, SessionError> {
        let len = f.payload.len() as u64;
        self.stats.bytes_received += len;
        if f.start > self.expected {
            return self.fail(format!(
                "data frame at offset {} leaves a gap after {}",
                f.start, self.expected
            ));
        }
        if f.end <= self.expected {
            self.stats.bytes_duplicate += len;
            return Ok(Action::None);
        }
        if f.start < self.expected {
            if f.encoding != FrameEncoding::Raw {
                return self.fail(format!(
                    "encoded frame {}..{} overlaps delivered data at {}",
                    f.start, f.end, self.expected
                ));
            }
            let cut = self.expected - f.start;
            self.stats.bytes_duplicate += cut;
            f.payload = f.payload.slice(cut as usize..);
            f.start = self.expected;
        }
        self.expected = f.end;
        Ok(Action::Deliver {
            start: f.start,
            end: f.end,
            encoding: f.encoding,
            payload: f.payload,
        })
    }

    /// The downstream took everything before `offset`; returns the ack.
    pub fn delivered(&mut self, offset: u64) -> Message {
        self.stats.delivered = self.stats.delivered.max(offset.min(self.expected));
        Message::Ack {
            offset: self.stats.delivered,
        }
    }

    /// The downstream finished (or failed); returns the report to send.
    pub fn finished(
        &mut self,
        success: bool,
        downstream_status: i32,
        snapshot_guid: Option<u64>,
        message: String,
    ) -> Message {
        self.phase = if success {
            ReceiverPhase::Done
        } else {
            ReceiverPhase::Failed
        };
        Message::Report(Report {
            success,
            downstream_status,
            delivered: self.stats.delivered,
            snapshot_guid,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{SessionId, Snapshot};

    fn offer() -> Offer {
        Offer {
            session: SessionId(7),
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

    #[test]
    fn handshake_refuses_foreign_versions_and_mismatched_keys() {
        let mut h = Handshake::AwaitHello;
        let bad = Message::Hello {
            min_version: 99,
            max_version: 100,
            sender_key: [1; 32],
        };
        let (m, _) = *h.hello(bad, &[1; 32]).unwrap_err();
        assert!(matches!(
            m,
            Message::Refuse {
                code: RefuseCode::UnsupportedVersion,
                ..
            }
        ));
        let other_key = Message::Hello {
            min_version: 1,
            max_version: 1,
            sender_key: [2; 32],
        };
        assert!(h.hello(other_key, &[1; 32]).is_err());
        let ok = Message::Hello {
            min_version: 1,
            max_version: 5,
            sender_key: [1; 32],
        };
        h.hello(ok, &[1; 32]).unwrap();
        assert!(matches!(h, Handshake::AwaitOffer { version: 1 }));
    }

    #[test]
    fn duplicates_are_dropped_and_overlaps_trimmed() {
        let mut s = ReceiverSession::new(offer(), [1; 32], 1, Duration::from_secs(60));
        let a = s
            .handle(Message::Data(DataFrame::raw(
                0,
                Bytes::from_static(b"abcd"),
            )))
            .unwrap();
        assert!(matches!(a, Action::Deliver { end: 4, .. }));
        assert_eq!(s.delivered(4), Message::Ack { offset: 4 });
        let dup = s
            .handle(Message::Data(DataFrame::raw(0, Bytes::from_static(b"ab"))))
            .unwrap();
        assert_eq!(dup, Action::None);
        match s
            .handle(Message::Data(DataFrame::raw(
                2,
                Bytes::from_static(b"cdef"),
            )))
            .unwrap()
        {
            Action::Deliver { start, payload, .. } => {
                assert_eq!((start, &payload[..]), (4, &b"ef"[..]))
            }
            a => panic!("{a:?}"),
        }
        assert!(s
            .handle(Message::Data(DataFrame::raw(9, Bytes::from_static(b"x"))))
            .is_err());
    }

    #[test]
    fn reattach_answers_resume_at_the_delivered_offset() {
        let mut s = ReceiverSession::new(offer(), [1; 32], 1, Duration::from_secs(60));
        s.handle(Message::Data(DataFrame::raw(
            0,
            Bytes::from_static(b"abcd"),
        )))
        .unwrap();
        s.delivered(4);
        s.handle(Message::Data(DataFrame::raw(4, Bytes::from_static(b"ef"))))
            .unwrap();
        // Lost before delivery: the resume point is 4, not 6.
        let t = Instant::now();
        s.disconnected(t);
        assert!(s.handle_timeout(t + Duration::from_secs(59)).is_ok());
        let a = s.reattach(&offer(), &[1; 32], 1).unwrap();
        assert_eq!(
            a,
            Message::Answer(Answer::Resume {
                version: 1,
                offset: 4
            })
        );
        assert!(s.reattach(&offer(), &[2; 32], 1).is_err());
        let mut other = offer();
        other.from = Some(Snapshot {
            name: "tank/fs@0".into(),
            guid: 1,
        });
        assert!(s.reattach(&other, &[1; 32], 1).is_err());
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn grace_expiry_fails_the_session() {
        let mut s = ReceiverSession::new(offer(), [1; 32], 1, Duration::from_secs(5));
        let t = Instant::now();
        s.disconnected(t);
        assert!(matches!(
            s.handle_timeout(t + Duration::from_secs(5)),
            Err(SessionError::GraceExpired { .. })
        ));
        assert_eq!(s.phase(), ReceiverPhase::Failed);
    }

    #[test]
    fn end_must_match_the_delivered_length() {
        let mut s = ReceiverSession::new(offer(), [1; 32], 1, Duration::from_secs(5));
        assert!(s
            .handle(Message::End {
                length: 3,
                receipt: Bytes::new()
            })
            .is_err());
    }
}
