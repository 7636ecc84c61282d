//! The session protocol in a deterministic simulation (see `sim/world.rs`):
//! flaps, takeovers, `Busy`, grace expiry, resumption and damaged messages
//! in virtual time, and property tests over random fault schedules. Each
//! test runs in milliseconds; a failing case replays exactly from its seed
//! and fault plan.

#[path = "sim/world.rs"]
mod world;

use bytes::Bytes;
use fjord_proto::admission::Limits;
use fjord_proto::message::{DecodeError, RefuseCode};
use fjord_proto::SessionError;
use proptest::prelude::*;
use std::time::Duration;
use world::*;

const KIB: u64 = 1 << 10;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Deterministic pseudo-random bytes.
fn data(len: usize, seed: u64) -> Bytes {
    let mut bytes = vec![0u8; len];
    fastrand::Rng::with_seed(seed).fill(&mut bytes);
    Bytes::from(bytes)
}

/// A slow link, so that a transfer of a few hundred KiB takes seconds of
/// virtual time and the faults land mid-transfer.
fn slow(seed: u64) -> Config {
    Config {
        seed,
        net: Net {
            bandwidth: 256 * KIB,
            stream_window: 64 * KIB,
            ..Net::default()
        },
        window: 64 * KIB,
        frame: 16 << 10,
        ..Config::default()
    }
}

fn one(cfg: Config, faults: Faults, bytes: Bytes) -> (Outcome, Transfer) {
    let t = Transfer::new(1, 1, "backup/fs", bytes);
    let out = World::new(cfg, faults, vec![t.clone()]).run();
    (out, t)
}

/// The claims about resending that hold for any run: the sender never
/// held more than the window, no resumption re-sent more than the window
/// (counted by the machine and, independently, on the wire), and the
/// machine's count of re-sent bytes is the wire's.
fn assert_resend_bounds(r: &SenderResult, window: u64) {
    let s = r.stats;
    assert!(
        s.replay_peak <= window,
        "replay peak {} > {window}",
        s.replay_peak
    );
    assert!(
        s.resend_max <= window,
        "resend max {} > {window}",
        s.resend_max
    );
    for (i, resent) in r.wire.resent_per_connection.iter().enumerate() {
        assert!(
            *resent <= window,
            "connection {i} re-sent {resent} bytes, beyond the window of {window}"
        );
    }
    let on_wire: u64 = r.wire.resent_per_connection.iter().sum();
    assert_eq!(
        s.bytes_resent, on_wire,
        "the machine counts what the wire carried"
    );
    assert!(s.bytes_resent <= window * s.reconnects.max(1) || s.bytes_resent == 0);
}

/// A completed transfer: the report, the receiver's event, the stored
/// bytes, the counters.
fn assert_delivered(out: &Outcome, t: &Transfer, window: u64) {
    let r = &out.senders[0];
    let report = match &r.outcome {
        Ok(report) => report,
        Err(e) => panic!("the transfer failed: {e:?}\n{out:#?}"),
    };
    let len = t.data.len() as u64;
    assert!(report.success);
    assert_eq!(report.delivered, len);
    assert_eq!(r.stats.bytes_sent, len + r.stats.bytes_resent);
    match out.end_of(t.offer.session) {
        Some(Event::Completed { stats, .. }) => assert_eq!(stats.delivered, len),
        e => panic!("receiver: {e:?}"),
    }
    assert!(
        out.stored.get(&t.offer.dataset) == Some(&t.data),
        "the stored stream is byte-identical"
    );
    assert_resend_bounds(r, window);
    assert!(out.settled && out.held == 0 && out.connections == 0);
}

