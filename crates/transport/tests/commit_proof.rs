//! The commit waits for the proof, over real QUIC on loopback: a stream of
//! many frames whose sender's End announces a wrong length, whose sender
//! aborts after the last byte, or whose pack carries a forged receipt
//! never lets its final END record reach the downstream (where, for
//! `zfs recv`, the END is what commits the snapshot). The same streams
//! with honest proofs do deliver the END, so the recording sink is not
//! blind to it. And the verdict outlives the connection: a sender that
//! lost it resumes and is told again.

mod support;

use bytes::Bytes;
use fjord_pack::format::{FrameHeader, FrameKind, Receipt, END_LEN, HEADER_LEN};
use fjord_pack::PackOptions;
use fjord_proto::message::{offer_flags, Answer, DataFrame, FrameEncoding, Message, MessageReader};
use fjord_proto::{Offer, PublicKey};
use fjord_sink::{advance_contiguous, Sink, SinkError, SinkFactory, SinkOutcome, Verifier};
use fjord_stream::RECORD_SIZE;
use fjord_transport::client::Counters;
use fjord_transport::server::{ServeOptions, Server, ServerEvent};
use fjord_transport::{Identity, LinkConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

/// What one stream's downstream saw.
#[derive(Default)]
struct Log {
    /// Bytes the verifier released, in order.
    seen: Vec<u8>,
    finished: bool,
    aborted: bool,
}

type Logs = Arc<Mutex<HashMap<String, Arc<Mutex<Log>>>>>;

/// A verifier in front of a recording downstream, like the ZFS sink in
/// front of `zfs recv`.
struct RecordingSink {
    verifier: Verifier,
    next: u64,
    log: Arc<Mutex<Log>>,
}

impl Sink for RecordingSink {
    fn write(&mut self, start: u64, data: Bytes) -> Result<(), SinkError> {
        advance_contiguous(&mut self.next, start, data.len())?;
        let log = &self.log;
        self.verifier.push(data, &mut |b| {
            log.lock().expect("log").seen.extend_from_slice(b);
            Ok(())
        })
    }

    fn finish(&mut self, length: u64) -> Result<SinkOutcome, SinkError> {
        let log = &self.log;
        let guid = self.verifier.finish(length, &mut |b| {
            log.lock().expect("log").seen.extend_from_slice(b);
            Ok(())
        })?;
        log.lock().expect("log").finished = true;
        Ok(SinkOutcome {
            status: 0,
            snapshot_guid: guid,
            message: format!("recorded {length} bytes"),
        })
    }

    fn abort(&mut self, _why: &str) {
        self.log.lock().expect("log").aborted = true;
    }
}

struct RecordingFactory {
    logs: Logs,
}

impl SinkFactory for RecordingFactory {
    fn open(&self, offer: &Offer, _peer: &PublicKey) -> Result<Box<dyn Sink>, SinkError> {
        let log = Arc::new(Mutex::new(Log::default()));
        self.logs
            .lock()
            .expect("logs")
            .insert(offer.dataset.clone(), log.clone());
        Ok(Box::new(RecordingSink {
            verifier: Verifier::new(64 << 20),
            next: 0,
            log,
        }))
    }
}

/// A receiver whose every stream goes to a [`RecordingSink`].
fn start_recording_receiver(sender: &Identity) -> (Receiver, Logs) {
    let identity = Identity::generate().expect("keygen");
    let logs: Logs = Arc::default();
    let opts = ServeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        allowed: vec![sender.public_key()],
        link: LinkConfig::default(),
        grace: Duration::from_secs(60),
        max_sessions: 0,
        chunk_cache: None,
        limits: Default::default(),
    };
    let factory = Arc::new(RecordingFactory { logs: logs.clone() });
    let server = Server::bind(&identity, opts, factory).expect("bind");
    let addr = server.local_addr().expect("local addr");
    let rx = Receiver {
        server,
        identity,
        dir: tempfile::tempdir().expect("tempdir"),
        addr,
    };
    (rx, logs)
}

fn log_of(logs: &Logs, dataset: &str) -> Arc<Mutex<Log>> {
    logs.lock()
        .expect("logs")
        .get(dataset)
        .unwrap_or_else(|| panic!("no sink was opened for {dataset}"))
        .clone()
}

/// The downstream of `dataset` saw a verified prefix of `stream` that
/// stops before its END, and nothing was finished.
fn assert_end_held_back(logs: &Logs, dataset: &str, stream: &[u8]) {
    let log = log_of(logs, dataset);
    let log = log.lock().expect("log");
    assert!(
        log.seen.len() <= stream.len() - RECORD_SIZE,
        "{dataset}: {} of {} bytes reached the downstream, the END among them",
        log.seen.len(),
        stream.len()
    );
    assert_eq!(&log.seen[..], &stream[..log.seen.len()], "{dataset}");
    assert!(!log.finished, "{dataset}");
    assert!(log.aborted, "{dataset}: the failed session aborts its sink");
}

