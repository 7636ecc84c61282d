//! Test helpers: identities, a server on loopback, synthetic streams, and a
//! fault-injecting UDP proxy (blackholes, loss, reordering, port changes).
#![allow(dead_code)]

use fjord_stream::builder::StreamBuilder;
use fjord_stream::ByteOrder;
use fjord_transport::client::{Counters, SendError, SendOptions, SendOutcome};
use fjord_transport::server::{ServeOptions, Server, ServerEvent};
use fjord_transport::sink::FileSinkFactory;
use fjord_transport::{BackoffConfig, Identity, LinkConfig, Offer, SessionId, Snapshot};
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
    chunk_cache: Option<fjord_transport::chunk_cache::ChunkCacheOptions>,
) -> Receiver {
    let identity = Identity::generate().expect("keygen");
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = ServeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        allowed: allowed.iter().map(|i| i.public_key()).collect(),
        link,
        grace,
        max_sessions: 0,
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

pub fn offer(dataset: &str) -> Offer {
    Offer {
        session: SessionId::random(),
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