#[test]
fn a_clean_transfer_arrives_byte_identical_without_resending() {
    let bytes = data(300_000, 1);
    let (out, t) = one(slow(1), Faults::default(), bytes);
    assert_delivered(&out, &t, 64 * KIB);
    let s = out.senders[0].stats;
    assert_eq!((s.reconnects, s.bytes_resent), (0, 0));
    // 300 kB at 256 KiB/s: the virtual clock ran, the wall clock did not.
    assert!(out.elapsed > secs(1), "{:?}", out.elapsed);
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let faults = Faults {
        blackholes: vec![(ms(300), ms(2500))],
        resets: vec![Reset {
            at: ms(2900),
            sender_after: ms(0),
            receiver_after: secs(2),
        }],
        damage: vec![],
    };
    let run = |seed| {
        let (out, _) = one(slow(seed), faults.clone(), data(400_000, 2));
        (
            out.elapsed,
            out.senders[0].stats,
            out.takeovers,
            out.events.len(),
        )
    };
    assert_eq!(run(7), run(7));
}

/// Several flaps within the grace: blackholes of 2–5 s (longer than the
/// idle timeout, so the connections die), resets, lost closes. Replaces
/// the wall-clock `flaps_resume_and_resend_at_most_the_replay_window`.
#[test]
fn flaps_shorter_than_grace_resume_and_resend_at_most_the_replay_window() {
    let mut cfg = slow(3);
    cfg.grace = secs(60);
    cfg.net.close_loss = 0.5;
    let faults = Faults {
        blackholes: vec![
            (ms(500), ms(3500)),
            (ms(6000), ms(8000)),
            (ms(11_000), ms(16_000)),
        ],
        resets: vec![
            Reset {
                at: ms(4800),
                sender_after: ms(0),
                receiver_after: ms(0),
            },
            Reset {
                at: ms(9500),
                sender_after: ms(1500),
                receiver_after: ms(10),
            },
        ],
        damage: vec![],
    };
    let (out, t) = one(cfg, faults, data(2_000_000, 3));
    assert_delivered(&out, &t, 64 * KIB);
    let s = out.senders[0].stats;
    // Connections 1, 3 and 5 only: the others were attempted during a
    // blackhole and timed out.
    assert!(s.reconnects >= 3, "the flaps force reconnects: {s:?}");
    assert!(s.bytes_resent > 0, "something was in flight: {s:?}");
    match out.end_of(t.offer.session) {
        Some(Event::Completed { stats, .. }) => assert!(stats.resumes >= 3, "{stats:?}"),
        e => panic!("{e:?}"),
    }
}

/// One outage of 20 s: far beyond the idle timeout, within the grace.
/// Replaces the wall-clock `a_20_second_blackhole_is_survived`.
#[test]
fn a_20_second_blackhole_is_survived() {
    let mut cfg = slow(4);
    cfg.grace = secs(60);
    let faults = Faults {
        blackholes: vec![(ms(700), ms(20_700))],
        ..Faults::default()
    };
    let (out, t) = one(cfg, faults, data(500_000, 4));
    assert_delivered(&out, &t, 64 * KIB);
    assert!(out.senders[0].stats.reconnects >= 1);
    assert!(out.elapsed > secs(20));
}

/// A blackhole longer than the grace fails both ends with the grace
/// error and stores nothing. Replaces the wall-clock
/// `expiring_grace_fails_both_ends_and_leaves_no_file`.
#[test]
fn a_blackhole_longer_than_grace_fails_both_ends_with_the_grace_error() {
    let mut cfg = slow(5);
    cfg.grace = secs(3);
    let start = ms(600);
    let faults = Faults {
        blackholes: vec![(start, secs(3600))],
        ..Faults::default()
    };
    let (out, t) = one(cfg, faults, data(500_000, 5));
    let r = &out.senders[0];
    match &r.outcome {
        Err(SendFailure::Session(e @ SessionError::GraceExpired { grace, delivered })) => {
            assert_eq!(*grace, secs(3));
            assert!(*delivered > 0 && *delivered < 500_000, "{delivered}");
            assert!(e.to_string().contains("grace period"), "{e}");
        }
        o => panic!("sender: {o:?}"),
    }
    // Counted from the loss, which the idle timeout reveals.
    assert!(r.at >= start + secs(3), "{:?}", r.at);
    match out.end_of(t.offer.session) {
        Some(Event::Failed {
            error: RecvFailure::Session(SessionError::GraceExpired { .. }),
            at,
            ..
        }) => assert!(*at >= start + secs(3)),
        e => panic!("receiver: {e:?}"),
    }
    assert!(out.stored.is_empty(), "nothing left behind");
    assert_eq!(out.held, 0);
    assert_resend_bounds(r, 64 * KIB);
}