fn assert_delivered_whole(logs: &Logs, dataset: &str, stream: &[u8]) {
    let log = log_of(logs, dataset);
    let log = log.lock().expect("log");
    assert!(
        log.seen == stream,
        "{dataset}: the whole stream, END included"
    );
    assert!(log.finished, "{dataset}");
}

async fn expect_failed(rx: &mut Receiver) -> String {
    match next_event(rx, Duration::from_secs(20)).await {
        ServerEvent::Failed { error, .. } => error,
        e => panic!("expected a failed session, got {e:?}"),
    }
}

/// Speaks the protocol by hand: hello, `offer`, every byte of `stream`
/// in 64 KiB data frames, then `last` (a lying End, or an Abort).
/// Returns the receiver's last word.
async fn send_by_hand(
    sender: &Identity,
    rx: &Receiver,
    offer: Offer,
    stream: &[u8],
    last: Message,
) -> Option<Message> {
    let tls = sender
        .client_tls(rx.identity.public_key())
        .expect("client tls");
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = ep
        .connect(rx.addr, "fjord")
        .expect("connect")
        .await
        .expect("connected");
    let (mut s, mut r) = conn.open_bi().await.expect("stream");
    let hello = Message::Hello {
        min_version: fjord_proto::message::MIN_PROTOCOL_VERSION,
        max_version: fjord_proto::message::PROTOCOL_VERSION,
        sender_key: sender.public_key().0,
    };
    s.write_all(&hello.to_bytes()).await.expect("hello");
    s.write_all(&Message::Offer(offer).to_bytes())
        .await
        .expect("offer");
    let mut reader = MessageReader::new();
    match read_one(&mut r, &mut reader).await {
        Some(Message::Answer(Answer::Accept { .. })) => {}
        m => panic!("expected Accept, got {m:?}"),
    }
    let mut frames = 0;
    for (i, chunk) in stream.chunks(64 << 10).enumerate() {
        let start = (i * (64 << 10)) as u64;
        let frame = DataFrame {
            start,
            end: start + chunk.len() as u64,
            encoding: FrameEncoding::Raw,
            payload: Bytes::copy_from_slice(chunk),
        };
        s.write_all(&Message::Data(frame).to_bytes())
            .await
            .expect("data");
        frames += 1;
    }
    assert!(frames >= 64, "a stream of many frames ({frames})");
    s.write_all(&last.to_bytes()).await.expect("last message");
    // Read until the receiver's verdict (acks come first).
    let mut verdict = None;
    while let Some(m) = read_one(&mut r, &mut reader).await {
        if !matches!(m, Message::Ack { .. }) {
            verdict = Some(m);
            break;
        }
    }
    conn.close(0u32.into(), b"done");
    verdict
}

