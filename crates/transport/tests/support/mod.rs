//! Test helpers: identities, a server on loopback, synthetic streams, and a
//! fault-injecting UDP proxy (blackholes, loss, reordering, port changes).
#![allow(dead_code)]

use bytes::Bytes;
use fjord_proto::admission::Limits;
use fjord_proto::message::{Message, MessageReader};
use fjord_proto::{BackoffConfig, Offer, PublicKey, Snapshot};
use fjord_sink::{FileSinkFactory, Sink, SinkError, SinkFactory, SinkOutcome};
use fjord_stream::builder::StreamBuilder;
use fjord_stream::ByteOrder;
use fjord_transport::client::{Counters, SendError, SendOptions, SendOutcome};
use fjord_transport::server::{ServeOptions, Server, ServerEvent};
use fjord_transport::{Identity, LinkConfig};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FJORD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A link that notices a dead path quickly, for flap tests.
pub fn fast_link() -> LinkConfig {
    LinkConfig {
        idle_timeout: Duration::from_millis(1500),
        keep_alive: Duration::from_millis(300),
        ..LinkConfig::default()
    }
}

pub struct Receiver {
    pub server: Server,
    pub identity: Identity,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
}

pub fn start_receiver(allowed: &[&Identity], link: LinkConfig, grace: Duration) -> Receiver {
    start_receiver_with_cache(allowed, link, grace, None)
}

pub fn start_receiver_with_cache(
    allowed: &[&Identity],
    link: LinkConfig,
    grace: Duration,
    chunk_cache: Option<fjord_sink::chunk_cache::ChunkCacheOptions>,
) -> Receiver {
    let identity = Identity::generate().expect("keygen");
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = ServeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        allowed: allowed.iter().map(|i| i.public_key()).collect(),
        link,
        grace,
        max_sessions: 0,
        limits: Default::default(),
        chunk_cache,
    };
    let factory = Arc::new(FileSinkFactory::new(dir.path().to_path_buf(), 256 << 20));
    let server = Server::bind(&identity, opts, factory).expect("bind");
    let addr = server.local_addr().expect("local addr");
    Receiver {
        server,
        identity,
        dir,
        addr,
    }
}

/// A receiver with `limits` whose sink factory is made from the stream
/// directory by `factory`.
pub fn start_receiver_with(
    allowed: &[&Identity],
    link: LinkConfig,
    grace: Duration,
    limits: Limits,
    factory: impl FnOnce(&Path) -> Arc<dyn SinkFactory>,
) -> Receiver {
    let identity = Identity::generate().expect("keygen");
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = ServeOptions {
        link,
        grace,
        limits,
        ..ServeOptions::new(
            "127.0.0.1:0".parse().expect("addr"),
            allowed.iter().map(|i| i.public_key()).collect(),
        )
    };
    let server = Server::bind(&identity, opts, factory(dir.path())).expect("bind");
    let addr = server.local_addr().expect("local addr");
    Receiver {
        server,
        identity,
        dir,
        addr,
    }
}

/// What an [`ExclusiveFactory`] saw.
#[derive(Default, Debug)]
pub struct Exclusive {
    /// Datasets with an open sink.
    pub receiving: HashSet<String>,
    /// Most sinks open at once.
    pub max_open: usize,
    /// Opens refused because the dataset was receiving.
    pub busy: u64,
    /// Sinks finished successfully.
    pub finished: u64,
    /// Sinks aborted.
    pub aborted: u64,
}

/// The file sink, but like `zfs recv` (and fjord-recv's ZFS target): a
/// second open of a dataset that is still receiving is refused with
/// `SinkError::Busy` until the first sink is gone.
pub struct ExclusiveFactory {
    inner: FileSinkFactory,
    pub state: Arc<Mutex<Exclusive>>,
}

impl ExclusiveFactory {
    pub fn new(dir: &Path) -> ExclusiveFactory {
        ExclusiveFactory {
            inner: FileSinkFactory::new(dir.to_path_buf(), 256 << 20),
            state: Arc::default(),
        }
    }
}

