//! One connection per DR node, over real QUIC on loopback: a job's
//! transfers and control requests are streams of one [`Link`] (one
//! handshake, counted by the server); a connection killed mid-job is
//! re-established once for all of its transfers, which complete
//! byte-identical; and a client cannot hold more streams open on one
//! connection than the receiver grants.

mod support;

use fjord_proto::admission::{Limits, ServerCounters};
use fjord_proto::message::Message;
use fjord_proto::{BackoffConfig, Request, Response};
use fjord_sink::FileSinkFactory;
use fjord_transport::client::{Counters, Link, LinkOptions, TransferOptions};
use fjord_transport::Identity;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::net::UdpSocket;

/// A failure guard, never a measurement.
const GUARD: Duration = Duration::from_secs(90);

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    ServerCounters::get(c)
}

fn receiver(sender: &Identity, limits: Limits) -> Receiver {
    start_receiver_with(
        &[sender],
        fast_link(),
        Duration::from_secs(60),
        limits,
        |dir| Arc::new(FileSinkFactory::new(dir.to_path_buf(), 256 << 20)),
    )
}

fn link_to(sender: &Identity, rx: &Receiver, to: SocketAddr) -> Link {
    let mut opts = LinkOptions::new(to, rx.identity.public_key());
    opts.link = fast_link();
    Link::new(sender, opts).expect("link")
}

