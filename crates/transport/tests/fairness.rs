//! Fair sharing and no leaks, over real QUIC on loopback: busy answers
//! are retried until every sender got its turn; a killed sender's
//! detached session is replaced by the next one of its key; a failing
//! sender's abort frees its session at once; one key at its limits does
//! not stop another; an offer naming someone else's session leaves it
//! alone; a connection that sends no offer is closed at the deadline.

mod support;

use fjord_proto::admission::{Limits, ServerCounters};
use fjord_proto::message::{Message, RefuseCode};
use fjord_proto::{close_code, BackoffConfig, SessionError};
use fjord_sink::SinkFactory;
use fjord_transport::client::{Counters, SendError};
use fjord_transport::server::ServerEvent;
use fjord_transport::{Identity, LinkConfig};
use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const MIB: u64 = 1 << 20;
/// A failure guard, never a measurement.
const GUARD: Duration = Duration::from_secs(60);

fn exclusive_receiver(
    allowed: &[&Identity],
    link: LinkConfig,
    grace: Duration,
    limits: Limits,
) -> (Receiver, Arc<Mutex<Exclusive>>) {
    let mut state = None;
    let rx = start_receiver_with(allowed, link, grace, limits, |dir| {
        let f = ExclusiveFactory::new(dir);
        state = Some(f.state.clone());
        Arc::new(f) as Arc<dyn SinkFactory>
    });
    (rx, state.expect("factory made"))
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    ServerCounters::get(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_senders_to_one_dataset_all_finish_one_after_another() {
    init_tracing();
    let keys: Vec<Identity> = (0..4).map(|_| Identity::generate().unwrap()).collect();
    let allowed: Vec<&Identity> = keys.iter().collect();
    let (mut rx, state) = exclusive_receiver(
        &allowed,
        LinkConfig::default(),
        Duration::from_secs(60),
        Limits::default(),
    );
    let keys: Vec<Arc<Identity>> = keys.into_iter().map(Arc::new).collect();
    let mut tasks = Vec::new();
    for i in 0..20u64 {
        // Five senders per key: the same key's are kept apart by the
        // receiver, different keys' by the sink (like `zfs recv`).
        let id = keys[(i % 4) as usize].clone();
        let mut opts = send_options(rx.addr, &rx, "backup/shared");
        opts.offer.to.name = format!("tank/fs@s{i:02}");
        opts.backoff = BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        };
        opts.grace = Duration::from_secs(300);
        let data = synthetic(1, 100 + i);
        tasks.push(tokio::spawn(async move {
            send_bytes(&id, opts, data, Arc::new(Counters::default())).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let out = tokio::time::timeout(Duration::from_secs(240), t)
            .await
            .expect("every sender finishes")
            .expect("task")
            .unwrap_or_else(|e| panic!("sender {i}: {e}"));
        assert!(out.report.success);
    }
    let mut completed = 0;
    while completed < 20 {
        match next_event(&mut rx, Duration::from_secs(10)).await {
            ServerEvent::Completed { .. } => completed += 1,
            ServerEvent::Refused { .. } => {}
            e => panic!("{e:?}"),
        }
    }
    let st = state.lock().unwrap();
    let c = rx.server.counters();
    eprintln!(
        "20 senders: sink busy {} times, admission busy {} times",
        st.busy,
        count(&c.refused_busy)
    );
    assert_eq!(st.finished, 20);
    assert_eq!(st.max_open, 1, "one after another");
    let stored = files(rx.dir.path());
    assert_eq!(stored.len(), 20, "{stored:?}");
    assert!(!stored.iter().any(|f| f.ends_with(".partial")));
    assert_eq!(rx.server.sessions(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sender_is_replaced_by_the_next_session_of_its_key() {
    init_tracing();
    let sender = Arc::new(Identity::generate().unwrap());
    // The grace is far longer than the guard: only the replacement can
    // free the slot in time.
    let grace = Duration::from_secs(600);
    let (mut rx, state) = exclusive_receiver(&[&sender], fast_link(), grace, Limits::default());
    let proxy = Proxy::start(rx.addr).await;
    let mut opts = send_options(proxy.addr, &rx, "backup/cron");
    opts.link = fast_link();
    opts.link.rate_limit = Some(2 * MIB);
    opts.offer.to.name = "tank/fs@first".into();
    let old_session = opts.offer.session;
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    let id = sender.clone();
    let task = tokio::spawn(async move { send_bytes(&id, opts, synthetic(16, 20), c).await });
    wait_until("the first push is under way", GUARD, || {
        counters.acked.load(Ordering::Relaxed) >= MIB
    })
    .await;
    // kill -9: not a packet more, no goodbye.
    proxy.blackhole(Duration::from_secs(3600));
    task.abort();
    // The next cron push: same key, same dataset, a new session.
    let mut opts = send_options(rx.addr, &rx, "backup/cron");
    opts.link = fast_link();
    opts.offer.to.name = "tank/fs@second".into();
    let data = synthetic(2, 21);
    let out = tokio::time::timeout(
        GUARD,
        send_bytes(&sender, opts, data, Arc::new(Counters::default())),
    )
    .await
    .expect("the next push does not wait for the grace period")
    .expect("the next push succeeds");
    assert!(out.report.success);
    let c = rx.server.counters();
    assert_eq!(count(&c.replaced_detached), 1);
    let mut replaced = false;
    let mut completed = false;
    while !(replaced && completed) {
        match next_event(&mut rx, Duration::from_secs(10)).await {
            ServerEvent::Failed { session, error } => {
                assert_eq!(session, old_session);
                assert!(error.contains("replaced"), "{error}");
                replaced = true;
            }
            ServerEvent::Completed { .. } => completed = true,
            ServerEvent::Refused { .. } => {}
        }
    }
    let st = state.lock().unwrap();
    assert_eq!((st.aborted, st.finished, st.max_open), (1, 1, 1));
    assert_eq!(files(rx.dir.path()), vec!["backup_cron@second.zsend"]);
    assert_eq!(rx.server.sessions(), 0);
}

/// A stream that fails after `ok` bytes, like `zfs send` on a damaged pool.
struct FailingSource {
    data: std::io::Cursor<Vec<u8>>,
    ok: u64,
}

impl Read for FailingSource {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.ok.saturating_sub(self.data.position()) as usize;
        if left == 0 {
            return Err(std::io::Error::other("I/O error reading the pool"));
        }
        let n = buf.len().min(left);
        self.data.read(&mut buf[..n])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sender_aborts_and_the_receiver_frees_the_slot_at_once() {
    init_tracing();
    let sender = Identity::generate().unwrap();
    // Idle timeout and grace far beyond the guard: only the abort can end
    // the session in time.
    let link = LinkConfig::default().with_idle_timeout(Duration::from_secs(120));
    let (mut rx, state) = exclusive_receiver(
        &[&sender],
        link.clone(),
        Duration::from_secs(600),
        Limits::default(),
    );
    let mut opts = send_options(rx.addr, &rx, "backup/damaged");
    opts.link = link.clone();
    let source = FailingSource {
        data: std::io::Cursor::new(synthetic(8, 30)),
        ok: 3 * MIB,
    };
    let err = fjord_transport::client::send(&sender, opts, source, Arc::new(Counters::default()))
        .await
        .expect_err("the source fails");
    assert!(matches!(err, SendError::Source { .. }), "{err}");
    wait_until(
        "the receiver ended the session",
        Duration::from_secs(20),
        || rx.server.sessions() == 0,
    )
    .await;
    match next_event(&mut rx, Duration::from_secs(10)).await {
        ServerEvent::Failed { error, .. } => {
            assert!(error.contains("aborted"), "{error}");
            assert!(error.contains("I/O error reading the pool"), "{error}");
        }
        e => panic!("{e:?}"),
    }
    assert_eq!(count(&rx.server.counters().aborted_by_sender), 1);
    assert_eq!(state.lock().unwrap().aborted, 1);
    assert_eq!(files(rx.dir.path()), Vec::<String>::new());
    // The dataset takes the next push at once.
    let mut opts = send_options(rx.addr, &rx, "backup/damaged");
    opts.link = link;
    let data = synthetic(1, 31);
    send_bytes(&sender, opts, data.clone(), Arc::new(Counters::default()))
        .await
        .expect("the next push");
    assert!(stored(rx.dir.path(), "backup/damaged").expect("stored") == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_at_its_limits_does_not_stop_another_key() {
    init_tracing();
    let greedy = Identity::generate().unwrap();
    let other = Identity::generate().unwrap();
    let limits = Limits {
        per_client_sessions: 2,
        per_client_connections: 3,
        ..Limits::default()
    };
    let mut rx = start_receiver_with(
        &[&greedy, &other],
        LinkConfig::default(),
        Duration::from_secs(60),
        limits,
        |dir| Arc::new(ExclusiveFactory::new(dir)),
    );
    // Two sessions that send nothing: slow senders.
    let mut held = Vec::new();
    for d in ["backup/g1", "backup/g2"] {
        let s = raw_offer(&greedy, &rx, offer(d)).await;
        assert!(matches!(s.reply, Some(Message::Answer(_))), "{:?}", s.reply);
        held.push(s);
    }
    let third = raw_offer(&greedy, &rx, offer("backup/g3")).await;
    match &third.reply {
        Some(Message::Refuse {
            code: RefuseCode::Busy,
            reason,
        }) => assert!(reason.contains("2 sessions"), "{reason}"),
        r => panic!("{r:?}"),
    }
    drop(third);
    // The other key is served meanwhile.
    let data = synthetic(1, 40);
    let opts = send_options(rx.addr, &rx, "backup/other");
    send_bytes(&other, opts, data.clone(), Arc::new(Counters::default()))
        .await
        .expect("the other key's push");
    assert!(stored(rx.dir.path(), "backup/other").expect("stored") == data);
    // Connections: the greedy key holds two, may open a third, not a fourth.
    wait_until("the refused connection is gone", GUARD, || {
        rx.server.connections() == 2
    })
    .await;
    let (_ep3, _third_conn) = raw_connect(&greedy, &rx).await;
    wait_until("the third connection is counted", GUARD, || {
        rx.server.connections() == 3
    })
    .await;
    let (_ep4, fourth) = raw_connect(&greedy, &rx).await;
    match tokio::time::timeout(GUARD, fourth.closed())
        .await
        .expect("closed")
    {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, close_code::BUSY.into());
            let reason = String::from_utf8_lossy(&c.reason);
            assert!(reason.contains("3 connections"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    let c = rx.server.counters();
    assert_eq!(count(&c.refused_limit), 2);
    assert_eq!(rx.server.sessions(), 2);
    // The refusals were events too.
    let mut refused = 0;
    while refused < 2 {
        if let ServerEvent::Refused { .. } = next_event(&mut rx, Duration::from_secs(10)).await {
            refused += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_naming_someone_elses_session_leaves_it_alone() {
    init_tracing();
    let owner = Arc::new(Identity::generate().unwrap());
    let hostile = Identity::generate().unwrap();
    let mut rx = start_receiver(
        &[&owner, &hostile],
        LinkConfig::default(),
        Duration::from_secs(60),
    );
    let mut opts = send_options(rx.addr, &rx, "backup/victim");
    opts.link.rate_limit = Some(2 * MIB);
    let victim = opts.offer.clone();
    let counters = Arc::new(Counters::default());
    let c = counters.clone();
    // About 8 s at this rate: under way while the offers below arrive.
    let data = synthetic(16, 50);
    let expected = data.clone();
    let id = owner.clone();
    let task = tokio::spawn(async move { send_bytes(&id, opts, data, c).await });
    wait_until("the transfer is under way", GUARD, || {
        counters.acked.load(Ordering::Relaxed) > 0
    })
    .await;
    // Another valid key that learned the session id.
    let mut stolen = victim.clone();
    stolen.resuming = true;
    let s = raw_offer(&hostile, &rx, stolen.clone()).await;
    match &s.reply {
        Some(Message::Refuse {
            code: RefuseCode::UnknownSession,
            ..
        }) => {}
        r => panic!("{r:?}"),
    }
    // The owner's key with another offer under that id.
    let mut other = stolen;
    other.dataset = "backup/elsewhere".into();
    let s = raw_offer(&owner, &rx, other).await;
    match &s.reply {
        Some(Message::Refuse {
            code: RefuseCode::Other,
            reason,
        }) => assert!(reason.contains("differs"), "{reason}"),
        r => panic!("{r:?}"),
    }
    let out = tokio::time::timeout(GUARD, task)
        .await
        .expect("finishes")
        .expect("task")
        .expect("the transfer was not disturbed");
    assert_eq!(out.stats.reconnects, 0, "its connection was never closed");
    assert_eq!(count(&rx.server.counters().takeovers_refused), 2);
    loop {
        match next_event(&mut rx, Duration::from_secs(10)).await {
            ServerEvent::Completed { stats, .. } => {
                assert_eq!(stats.resumes, 0);
                break;
            }
            ServerEvent::Refused { .. } => {}
            e => panic!("{e:?}"),
        }
    }
    assert!(stored(rx.dir.path(), "backup/victim").expect("stored") == expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_an_offer_is_closed_at_the_deadline() {
    init_tracing();
    let sender = Identity::generate().unwrap();
    let limits = Limits {
        offer_deadline: Duration::from_millis(500),
        ..Limits::default()
    };
    let rx = start_receiver_with(
        &[&sender],
        LinkConfig::default(),
        Duration::from_secs(60),
        limits,
        |dir| Arc::new(ExclusiveFactory::new(dir)),
    );
    // No stream at all.
    let (_ep, conn) = raw_connect(&sender, &rx).await;
    match tokio::time::timeout(GUARD, conn.closed())
        .await
        .expect("closed")
    {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, close_code::PROTOCOL.into());
            assert!(String::from_utf8_lossy(&c.reason).contains("no stream"));
        }
        e => panic!("{e:?}"),
    }
    // A hello, then nothing.
    let (_ep2, conn2) = raw_connect(&sender, &rx).await;
    let (mut send, mut recv) = conn2.open_bi().await.unwrap();
    let hello = Message::Hello {
        min_version: 1,
        max_version: 1,
        sender_key: sender.public_key().0,
    };
    send.write_all(&hello.to_bytes()).await.unwrap();
    match tokio::time::timeout(GUARD, read_reply(&mut recv))
        .await
        .expect("reply")
    {
        Some(Message::Refuse { reason, .. }) => assert!(reason.contains("no offer"), "{reason}"),
        r => panic!("{r:?}"),
    }
    assert_eq!(count(&rx.server.counters().offer_deadline_expired), 2);
    wait_until("no connection is left", GUARD, || {
        rx.server.connections() == 0
    })
    .await;
    // The deadline only concerns the opening: a real push still works.
    let data = synthetic(1, 60);
    let opts = send_options(rx.addr, &rx, "backup/late");
    send_bytes(&sender, opts, data, Arc::new(Counters::default()))
        .await
        .expect("push");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_busy_for_the_whole_grace_says_so() {
    init_tracing();
    let sender = Identity::generate().unwrap();
    let rx = start_receiver(&[&sender], LinkConfig::default(), Duration::from_secs(60));
    // Holds the dataset and never sends.
    let s = raw_offer(&sender, &rx, offer("backup/held")).await;
    assert!(matches!(s.reply, Some(Message::Answer(_))));
    let mut opts = send_options(rx.addr, &rx, "backup/held");
    opts.grace = Duration::from_secs(2);
    let err = tokio::time::timeout(
        GUARD,
        send_bytes(
            &sender,
            opts,
            synthetic(1, 70),
            Arc::new(Counters::default()),
        ),
    )
    .await
    .expect("gives up")
    .expect_err("busy all along");
    assert!(
        matches!(err, SendError::Session(SessionError::ReceiverBusy { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("busy"), "{err}");
    drop(s);
}