async fn read_one(r: &mut quinn::RecvStream, reader: &mut MessageReader) -> Option<Message> {
    loop {
        if let Ok(Some(m)) = reader.next_message() {
            return Some(m);
        }
        match tokio::time::timeout(Duration::from_secs(20), r.read_chunk(65536, true)).await {
            Ok(Ok(Some(c))) => reader.feed(&c.bytes),
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_end_or_an_abort_never_lets_the_end_through() {
    init_tracing();
    let sender = Identity::generate().expect("keygen");
    let (mut rx, logs) = start_recording_receiver(&sender);
    let stream = synthetic(6, 14);
    let len = stream.len() as u64;

    for (dataset, last) in [
        (
            "backup/short",
            Message::End {
                length: len - RECORD_SIZE as u64,
                receipt: Bytes::new(),
            },
        ),
        (
            "backup/long",
            Message::End {
                length: len + 1,
                receipt: Bytes::new(),
            },
        ),
        (
            "backup/aborted",
            Message::Abort {
                reason: "the sender gave up after the last byte".into(),
            },
        ),
    ] {
        let verdict = send_by_hand(&sender, &rx, offer(dataset), &stream, last).await;
        assert!(
            !matches!(verdict, Some(Message::Report(ref r)) if r.success),
            "{dataset}: {verdict:?}"
        );
        let error = expect_failed(&mut rx).await;
        eprintln!("{dataset}: {error}");
        assert_end_held_back(&logs, dataset, &stream);
    }

    // The honest End, by hand and by the client: the END goes through.
    let verdict = send_by_hand(
        &sender,
        &rx,
        offer("backup/honest"),
        &stream,
        Message::End {
            length: len,
            receipt: Bytes::new(),
        },
    )
    .await;
    assert!(
        matches!(verdict, Some(Message::Report(ref r)) if r.success),
        "{verdict:?}"
    );
    assert!(matches!(
        next_event(&mut rx, Duration::from_secs(20)).await,
        ServerEvent::Completed { .. }
    ));
    assert_delivered_whole(&logs, "backup/honest", &stream);
}

/// The pack of `stream` in 64 KiB frames.
fn pack(stream: &[u8]) -> Vec<u8> {
    let opts = PackOptions {
        frame_target: 64 << 10,
        ..PackOptions::default()
    };
    let mut out = Vec::new();
    fjord_pack::pack(
        std::io::Cursor::new(stream.to_vec()),
        &mut out,
        &opts,
        &mut fjord_pack::NoCache,
    )
    .expect("pack");
    out
}

/// Changes the receipt in the pack's END frame and seals the frame again
/// (a new BLAKE3 over header and receipt), so that only the receipt check
/// can catch it.
fn forge_receipt(pack: &mut [u8], change: impl FnOnce(&mut Receipt)) {
    let at = pack.len() - HEADER_LEN - END_LEN;
    let raw: [u8; HEADER_LEN] = pack[at..at + HEADER_LEN].try_into().expect("header");
    let mut header = FrameHeader::parse(&raw).expect("END frame header");
    assert_eq!(header.kind, FrameKind::End);
    let body = &mut pack[at + HEADER_LEN..];
    let mut receipt = Receipt::parse(body).expect("receipt");
    change(&mut receipt);
    body.copy_from_slice(&receipt.to_bytes());
    header.digest = header.compute_digest(body);
    pack[at..at + HEADER_LEN].copy_from_slice(&header.to_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_receipt_never_lets_the_end_through() {
    init_tracing();
    let sender = Identity::generate().expect("keygen");
    let (mut rx, logs) = start_recording_receiver(&sender);
    let stream = synthetic(4, 15);
    let honest = pack(&stream);
    // 4 MiB of incompressible blocks in 64 KiB frames.
    assert!(honest.len() > 60 * (64 << 10), "a pack of many frames");

    type Forgery = fn(&mut Receipt);
    let forgeries: [(&str, Forgery); 2] = [
        ("backup/digest", |r| r.digest[0] ^= 0x80),
        ("backup/length", |r| r.stream_len -= 1),
    ];
    for (dataset, forge) in forgeries {
        let mut forged = honest.clone();
        forge_receipt(&mut forged, forge);
        let mut opts = send_options(rx.addr, &rx, dataset);
        opts.offer.flags = offer_flags::PACKED;
        let err = send_bytes(&sender, opts, forged, Arc::new(Counters::default()))
            .await
            .expect_err("a forged receipt fails the transfer");
        eprintln!("{dataset}: {err}");
        assert!(err.to_string().contains("receipt"), "{dataset}: {err}");
        expect_failed(&mut rx).await;
        assert_end_held_back(&logs, dataset, &stream);
    }

    let mut opts = send_options(rx.addr, &rx, "backup/honest");
    opts.offer.flags = offer_flags::PACKED;
    let out = send_bytes(&sender, opts, honest, Arc::new(Counters::default()))
        .await
        .expect("the honest pack arrives");
    assert!(out.report.success);
    assert!(matches!(
        next_event(&mut rx, Duration::from_secs(20)).await,
        ServerEvent::Completed { .. }
    ));
    assert_delivered_whole(&logs, "backup/honest", &stream);
}

/// A sender that lost the receiver's report with its connection resumes
/// the session and is sent the same report again, for a stored stream
/// and for a failed one, instead of "unknown session" (which would make
/// it push again what is already stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_offer_of_an_ended_session_gets_its_report_again() {
    init_tracing();
    let sender = Identity::generate().expect("keygen");
    let (mut rx, _logs) = start_recording_receiver(&sender);
    let stream = synthetic(6, 3);
    let len = stream.len() as u64;
    let honest = Message::End {
        length: len,
        receipt: Bytes::new(),
    };
    let abort = Message::Abort {
        reason: "the sender gave up".into(),
    };
    for (dataset, last, success) in [
        ("backup/stored", honest, true),
        ("backup/gone", abort, false),
    ] {
        let first = offer(dataset);
        let verdict = send_by_hand(&sender, &rx, first.clone(), &stream, last).await;
        let _ = next_event(&mut rx, Duration::from_secs(20)).await;
        let mut again = first.clone();
        again.resuming = true;
        let raw = raw_offer(&sender, &rx, again).await;
        match (&raw.reply, success) {
            (Some(Message::Report(r)), true) => {
                assert!(r.success, "{dataset}: {r:?}");
                assert_eq!(r.delivered, len);
                assert_eq!(verdict, raw.reply, "the same report");
            }
            (Some(Message::Report(r)), false) => assert!(!r.success, "{dataset}: {r:?}"),
            (m, _) => panic!("{dataset}: expected the report again, got {m:?}"),
        }
        // A session never offered is still unknown.
        let mut unknown = offer(dataset);
        unknown.resuming = true;
        let raw = raw_offer(&sender, &rx, unknown).await;
        assert!(
            matches!(
                raw.reply,
                Some(Message::Refuse {
                    code: fjord_proto::message::RefuseCode::UnknownSession,
                    ..
                })
            ),
            "{:?}",
            raw.reply
        );
    }
}