/// The sender learns at once that its connection broke; the receiver
/// would only at its idle timeout, so it still holds the session on the
/// old connection when the new one offers it: a takeover, which resumes.
/// A blackhole that swallows the receiver's final report: the receiver
/// has stored the stream, the sender reconnects and resumes, and is sent
/// the report again instead of being told the session is unknown.
#[test]
fn a_report_lost_with_the_connection_is_sent_again_on_resume() {
    let bytes = data(200_000, 5);
    let (clean, _) = one(slow(5), Faults::default(), bytes.clone());
    let end = clean.elapsed;
    // Blackholes starting around the end of the clean run, one of which
    // catches the report in flight.
    let mut replayed = 0;
    for back in (0..400).step_by(10) {
        let start = end.saturating_sub(ms(back));
        let faults = Faults {
            blackholes: vec![(start, start + secs(3))],
            resets: vec![],
            damage: vec![],
        };
        let (out, t) = one(slow(5), faults, bytes.clone());
        assert_delivered(&out, &t, 64 * KIB);
        replayed += out.replays;
    }
    assert!(replayed > 0, "no blackhole caught the report in flight");
}

#[test]
fn a_takeover_by_a_second_connection_resumes() {
    let faults = Faults {
        resets: vec![Reset {
            at: ms(800),
            sender_after: ms(0),
            receiver_after: secs(30),
        }],
        ..Faults::default()
    };
    let (out, t) = one(slow(6), faults, data(400_000, 6));
    assert_delivered(&out, &t, 64 * KIB);
    assert_eq!(
        out.takeovers, 1,
        "the second connection took the session over"
    );
    match out.end_of(t.offer.session) {
        Some(Event::Completed { stats, .. }) => assert_eq!(stats.resumes, 1),
        e => panic!("{e:?}"),
    }
}

/// The same, with one connection per client: the new connection is
/// closed `Busy` while the receiver still counts the dead one, and is let
/// in once the receiver noticed (its idle timeout).
#[test]
fn a_connection_limit_answers_busy_until_the_dead_connection_is_noticed() {
    let mut cfg = slow(7);
    cfg.limits = Limits {
        per_client_connections: 1,
        ..Limits::default()
    };
    let faults = Faults {
        resets: vec![Reset {
            at: ms(800),
            sender_after: ms(0),
            receiver_after: ms(1500),
        }],
        ..Faults::default()
    };
    let (out, t) = one(cfg, faults, data(400_000, 7));
    assert_delivered(&out, &t, 64 * KIB);
    assert!(out.senders[0].wire.busy >= 1, "{:?}", out.senders[0].wire);
    assert!(out.events.iter().any(|e| matches!(
        e,
        Event::Refused {
            code: RefuseCode::Busy,
            ..
        }
    )));
    assert_eq!(out.takeovers, 0);
}

/// A second transfer of the same key into the same dataset is answered
/// `Busy` while the first runs, retries with backoff, and runs once the
/// first completed.
#[test]
fn busy_then_free() {
    let first = Transfer::new(1, 1, "backup/fs", data(300_000, 8));
    let mut second = Transfer::new(1, 2, "backup/fs", data(200_000, 9));
    second.start = ms(300);
    let out = World::new(slow(8), Faults::default(), vec![first, second.clone()]).run();
    let (a, b) = (&out.senders[0], &out.senders[1]);
    assert!(a.outcome.is_ok(), "{:?}", a.outcome);
    assert!(b.outcome.is_ok(), "{:?}", b.outcome);
    assert!(b.wire.busy >= 1, "the second was answered busy");
    assert!(b.at > a.at, "the second ends after the first");
    assert!(out.stored.get("backup/fs") == Some(&second.data));
    assert!(out
        .events
        .iter()
        .any(|e| matches!(e, Event::Refused { code: RefuseCode::Busy, reason } if reason.contains("in progress"))));
    assert_eq!(
        out.events
            .iter()
            .filter(|e| matches!(e, Event::Completed { .. }))
            .count(),
        2
    );
}