impl SinkFactory for ExclusiveFactory {
    fn open(&self, offer: &Offer, peer: &PublicKey) -> Result<Box<dyn Sink>, SinkError> {
        {
            let mut st = self.state.lock().expect("state");
            if !st.receiving.insert(offer.dataset.clone()) {
                st.busy += 1;
                return Err(SinkError::Busy(format!(
                    "a stream into {} is already being received",
                    offer.dataset
                )));
            }
            st.max_open = st.max_open.max(st.receiving.len());
        }
        match self.inner.open(offer, peer) {
            Ok(inner) => Ok(Box::new(ExclusiveSink {
                inner,
                dataset: offer.dataset.clone(),
                state: self.state.clone(),
            })),
            Err(e) => {
                self.state
                    .lock()
                    .expect("state")
                    .receiving
                    .remove(&offer.dataset);
                Err(e)
            }
        }
    }
}

struct ExclusiveSink {
    inner: Box<dyn Sink>,
    dataset: String,
    state: Arc<Mutex<Exclusive>>,
}

impl Sink for ExclusiveSink {
    fn write(&mut self, start: u64, data: Bytes) -> Result<(), SinkError> {
        self.inner.write(start, data)
    }

    fn finish(&mut self, length: u64) -> Result<SinkOutcome, SinkError> {
        let out = self.inner.finish(length)?;
        self.state.lock().expect("state").finished += 1;
        Ok(out)
    }

    fn abort(&mut self, why: &str) {
        self.inner.abort(why);
        self.state.lock().expect("state").aborted += 1;
    }
}

impl Drop for ExclusiveSink {
    fn drop(&mut self) {
        self.state
            .lock()
            .expect("state")
            .receiving
            .remove(&self.dataset);
    }
}

/// Waits (polling) until `cond` holds; panics after `within`.
pub async fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < within, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A bare QUIC connection with a pinned key, for speaking by hand.
pub async fn raw_connect(id: &Identity, rx: &Receiver) -> (quinn::Endpoint, quinn::Connection) {
    let tls = id.client_tls(rx.identity.public_key()).expect("tls");
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic");
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = ep
        .connect(rx.addr, "fjord")
        .expect("connect")
        .await
        .expect("handshake");
    (ep, conn)
}

