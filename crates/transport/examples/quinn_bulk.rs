//! The QUIC stack's own ceiling on this machine, for `scripts/bench`'s
//! `quinn-bulk` tool: our equivalent of quinn's `bench` bulk upload, written
//! for fjord (no code taken from quinn's bench).
//!
//! One process. A server thread and a client thread, each with its own tokio
//! current-thread runtime; quinn's default `TransportConfig`; rustls with the
//! ring provider (as fjord) and a self-signed certificate made by rcgen for
//! the run. The client opens one connection and one unidirectional stream
//! and uploads `--size` bytes from one in-memory buffer; the server reads
//! and discards them, then closes the connection with the byte count it
//! read as the close reason. No ZFS stream, no file, no fjord protocol.
//!
//! ```text
//! cargo run --release -p fjord-transport --example quinn_bulk -- \
//!     [--listen 127.0.0.1:0] [--size BYTES] [--chunk BYTES] [--json]
//! ```
//!
//! Prints the bytes the server read, the seconds from the client's connect
//! to the server's close, MB/s (10^6 bytes), each thread's CPU seconds
//! (user + system, `getrusage(RUSAGE_THREAD)`) and the process's peak RSS;
//! with `--json`, one JSON object on one line instead.

use bytes::Bytes;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::error::Error;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Instant;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

const ALPN: &[u8] = b"fjord-quinn-bulk";

struct Args {
    listen: SocketAddr,
    size: u64,
    chunk: usize,
    json: bool,
}

fn parse_args() -> Res<Args> {
    let mut a = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        size: 1 << 30,
        chunk: 1 << 20,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--listen" => a.listen = value("--listen")?.parse()?,
            "--size" => a.size = value("--size")?.parse()?,
            "--chunk" => a.chunk = value("--chunk")?.parse()?,
            "--json" => a.json = true,
            "-h" | "--help" => {
                println!(
                    "usage: quinn_bulk [--listen ADDR:PORT] [--size BYTES] [--chunk BYTES] [--json]\n\
                     uploads --size bytes (default 1 GiB) over one QUIC stream on loopback, \
                     quinn's default transport config; --chunk is the write size (default 1 MiB)"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other} (see --help)").into()),
        }
    }
    if a.chunk == 0 {
        return Err("--chunk must be at least 1".into());
    }
    Ok(a)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// This thread's user + system CPU seconds so far.
fn thread_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given, which is a
    // zeroed, properly aligned libc::rusage owned by this frame.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    if rc != 0 {
        return f64::NAN;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The process's peak RSS in KiB.
fn peak_rss_kib() -> i64 {
    // SAFETY: as in thread_cpu_seconds.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return -1;
    }
    ru.ru_maxrss
}

fn current_thread_runtime() -> Res<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Binds, reports its address through `ready`, accepts one connection and
/// one unidirectional stream, reads it to the end and closes the
/// connection with the byte count as the reason. Returns the byte count.
fn server(
    listen: SocketAddr,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    ready: mpsc::Sender<SocketAddr>,
) -> Res<u64> {
    let rt = current_thread_runtime()?;
    rt.block_on(async move {
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
        // quinn's default TransportConfig: nothing is tuned here.
        let config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        let endpoint = quinn::Endpoint::server(config, listen)?;
        ready.send(endpoint.local_addr()?)?;
        let incoming = endpoint
            .accept()
            .await
            .ok_or("the endpoint closed before a connection came")?;
        let conn = incoming.await?;
        let mut stream = conn.accept_uni().await?;
        let mut read = 0u64;
        while let Some(chunk) = stream.read_chunk(usize::MAX, true).await? {
            read += chunk.bytes.len() as u64;
        }
        conn.close(0u32.into(), read.to_string().as_bytes());
        endpoint.wait_idle().await;
        Ok(read)
    })
}

/// Connects, uploads `size` bytes in `chunk`-sized writes of one shared
/// buffer, and waits for the server's close. Returns the byte count the
/// server reported and the seconds from connect to close.
fn client(
    to: SocketAddr,
    cert: CertificateDer<'static>,
    size: u64,
    chunk: usize,
) -> Res<(u64, f64)> {
    let rt = current_thread_runtime()?;
    rt.block_on(async move {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert)?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let config = quinn::ClientConfig::new(Arc::new(quic));
        let bind = SocketAddr::from(([127, 0, 0, 1], 0));
        let endpoint = quinn::Endpoint::client(bind)?;
        // A fixed, non-zero pattern: the bytes' values do not matter to QUIC.
        let data = Bytes::from((0..chunk).map(|i| (i % 251) as u8).collect::<Vec<u8>>());

        let start = Instant::now();
        let conn = endpoint.connect_with(config, to, "localhost")?.await?;
        let mut stream = conn.open_uni().await?;
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk as u64) as usize;
            stream.write_chunk(data.slice(..n)).await?;
            left -= n as u64;
        }
        stream.finish()?;
        let read = match conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(close) if close.error_code == 0u32.into() => {
                std::str::from_utf8(&close.reason)?.parse::<u64>()?
            }
            other => return Err(format!("the connection ended badly: {other}").into()),
        };
        let seconds = start.elapsed().as_secs_f64();
        endpoint.wait_idle().await;
        Ok((read, seconds))
    })
}

fn run() -> Res<()> {
    let args = parse_args()?;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));

    let (ready_tx, ready_rx) = mpsc::channel();
    let server_cert = cert.clone();
    let listen = args.listen;
    let server_thread = std::thread::Builder::new()
        .name("bulk-server".into())
        .spawn(move || -> Res<(u64, f64)> {
            let read = server(listen, server_cert, key, ready_tx)?;
            Ok((read, thread_cpu_seconds()))
        })?;
    let addr = match ready_rx.recv() {
        Ok(addr) => addr,
        Err(_) => {
            // The server thread ended before it listened: report its error.
            return match server_thread.join() {
                Ok(Err(e)) => Err(format!("server: {e}").into()),
                _ => Err("the server thread ended before it listened".into()),
            };
        }
    };
    let (size, chunk) = (args.size, args.chunk);
    let client_thread = std::thread::Builder::new()
        .name("bulk-client".into())
        .spawn(move || -> Res<(u64, f64, f64)> {
            let (read, seconds) = client(addr, cert, size, chunk)?;
            Ok((read, seconds, thread_cpu_seconds()))
        })?;

    let (reported, seconds, send_cpu) = client_thread
        .join()
        .map_err(|_| "the client thread panicked")?
        .map_err(|e| format!("client: {e}"))?;
    let (read, recv_cpu) = server_thread
        .join()
        .map_err(|_| "the server thread panicked")?
        .map_err(|e| format!("server: {e}"))?;
    if read != size || reported != size {
        return Err(format!("sent {size} bytes, the server read {read}").into());
    }
    let mb_per_s = size as f64 / seconds / 1e6;
    let rss = peak_rss_kib();
    if args.json {
        println!(
            "{{\"bytes\":{size},\"seconds\":{seconds:.6},\"mb_per_s\":{mb_per_s:.1},\
             \"send_cpu_s\":{send_cpu:.3},\"recv_cpu_s\":{recv_cpu:.3},\"peak_rss_kib\":{rss}}}"
        );
    } else {
        println!(
            "{size} bytes in {seconds:.3} s: {mb_per_s:.1} MB/s; CPU s: client thread {send_cpu:.2}, \
             server thread {recv_cpu:.2}; peak RSS {} MiB",
            rss / 1024
        );
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("quinn_bulk: {e}");
        std::process::exit(1);
    }
}