/// Busy for the whole grace: the sender says so (not "link down").
#[test]
fn busy_for_the_whole_grace_fails_with_receiver_busy() {
    let mut cfg = slow(9);
    cfg.grace = secs(2);
    let first = Transfer::new(1, 1, "backup/fs", data(1_500_000, 10));
    let mut second = Transfer::new(1, 2, "backup/fs", data(10_000, 11));
    second.start = ms(300);
    let out = World::new(cfg, Faults::default(), vec![first.clone(), second]).run();
    assert!(out.senders[0].outcome.is_ok());
    match &out.senders[1].outcome {
        Err(SendFailure::Session(SessionError::ReceiverBusy { grace, reason })) => {
            assert_eq!(*grace, secs(2));
            assert!(reason.contains("in progress"), "{reason}");
        }
        o => panic!("{o:?}"),
    }
    assert!(out.stored.get("backup/fs") == Some(&first.data));
}

/// Resets in quick succession with a window far smaller than what the
/// link holds in flight: each resumption re-sends at most the window.
#[test]
fn resumption_resends_at_most_the_replay_window() {
    let mut cfg = slow(10);
    cfg.window = 32 * KIB;
    cfg.frame = 8 << 10;
    cfg.net.latency = ms(40);
    let resets = (0..7)
        .map(|k| Reset {
            at: ms(600 + 500 * k),
            sender_after: ms(0),
            receiver_after: ms(0),
        })
        .collect();
    let faults = Faults {
        resets,
        ..Faults::default()
    };
    let (out, t) = one(cfg, faults, data(900_000, 12));
    assert_delivered(&out, &t, 32 * KIB);
    let r = &out.senders[0];
    assert!(r.stats.reconnects >= 5, "{:?}", r.stats);
    let most = r
        .wire
        .resent_per_connection
        .iter()
        .max()
        .copied()
        .unwrap_or(0);
    assert!(most > 0, "the resets caught bytes in flight: {:?}", r.wire);
}

/// Garbage instead of a data frame: the receiver fails the session with
/// the decoder's error, discards it, and the sender learns why.
#[test]
fn a_garbage_message_from_the_sender_fails_both_ends_with_the_decode_error() {
    let faults = Faults {
        damage: vec![Damage {
            from_sender: true,
            conn: 0,
            message: 6,
            kind: DamageKind::UnknownType,
        }],
        ..Faults::default()
    };
    let (out, t) = one(slow(11), faults, data(300_000, 13));
    match out.end_of(t.offer.session) {
        Some(Event::Failed {
            error: RecvFailure::Undecodable(DecodeError::UnknownType(0xee)),
            ..
        }) => {}
        e => panic!("receiver: {e:?}"),
    }
    match &out.senders[0].outcome {
        Err(SendFailure::Session(SessionError::ReceiverFailed(why))) => {
            assert!(
                why.starts_with("undecodable message: unknown message type 238"),
                "{why}"
            )
        }
        o => panic!("sender: {o:?}"),
    }
    assert!(out.stored.is_empty());
    assert!(out.settled && out.held == 0);
}

/// A damaged message from the receiver: the sender fails with a protocol
/// error and aborts, and the receiver ends the session at once rather
/// than holding it for its grace period.
#[test]
fn a_damaged_message_from_the_receiver_fails_the_sender_and_aborts_the_session() {
    let mut cfg = slow(12);
    cfg.grace = secs(300);
    let faults = Faults {
        damage: vec![Damage {
            from_sender: false,
            conn: 0,
            message: 3,
            kind: DamageKind::TooLong,
        }],
        ..Faults::default()
    };
    let (out, t) = one(cfg, faults, data(300_000, 14));
    match &out.senders[0].outcome {
        Err(SendFailure::Session(SessionError::Protocol(why))) => {
            assert!(
                why.starts_with("undecodable message from the receiver: message of"),
                "{why}"
            )
        }
        o => panic!("sender: {o:?}"),
    }
    match out.end_of(t.offer.session) {
        Some(Event::Failed {
            error: RecvFailure::Session(SessionError::PeerAborted(_)),
            at,
            ..
        }) => assert!(*at < secs(5), "ended at once, not after the grace: {at:?}"),
        e => panic!("receiver: {e:?}"),
    }
    assert!(out.stored.is_empty());
}

