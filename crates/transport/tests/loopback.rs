//! Transfers over real UDP sockets on loopback, directly and through a
//! fault-injecting proxy.

mod support;

use bytes::BytesMut;
use fjord_proto::message::{Message, MessageReader, RefuseCode};
use fjord_transport::client::{Counters, SendError};
use fjord_transport::server::ServerEvent;
use fjord_transport::{Identity, LinkConfig};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

const MIB: u64 = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_and_synthetic_streams_arrive_byte_identical() {
    init_tracing();
    let sender = Identity::generate().unwrap();
    let mut rx = start_receiver(&[&sender], LinkConfig::default(), Duration::from_secs(60));
    let mut streams: Vec<(String, Vec<u8>)> = fjord_suite::valid_corpus()
        .into_iter()
        .map(|s| (format!("backup/{}", s.name), s.bytes))
        .collect();
    streams.push(("backup/synthetic".into(), synthetic(24, 1)));
    streams.push(("backup/tiny".into(), synthetic(0, 2)));
    for (dataset, bytes) in &streams {
        let opts = send_options(rx.addr, &rx, dataset);
        let out = send_bytes(&sender, opts, bytes.clone(), Arc::new(Counters::default()))
            .await
            .unwrap_or_else(|e| panic!("{dataset}: {e}"));
        assert!(out.report.success);
        assert_eq!(out.length, bytes.len() as u64);
        assert_eq!(out.stats.bytes_resent, 0);
        match next_event(&mut rx, Duration::from_secs(10)).await {
            ServerEvent::Completed { stats, .. } => assert_eq!(stats.delivered, bytes.len() as u64),
            e => panic!("{dataset}: {e:?}"),
        }
        let got = stored(rx.dir.path(), dataset).unwrap_or_else(|| panic!("{dataset} not stored"));
        assert!(got == *bytes, "{dataset} differs");
    }
    assert!(
        !files(rx.dir.path()).iter().any(|f| f.ends_with(".partial")),
        "no partial files remain"
    );
}