/// The next message on `r`, or None when the stream ends.
pub async fn read_reply(r: &mut quinn::RecvStream) -> Option<Message> {
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

/// A hand-made session: hello and `offer` as `id`; returns the
/// connection, its streams and the receiver's answer.
pub struct RawSession {
    pub endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub reply: Option<Message>,
}

pub async fn raw_offer(id: &Identity, rx: &Receiver, offer: Offer) -> RawSession {
    let (endpoint, conn) = raw_connect(id, rx).await;
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    let hello = Message::Hello {
        min_version: fjord_proto::message::MIN_PROTOCOL_VERSION,
        max_version: fjord_proto::message::PROTOCOL_VERSION,
        sender_key: id.public_key().0,
    };
    send.write_all(&hello.to_bytes()).await.expect("hello");
    send.write_all(&Message::Offer(offer).to_bytes())
        .await
        .expect("offer");
    let reply = tokio::time::timeout(Duration::from_secs(20), read_reply(&mut recv))
        .await
        .expect("an answer in time");
    RawSession {
        endpoint,
        conn,
        send,
        recv,
        reply,
    }
}

pub fn offer(dataset: &str) -> Offer {
    Offer {
        session: fjord_transport::identity::random_session_id(),
        resuming: false,
        dataset: dataset.to_string(),
        from: None,
        to: Snapshot {
            name: "tank/fs@snap".into(),
            guid: 0,
        },
        flags: 0,
        size_estimate: None,
    }
}

pub fn send_options(to: SocketAddr, rx: &Receiver, dataset: &str) -> SendOptions {
    let mut o = SendOptions::new(to, rx.identity.public_key(), offer(dataset));
    o.backoff = BackoffConfig {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    o
}

pub async fn send_bytes(
    id: &Identity,
    opts: SendOptions,
    data: Vec<u8>,
    counters: Arc<Counters>,
) -> Result<SendOutcome, SendError> {
    fjord_transport::client::send(id, opts, std::io::Cursor::new(data), counters).await
}

/// A synthetic stream of about `mib` MiB of 128 KiB writes of
/// pseudo-random data.
pub fn synthetic(mib: usize, seed: u64) -> Vec<u8> {
    let mut b = StreamBuilder::full(ByteOrder::Little, "tank/fs@snap", 0xfeed_0000 + seed);
    b.object(2, 131072, &[0u8; 168]);
    let mut x = fjord_suite::XorShift(seed | 1);
    let mut block = vec![0u8; 131072];
    for i in 0..(mib * 8) as u64 {
        for w in block.chunks_mut(8) {
            w.copy_from_slice(&x.next_u64().to_le_bytes());
        }
        b.write(2, i * 131072, &block);
    }
    b.finish()
}

/// The file the sink stored for `dataset` (snapshot `snap`).
pub fn stored(dir: &Path, dataset: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join(format!("{}@snap.zsend", dataset.replace('/', "_")))).ok()
}

/// Files in the sink directory, hidden ones included.
pub fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read sink dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

pub async fn next_event(rx: &mut Receiver, within: Duration) -> ServerEvent {
    tokio::time::timeout(within, rx.server.next_event())
        .await
        .expect("server event in time")
        .expect("server running")
}

/// What the proxy does to packets.
#[derive(Default)]
pub struct Faults {
    /// Drop everything until then.
    pub blackhole_until: Option<Instant>,
    /// Drop each packet with this probability.
    pub loss: f64,
    /// Hold back each packet with this probability (sent after the next).
    pub reorder: f64,
    /// Bumped to make the proxy use a new upstream port.
    pub port_generation: u64,
    /// Packets dropped so far.
    pub dropped: u64,
}

/// A UDP proxy between a sender and a receiver.
pub struct Proxy {
    pub addr: SocketAddr,
    pub faults: Arc<Mutex<Faults>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(server: SocketAddr) -> Proxy {
        let front = UdpSocket::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = front.local_addr().expect("proxy addr");
        let faults = Arc::new(Mutex::new(Faults::default()));
        let f = faults.clone();
        let task = tokio::spawn(async move { run_proxy(front, server, f).await });
        Proxy { addr, faults, task }
    }

    pub fn blackhole(&self, d: Duration) {
        self.faults.lock().expect("faults").blackhole_until = Some(Instant::now() + d);
    }

    pub fn change_port(&self) {
        self.faults.lock().expect("faults").port_generation += 1;
    }

    pub fn set_loss(&self, loss: f64, reorder: f64) {
        let mut f = self.faults.lock().expect("faults");
        f.loss = loss;
        f.reorder = reorder;
    }
}

/// Decides a packet's fate: None drops it, Some(held) says whether to
/// hold it back for reordering.
fn fate(faults: &Mutex<Faults>) -> Option<bool> {
    let mut f = faults.lock().expect("faults");
    if f.blackhole_until.is_some_and(|t| Instant::now() < t) || fastrand::f64() < f.loss {
        f.dropped += 1;
        return None;
    }
    Some(fastrand::f64() < f.reorder)
}

async fn run_proxy(front: UdpSocket, server: SocketAddr, faults: Arc<Mutex<Faults>>) {
    let mut upstream = UdpSocket::bind("127.0.0.1:0").await.expect("bind upstream");
    let mut generation = 0;
    let mut client: Option<SocketAddr> = None;
    let mut held_up: Option<Vec<u8>> = None;
    let mut held_down: Option<Vec<u8>> = None;
    let mut a = vec![0u8; 65536];
    let mut b = vec![0u8; 65536];
    loop {
        let want = faults.lock().expect("faults").port_generation;
        if want != generation {
            generation = want;
            upstream = UdpSocket::bind("127.0.0.1:0").await.expect("bind upstream");
        }
        tokio::select! {
            r = front.recv_from(&mut a) => {
                let Ok((n, from)) = r else { continue };
                client = Some(from);
                match fate(&faults) {
                    None => {}
                    Some(true) if held_up.is_none() => held_up = Some(a[..n].to_vec()),
                    Some(_) => {
                        let _ = upstream.send_to(&a[..n], server).await;
                        if let Some(p) = held_up.take() {
                            let _ = upstream.send_to(&p, server).await;
                        }
                    }
                }
            }
            r = upstream.recv_from(&mut b) => {
                let Ok((n, _)) = r else { continue };
                let Some(to) = client else { continue };
                match fate(&faults) {
                    None => {}
                    Some(true) if held_down.is_none() => held_down = Some(b[..n].to_vec()),
                    Some(_) => {
                        let _ = front.send_to(&b[..n], to).await;
                        if let Some(p) = held_down.take() {
                            let _ = front.send_to(&p, to).await;
                        }
                    }
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                // Flush held packets so reordering never becomes loss.
                if let Some(p) = held_up.take() {
                    let _ = upstream.send_to(&p, server).await;
                }
                if let (Some(p), Some(to)) = (held_down.take(), client) {
                    let _ = front.send_to(&p, to).await;
                }
            }
        }
    }
}