/// A damaged hello is refused before any session exists.
#[test]
fn a_damaged_hello_is_refused() {
    let faults = Faults {
        damage: vec![Damage {
            from_sender: true,
            conn: 0,
            message: 0,
            kind: DamageKind::Truncated,
        }],
        ..Faults::default()
    };
    let (out, _) = one(slow(13), faults, data(10_000, 15));
    match &out.senders[0].outcome {
        Err(SendFailure::Session(SessionError::Refused {
            code: RefuseCode::Other,
            reason,
        })) => assert!(
            reason.starts_with("undecodable message: message truncated"),
            "{reason}"
        ),
        o => panic!("sender: {o:?}"),
    }
    assert!(out
        .events
        .iter()
        .all(|e| matches!(e, Event::Refused { .. })));
    assert!(out.stored.is_empty() && out.held == 0);
}

/// A source that fails: the sender aborts and the receiver ends the
/// session at once.
#[test]
fn a_failing_source_aborts_and_the_receiver_ends_the_session_at_once() {
    let mut cfg = slow(14);
    cfg.grace = secs(300);
    let mut t = Transfer::new(1, 1, "backup/fs", data(300_000, 16));
    t.source_fails_at = Some(100 * KIB);
    let out = World::new(cfg, Faults::default(), vec![t.clone()]).run();
    match &out.senders[0].outcome {
        // The source fails at the first frame boundary past 100 KiB.
        Err(SendFailure::Source { at }) => assert_eq!(*at, 112 * KIB),
        o => panic!("{o:?}"),
    }
    match out.end_of(t.offer.session) {
        Some(Event::Failed {
            error: RecvFailure::Session(SessionError::PeerAborted(why)),
            at,
            ..
        }) => {
            assert!(why.contains("could not read the stream"), "{why}");
            assert!(*at < secs(5), "{at:?}");
        }
        e => panic!("{e:?}"),
    }
    assert!(out.stored.is_empty() && out.settled);
}

// ---------------------------------------------------------------------------
// Property tests over random fault schedules.

/// A random fault schedule: blackholes and resets within `span`, each
/// blackhole at most `longest`.
fn schedule(span: u64, longest: u64) -> impl Strategy<Value = Faults> {
    let blackhole = (0..span, 1..longest).prop_map(|(s, len)| (ms(s), ms(s + len)));
    let after = prop_oneof![Just(0u64), Just(20), Just(700), Just(1500), Just(4000)];
    let reset = (0..span, after.clone(), after).prop_map(|(at, s, r)| Reset {
        at: ms(at),
        sender_after: ms(s),
        receiver_after: ms(r),
    });
    (
        prop::collection::vec(blackhole, 0..5),
        prop::collection::vec(reset, 0..5),
    )
        .prop_map(|(blackholes, resets)| Faults {
            blackholes,
            resets,
            damage: vec![],
        })
}

/// The longest time a sender may be without a working connection:
/// blackholes, and the time ends take to notice a reset, merged where
/// the gap between them is shorter than a failed handshake and a backoff
/// (an attempt started in one outage fails after the idle timeout, even
/// if the next outage has not begun).
fn longest_outage(f: &Faults, idle: Duration) -> Duration {
    let mut b = f.blackholes.clone();
    b.extend(
        f.resets
            .iter()
            .map(|r| (r.at, r.at + r.sender_after.max(r.receiver_after))),
    );
    b.sort();
    let bridge = idle + secs(1);
    let mut best = Duration::ZERO;
    let mut cur: Option<(Duration, Duration)> = None;
    for (s, e) in b {
        cur = match cur {
            Some((cs, ce)) if s <= ce + bridge => Some((cs, ce.max(e))),
            _ => Some((s, e)),
        };
        if let Some((cs, ce)) = cur {
            best = best.max(ce - cs);
        }
    }
    best
}