/// One short flap over real UDP, end to end: a blackhole of 2.5 s (past
/// the 1.5 s idle timeout, so the connection dies) with some loss and
/// reordering, then a resumption through the real driver. The claims about
/// flaps, long outages, grace expiry, takeovers and the replay window are
/// checked in virtual time in `tests/sim.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_flap_over_real_udp_resumes() {
    init_tracing();
    let sender = Identity::generate().unwrap();
    let mut rx = start_receiver(&[&sender], fast_link(), Duration::from_secs(60));
    let proxy = Proxy::start(rx.addr).await;
    proxy.set_loss(0.01, 0.02);
    let data = synthetic(8, 3);
    let mut opts = send_options(proxy.addr, &rx, "backup/flap");
    opts.link = fast_link();
    opts.link.rate_limit = Some(8 * MIB);
    opts.replay_window = 4 * MIB;
    let window = opts.replay_window;
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    let len = data.len() as u64;
    let expected = data.clone();
    let task = tokio::spawn(async move { send_bytes(&sender, opts, data, c).await });
    while counters.acked.load(Ordering::Relaxed) < len / 4 && !task.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.blackhole(Duration::from_millis(2500));
    let out = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("transfer finishes")
        .expect("task")
        .expect("transfer succeeds");
    let s = out.stats;
    eprintln!(
        "short flap: sent {} resent {} (max per resumption {}) reconnects {} (window {window})",
        s.bytes_sent, s.bytes_resent, s.resend_max, s.reconnects
    );
    assert!(s.reconnects >= 1, "the blackhole outlasts the idle timeout");
    assert!(s.resend_max <= window);
    assert_eq!(s.bytes_sent, out.length + s.bytes_resent);
    match next_event(&mut rx, Duration::from_secs(10)).await {
        ServerEvent::Completed { stats, .. } => {
            assert!(stats.resumes >= 1);
            assert_eq!(stats.delivered, out.length);
        }
        e => panic!("{e:?}"),
    }
    assert!(stored(rx.dir.path(), "backup/flap").expect("stored") == expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_are_refused_before_any_session() {
    init_tracing();
    let known = Identity::generate().unwrap();
    let stranger = Identity::generate().unwrap();
    let mut rx = start_receiver(&[&known], LinkConfig::default(), Duration::from_secs(60));
    // A sender the receiver does not know.
    let opts = send_options(rx.addr, &rx, "backup/stranger");
    let t = Instant::now();
    let err = send_bytes(
        &stranger,
        opts,
        synthetic(1, 6),
        Arc::new(Counters::default()),
    )
    .await
    .expect_err("refused");
    eprintln!("stranger: {err}");
    assert!(matches!(err, SendError::KeyRefused { .. }), "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "refusal is not retried"
    );
    assert!(matches!(
        next_event(&mut rx, Duration::from_secs(5)).await,
        ServerEvent::Refused { .. }
    ));
    // A receiver whose key is not the pinned one.
    let mut opts = send_options(rx.addr, &rx, "backup/impostor");
    opts.server_key = stranger.public_key();
    let err = send_bytes(&known, opts, synthetic(1, 6), Arc::new(Counters::default()))
        .await
        .expect_err("refused");
    eprintln!("impostor: {err}");
    assert!(matches!(err, SendError::KeyRefused { .. }), "{err}");
    assert_eq!(files(rx.dir.path()), Vec::<String>::new());
    assert_eq!(rx.server.sessions(), 0);
}

/// A raw client with a pinned key, for speaking wrong things.
async fn raw_client(
    id: &Identity,
    rx: &Receiver,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
) {
    let tls = id.client_tls(rx.identity.public_key()).unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = ep.connect(rx.addr, "fjord").unwrap().await.unwrap();
    let (s, r) = conn.open_bi().await.unwrap();
    (ep, conn, s, r)
}

async fn read_reply(r: &mut quinn::RecvStream) -> Option<Message> {
    let mut reader = MessageReader::new();
    loop {
        if let Ok(Some(m)) = reader.next_message() {
            return Some(m);
        }
        match r.read_chunk(65536, true).await {
            Ok(Some(c)) => reader.feed(&c.bytes),
            _ => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_protocol_versions_and_garbage_are_refused_cleanly() {
    init_tracing();
    let sender = Identity::generate().unwrap();
    let mut rx = start_receiver(&[&sender], LinkConfig::default(), Duration::from_secs(60));

    // Garbage datagrams at the QUIC port.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..500usize {
        let len = 1 + fastrand::usize(..1400);
        let mut junk: Vec<u8> = (0..len).map(|_| fastrand::u8(..)).collect();
        if i % 3 == 0 {
            junk[0] |= 0xc0; // looks like a QUIC long header
        }
        sock.send_to(&junk, rx.addr).await.unwrap();
    }

    // A hello with a protocol version from the future.
    let (_ep, conn, mut s, mut r) = raw_client(&sender, &rx).await;
    let hello = Message::Hello {
        min_version: 99,
        max_version: 120,
        sender_key: sender.public_key().0,
    };
    s.write_all(&hello.to_bytes()).await.unwrap();
    match read_reply(&mut r).await {
        Some(Message::Refuse {
            code: RefuseCode::UnsupportedVersion,
            reason,
        }) => assert!(reason.contains("upgrade"), "{reason}"),
        m => panic!("{m:?}"),
    }
    let _ = conn.closed().await;
    assert!(matches!(
        next_event(&mut rx, Duration::from_secs(5)).await,
        ServerEvent::Refused { .. }
    ));

    // Garbage on an authenticated stream.
    let (_ep2, conn2, mut s2, mut r2) = raw_client(&sender, &rx).await;
    let mut junk = BytesMut::new();
    junk.extend_from_slice(&[0, 0, 0, 5, 0xee, 1, 2, 3, 4]);
    s2.write_all(&junk).await.unwrap();
    assert!(matches!(
        read_reply(&mut r2).await,
        Some(Message::Refuse { .. })
    ));
    let _ = conn2.closed().await;
    assert!(matches!(
        next_event(&mut rx, Duration::from_secs(5)).await,
        ServerEvent::Refused { .. }
    ));

    // The receiver still works.
    let data = synthetic(1, 7);
    let opts = send_options(rx.addr, &rx, "backup/after");
    send_bytes(&sender, opts, data.clone(), Arc::new(Counters::default()))
        .await
        .expect("a good transfer still works");
    assert!(stored(rx.dir.path(), "backup/after").expect("stored") == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_stream_is_refused_and_not_stored() {
    init_tracing();
    let sender = Identity::generate().unwrap();
    let mut rx = start_receiver(&[&sender], LinkConfig::default(), Duration::from_secs(60));
    let mut data = synthetic(2, 8);
    let at = data.len() / 2;
    data[at] ^= 0x40;
    let opts = send_options(rx.addr, &rx, "backup/damaged");
    let err = send_bytes(&sender, opts, data, Arc::new(Counters::default()))
        .await
        .expect_err("damage is refused");
    eprintln!("damaged: {err}");
    assert!(err.to_string().contains("checksum"), "{err}");
    assert!(matches!(
        next_event(&mut rx, Duration::from_secs(5)).await,
        ServerEvent::Failed { .. }
    ));
    assert_eq!(files(rx.dir.path()), Vec::<String>::new());
}

/// Loopback throughput of one transfer (sender, receiver, verification and
/// file sink in one process). Run it in release:
/// `cargo test --release -p fjord-transport --test loopback -- --ignored --nocapture throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check; run in release"]
async fn throughput() {
    init_tracing();
    let mib: usize = std::env::var("FJORD_THROUGHPUT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let sender = Identity::generate().unwrap();
    let mut rx = start_receiver(&[&sender], LinkConfig::default(), Duration::from_secs(60));
    let data = synthetic(mib, 9);
    let len = data.len();
    let opts = send_options(rx.addr, &rx, "backup/throughput");
    let t = Instant::now();
    let out = send_bytes(&sender, opts, data, Arc::new(Counters::default()))
        .await
        .expect("transfer");
    let secs = t.elapsed().as_secs_f64();
    assert!(matches!(
        next_event(&mut rx, Duration::from_secs(10)).await,
        ServerEvent::Completed { .. }
    ));
    eprintln!(
        "throughput: {len} bytes in {secs:.2}s = {:.0} MB/s ({:.0} MiB/s); resent {}",
        len as f64 / secs / 1e6,
        len as f64 / secs / (1 << 20) as f64,
        out.stats.bytes_resent
    );
}