fn transfer(dataset: &str, rate_limit: Option<u64>) -> TransferOptions {
    let mut t = TransferOptions::new(offer(dataset));
    t.grace = Duration::from_secs(60);
    t.rate_limit = rate_limit;
    t.backoff = BackoffConfig {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_and_control_requests_share_one_connection() {
    init_tracing();
    let sender = Identity::generate().unwrap();
    let rx = receiver(&sender, Limits::default());
    let link = link_to(&sender, &rx, rx.addr);
    let datasets: Vec<String> = (0..4).map(|i| format!("backup/fs{i}")).collect();
    let mut jobs = Vec::new();
    for (i, d) in datasets.iter().enumerate() {
        let link = link.clone();
        let d = d.clone();
        jobs.push(tokio::spawn(async move {
            // As a packed job does: the inventory, then the transfer.
            let inventory = link
                .chunk_inventory(
                    fjord_transport::identity::random_session_id(),
                    Duration::from_secs(30),
                )
                .await
                .expect("inventory");
            assert!(inventory.is_empty(), "no chunk cache, no promise");
            let data = synthetic(4, i as u64 + 1);
            let out = link
                .send(
                    transfer(&d, None),
                    std::io::Cursor::new(data.clone()),
                    Arc::new(Counters::default()),
                )
                .await
                .expect("transfer");
            assert_eq!(out.length, data.len() as u64);
            (d, data)
        }));
    }
    let asks: Vec<_> = (0..2)
        .map(|i| {
            let link = link.clone();
            tokio::spawn(async move {
                link.request(
                    &[Request::TargetState {
                        dataset: format!("backup/fs{i}"),
                    }],
                    Duration::from_secs(30),
                )
                .await
                .expect("answered")
            })
        })
        .collect();
    for a in asks {
        let answers = a.await.expect("task");
        // The file sink has no ZFS target: answered, as a failure.
        assert!(
            matches!(answers.as_slice(), [Response::Failed { .. }]),
            "{answers:?}"
        );
    }
    for j in jobs {
        let (d, data) = j.await.expect("task");
        assert!(stored(rx.dir.path(), &d).expect("stored") == data, "{d}");
    }
    let c = rx.server.counters();
    assert_eq!(link.connects(), 1, "one handshake on the sender's side");
    assert_eq!(count(&c.connections_accepted), 1, "one connection admitted");
    assert_eq!(
        count(&c.streams_accepted),
        4 + 4 + 2,
        "a stream per transfer, per inventory and per request batch"
    );
    assert_eq!(rx.server.connections(), 1, "the link stays open for more");
    link.close().await;
    wait_until("the link's connection is gone", GUARD, || {
        rx.server.connections() == 0
    })
    .await;
}

/// A UDP relay that drops everything while `dead` is set.
struct Relay {
    addr: SocketAddr,
    dead: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    async fn start(server: SocketAddr) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let back = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = front.local_addr().expect("addr");
        let dead = Arc::new(AtomicBool::new(false));
        let d = dead.clone();
        let task = tokio::spawn(async move {
            let mut client = None;
            let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { return };
                        client = Some(from);
                        if !d.load(Ordering::Relaxed) {
                            let _ = back.send_to(&a[..n], server).await;
                        }
                    }
                    r = back.recv_from(&mut b) => {
                        let Ok((n, _)) = r else { return };
                        if let (Some(c), false) = (client, d.load(Ordering::Relaxed)) {
                            let _ = front.send_to(&b[..n], c).await;
                        }
                    }
                }
            }
        });
        Relay { addr, dead, task }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_mid_job_is_reestablished_once_for_all_transfers() {
    init_tracing();
    let sender = Identity::generate().unwrap();
    let rx = receiver(&sender, Limits::default());
    let relay = Relay::start(rx.addr).await;
    let link = link_to(&sender, &rx, relay.addr);
    let mut jobs = Vec::new();
    let mut counters = Vec::new();
    for i in 0..4u64 {
        let link = link.clone();
        let c = Arc::new(Counters::default());
        counters.push(c.clone());
        jobs.push(tokio::spawn(async move {
            let d = format!("backup/k{i}");
            let data = synthetic(8, 100 + i);
            // 2 MiB/s each: the transfers are still running at the kill.
            let out = link
                .send(
                    transfer(&d, Some(2 << 20)),
                    std::io::Cursor::new(data.clone()),
                    c,
                )
                .await
                .expect("transfer");
            (d, data, out)
        }));
    }
    wait_until("every transfer has bytes acknowledged", GUARD, || {
        counters.iter().all(|c| c.acked.load(Ordering::Relaxed) > 0)
    })
    .await;
    assert_eq!(link.connects(), 1);
    // Kill the connection: nothing passes until both ends gave it up
    // (idle timeout 1.5 s).
    relay.dead.store(true, Ordering::Relaxed);
    wait_until("the receiver dropped the connection", GUARD, || {
        rx.server.connections() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    relay.dead.store(false, Ordering::Relaxed);
    for j in jobs {
        let (d, data, out) = j.await.expect("task");
        assert!(stored(rx.dir.path(), &d).expect("stored") == data, "{d}");
        assert_eq!(out.stats.reconnects, 1, "{d} resumed once");
        assert!(out.report.success, "{d}");
    }
    let c = rx.server.counters();
    assert_eq!(link.connects(), 2, "re-established once, for all four");
    assert_eq!(count(&c.connections_accepted), 2);
    assert_eq!(rx.server.sessions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_open_more_streams_than_granted() {
    init_tracing();
    let sender = Identity::generate().unwrap();
    let limits = Limits {
        per_client_sessions: 2,
        per_client_requests: 1,
        ..Limits::default()
    };
    assert_eq!(limits.streams_per_connection(), 3);
    let rx = receiver(&sender, limits);
    let (_ep, conn) = raw_connect(&sender, &rx).await;
    let hello = Message::Hello {
        min_version: fjord_proto::message::MIN_PROTOCOL_VERSION,
        max_version: fjord_proto::message::PROTOCOL_VERSION,
        sender_key: sender.public_key().0,
    };
    // Three streams that say hello and then nothing.
    let mut open = Vec::new();
    for _ in 0..3 {
        let (mut send, recv) = conn.open_bi().await.expect("within the grant");
        send.write_all(&hello.to_bytes()).await.expect("hello");
        open.push((send, recv));
    }
    let c = rx.server.counters();
    wait_until("the three streams are accepted", GUARD, || {
        count(&c.streams_accepted) == 3
    })
    .await;
    // A fourth is not granted while they are open.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), conn.open_bi())
            .await
            .is_err(),
        "a fourth stream must wait for credit"
    );
    assert_eq!(count(&c.streams_accepted), 3);
    // One ends: its credit comes back.
    let (mut send, mut recv) = open.remove(0);
    let _ = send.reset(0u32.into());
    let _ = recv.stop(0u32.into());
    let (mut send, _recv) = tokio::time::timeout(GUARD, conn.open_bi())
        .await
        .expect("credit back in time")
        .expect("stream");
    send.write_all(&hello.to_bytes()).await.expect("hello");
    wait_until("the fourth stream is accepted", GUARD, || {
        count(&c.streams_accepted) == 4
    })
    .await;
    assert_eq!(rx.server.connections(), 1);
}