/// What every run must show, whatever the faults: a completed session is
/// stored byte-identical; a sender fails only with the errors the faults
/// explain, and the receiver's end agrees; resending stays within the
/// window; the receiver ends holding nothing.
fn check_run(
    out: &Outcome,
    t: &Transfer,
    cfg: &Config,
    faults: &Faults,
) -> Result<(), TestCaseError> {
    let r = &out.senders[0];
    prop_assert!(out.settled, "the run settles: {out:?}");
    prop_assert_eq!(out.held, 0);
    prop_assert_eq!(out.connections, 0);
    assert_resend_bounds(r, cfg.window);
    let end = out.end_of(t.offer.session);
    if let Some(stored) = out.stored.get(&t.offer.dataset) {
        prop_assert!(stored == &t.data, "a stored stream is byte-identical");
    }
    let completed = matches!(end, Some(Event::Completed { .. }));
    prop_assert_eq!(completed, out.stored.contains_key(&t.offer.dataset));
    if let Some(Event::Failed { error, .. }) = end {
        prop_assert!(
            matches!(
                error,
                RecvFailure::Session(SessionError::GraceExpired { .. })
            ),
            "the receiver fails only by its grace: {error:?}"
        );
    }
    match &r.outcome {
        Ok(report) => {
            prop_assert!(completed, "a reported success is stored");
            prop_assert_eq!(report.delivered, t.data.len() as u64);
            prop_assert_eq!(
                r.stats.bytes_sent,
                t.data.len() as u64 + r.stats.bytes_resent
            );
        }
        Err(SendFailure::Session(SessionError::GraceExpired { .. })) => {
            let outage = longest_outage(faults, cfg.net.idle_timeout);
            prop_assert!(
                outage + secs(2) >= cfg.grace,
                "the grace ran out only over an outage near it ({outage:?})"
            );
        }
        // The receiver's grace ran out first: the resumed offer is told so.
        Err(SendFailure::Session(SessionError::ReceiverFailed(why))) => {
            prop_assert!(
                matches!(end, Some(Event::Failed { .. })),
                "a receiver failure reported for a session it failed: {why}"
            );
        }
        Err(e) => prop_assert!(false, "unexpected sender error {e:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Faults within the grace: every transfer completes byte-identical at
    /// both ends (a final report lost with a connection is sent again to
    /// the resumed offer), and resending stays within the window.
    #[test]
    fn faults_within_the_grace_deliver_byte_identical(
        faults in schedule(4000, 4000),
        seed in any::<u64>(),
        len in 0usize..700_000,
        close_loss in 0.0f64..0.6,
    ) {
        let mut cfg = slow(seed);
        cfg.grace = secs(30);
        cfg.net.close_loss = close_loss;
        let (out, t) = one(cfg.clone(), faults.clone(), data(len, seed));
        check_run(&out, &t, &cfg, &faults)?;
        if let Err(e) = &out.senders[0].outcome {
            prop_assert!(false, "failed within the grace: {e:?}");
        }
    }

    /// Any faults, outages beyond the grace included: byte-identical
    /// delivery or the right error at both ends.
    #[test]
    fn any_faults_end_byte_identical_or_with_the_right_error(
        faults in schedule(6000, 12_000),
        seed in any::<u64>(),
        len in 0usize..500_000,
        close_loss in 0.0f64..0.6,
    ) {
        let mut cfg = slow(seed);
        cfg.grace = secs(5);
        cfg.net.close_loss = close_loss;
        let (out, t) = one(cfg.clone(), faults.clone(), data(len, seed));
        check_run(&out, &t, &cfg, &faults)?;
    }
}
