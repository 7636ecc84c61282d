//! Packed transfers over real QUIC on loopback: the receiver decodes the
//! pack and stores the original stream byte for byte; a pack damaged in
//! transit (here: before it) is refused and nothing is stored. A
//! compressible stream costs fewer bytes on the wire than its length.
//! With the receiver's chunk cache, blocks a past transfer brought cost
//! references only; a promise the cache cannot keep fails the transfer
//! with nothing stored. What the receiver keeps (cached chunks, stored
//! streams) is readable by its owner only.

mod support;

use fjord_pack::PackOptions;
use fjord_proto::message::offer_flags;
use fjord_sink::chunk_cache::ChunkCacheOptions;
use fjord_transport::client::{chunk_inventory, Counters, RequestOptions};
use fjord_transport::server::ServerEvent;
use fjord_transport::source::PackSource;
use fjord_transport::{Identity, LinkConfig};
use std::sync::Arc;
use std::time::Duration;
use support::*;

/// A stream whose blocks repeat and compress: 4 MiB of text-like writes,
/// written twice.
fn compressible() -> Vec<u8> {
    use fjord_stream::builder::StreamBuilder;
    use fjord_stream::ByteOrder;
    let mut b = StreamBuilder::full(ByteOrder::Little, "tank/fs@snap", 0xabcd);
    b.object(2, 131072, &[0u8; 168]);
    let mut block = Vec::with_capacity(131072);
    for round in 0..2u64 {
        for i in 0..32u64 {
            block.clear();
            while block.len() < 131072 {
                block.extend_from_slice(
                    format!("ts={i} host=node-{} msg=replicated ", block.len() % 17).as_bytes(),
                );
            }
            block.truncate(131072);
            b.write(2, (round * 32 + i) * 131072, &block);
        }
    }
    b.finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_streams_arrive_as_the_original_and_cost_fewer_wire_bytes() {
    init_tracing();
    let sender = Identity::generate().expect("keygen");
    let mut rx = start_receiver(&[&sender], LinkConfig::default(), Duration::from_secs(60));
    let mut streams: Vec<(String, Vec<u8>)> = fjord_suite::valid_corpus()
        .into_iter()
        .take(6)
        .map(|s| (format!("backup/{}", s.name), s.bytes))
        .collect();
    streams.push(("backup/compressible".into(), compressible()));
    streams.push(("backup/random".into(), synthetic(3, 9)));
    for (dataset, bytes) in &streams {
        let mut opts = send_options(rx.addr, &rx, dataset);
        opts.offer.flags = offer_flags::PACKED;
        let source = PackSource::spawn(
            std::io::Cursor::new(bytes.clone()),
            PackOptions::default(),
            Box::new(fjord_pack::NoCache),
        )
        .expect("pack threads");
        let out =
            fjord_transport::client::send(&sender, opts, source, Arc::new(Counters::default()))
                .await
                .unwrap_or_else(|e| panic!("{dataset}: {e}"));
        assert!(out.report.success, "{dataset}");
        assert!(
            out.report.message.contains("packed"),
            "{}",
            out.report.message
        );
        match next_event(&mut rx, Duration::from_secs(10)).await {
            ServerEvent::Completed { .. } => {}
            e => panic!("{dataset}: {e:?}"),
        }
        let got = stored(rx.dir.path(), dataset).unwrap_or_else(|| panic!("{dataset} not stored"));
        assert!(got == *bytes, "{dataset} differs");
        if dataset.ends_with("compressible") {
            assert!(
                out.length * 4 < bytes.len() as u64,
                "{} wire bytes for {} stream bytes",
                out.length,
                bytes.len()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_pack_is_refused_and_nothing_is_stored() {
    init_tracing();
    let sender = Identity::generate().expect("keygen");
    let mut rx = start_receiver(&[&sender], LinkConfig::default(), Duration::from_secs(60));
    let stream = compressible();
    let mut pack = Vec::new();
    fjord_pack::pack(
        std::io::Cursor::new(stream),
        &mut pack,
        &PackOptions::default(),
        &mut fjord_pack::NoCache,
    )
    .expect("pack");
    let at = pack.len() / 2;
    pack[at] ^= 0x40;
    let mut opts = send_options(rx.addr, &rx, "backup/damaged");
    opts.offer.flags = offer_flags::PACKED;
    let err = send_bytes(&sender, opts, pack, Arc::new(Counters::default()))
        .await
        .expect_err("a damaged pack must fail");
    assert!(
        err.to_string().contains("packed stream is invalid"),
        "{err}"
    );
    match next_event(&mut rx, Duration::from_secs(10)).await {
        ServerEvent::Failed { .. } => {}
        e => panic!("{e:?}"),
    }
    assert!(
        files(rx.dir.path()).is_empty(),
        "{:?}",
        files(rx.dir.path())
    );
}

/// A full stream of `blocks` 128 KiB pseudo-random blocks from `seed`,
/// written to object `object` of a snapshot with guid `guid`: two such
/// streams with the same seed carry the same blocks in different records.
fn blocks_stream(seed: u64, blocks: u64, object: u64, guid: u64) -> Vec<u8> {
    use fjord_stream::builder::StreamBuilder;
    use fjord_stream::ByteOrder;
    let mut b = StreamBuilder::full(ByteOrder::Little, "tank/fs@snap", guid);
    b.object(object, 131072, &[0u8; 168]);
    let mut x = fjord_suite::XorShift(seed | 1);
    let mut block = vec![0u8; 131072];
    for i in 0..blocks {
        for w in block.chunks_mut(8) {
            w.copy_from_slice(&x.next_u64().to_le_bytes());
        }
        b.write(object, i * 131072, &block);
    }
    b.finish()
}

fn request_options(rx: &Receiver) -> RequestOptions {
    RequestOptions {
        to: rx.addr,
        server_key: rx.identity.public_key(),
        link: LinkConfig::default(),
        patience: Duration::from_secs(10),
    }
}

/// Sends `stream` packed, asking the receiver's inventory first.
async fn send_with_inventory(
    sender: &Identity,
    rx: &Receiver,
    dataset: &str,
    stream: &[u8],
) -> (
    usize,
    Result<fjord_transport::client::SendOutcome, fjord_transport::client::SendError>,
) {
    let mut opts = send_options(rx.addr, rx, dataset);
    opts.offer.flags = offer_flags::PACKED;
    let inventory = chunk_inventory(sender, &request_options(rx), opts.offer.session)
        .await
        .expect("inventory");
    let promised = inventory.len();
    let source = PackSource::spawn(
        std::io::Cursor::new(stream.to_vec()),
        PackOptions::default(),
        Box::new(inventory),
    )
    .expect("pack threads");
    let out =
        fjord_transport::client::send(sender, opts, source, Arc::new(Counters::default())).await;
    (promised, out)
}

/// A receiver for `allowed` with a 64 MiB chunk cache in `dir`.
fn start_cached_receiver(allowed: &[&Identity], dir: &std::path::Path) -> Receiver {
    start_receiver_with_cache(
        allowed,
        LinkConfig::default(),
        Duration::from_secs(60),
        Some(ChunkCacheOptions {
            dir: dir.to_path_buf(),
            capacity: 64 << 20,
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_a_past_transfer_brought_cost_only_references() {
    init_tracing();
    let sender = Identity::generate().expect("keygen");
    let cache = tempfile::tempdir().expect("tempdir");
    let mut rx = start_cached_receiver(&[&sender], cache.path());
    // 4 MiB of incompressible blocks, then a different snapshot whose
    // object holds the same blocks (a copied file) plus one new block.
    let first = blocks_stream(5, 32, 2, 0x1111);
    let second = blocks_stream(5, 33, 9, 0x2222);
    let (promised, out) = send_with_inventory(&sender, &rx, "backup/first", &first).await;
    let out = out.expect("first transfer");
    assert_eq!(promised, 0, "an empty cache promises nothing");
    assert!(out.length > first.len() as u64 * 9 / 10, "{}", out.length);
    assert!(matches!(
        next_event(&mut rx, Duration::from_secs(10)).await,
        ServerEvent::Completed { .. }
    ));
    let (promised, out) = send_with_inventory(&sender, &rx, "backup/second", &second).await;
    let out = out.expect("second transfer");
    assert!(matches!(
        next_event(&mut rx, Duration::from_secs(10)).await,
        ServerEvent::Completed { .. }
    ));
    assert_eq!(
        promised, 32,
        "the cache promises the first transfer's blocks"
    );
    // One new 128 KiB block, 32 references and the record headers.
    assert!(
        out.length < 160 << 10,
        "{} wire bytes for a {}-byte stream of known blocks",
        out.length,
        second.len()
    );
    assert!(stored(rx.dir.path(), "backup/second") == Some(second.clone()));
    // The metrics' view: 32 hits (the references), 33 blocks stored in all.
    let stats = rx.server.chunk_cache_stats().expect("a cache");
    assert_eq!((stats.hits, stats.hit_bytes), (32, 32 << 17), "{stats:?}");
    assert_eq!(stats.stored, 33, "{stats:?}");
    assert_eq!(stats.chunks, 33, "{stats:?}");
    assert!(stats.bytes >= 33 << 17, "{stats:?}");
    // The receiver's copies are its owner's only: the chunk cache's
    // directories 0700 and chunks 0600, the stored streams 0600.
    #[cfg(unix)]
    {
        assert!(!walk(cache.path()).is_empty());
        assert_owner_only(cache.path());
        for name in files(rx.dir.path()) {
            assert_eq!(mode(&rx.dir.path().join(&name)), 0o600, "{name}");
        }
    }
    // Another sender key has a cache of its own: nothing is promised to it.
    let other = Identity::generate().expect("keygen");
    drop(rx);
    let rx = start_cached_receiver(&[&sender, &other], cache.path());
    let (promised, out) = send_with_inventory(&other, &rx, "backup/third", &second).await;
    assert_eq!(promised, 0);
    assert!(out.expect("third transfer").length > second.len() as u64 * 9 / 10);
    // The first sender's cache survived the receiver's restart.
    let (promised, _) = send_with_inventory(&sender, &rx, "backup/fourth", &second).await;
    assert_eq!(promised, 33);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promised_chunk_that_vanished_fails_the_transfer_and_stores_nothing() {
    init_tracing();
    let sender = Identity::generate().expect("keygen");
    let cache = tempfile::tempdir().expect("tempdir");
    let mut rx = start_cached_receiver(&[&sender], cache.path());
    let first = blocks_stream(8, 8, 2, 0x1111);
    let (_, out) = send_with_inventory(&sender, &rx, "backup/first", &first).await;
    out.expect("first transfer");
    let _ = next_event(&mut rx, Duration::from_secs(10)).await;
    // Someone empties the cache directory behind the receiver's back after
    // it promised the chunks.
    let mut opts = send_options(rx.addr, &rx, "backup/second");
    opts.offer.flags = offer_flags::PACKED;
    let inventory = chunk_inventory(&sender, &request_options(&rx), opts.offer.session)
        .await
        .expect("inventory");
    assert_eq!(inventory.len(), 8);
    for entry in walk(cache.path()) {
        std::fs::remove_file(entry).expect("remove chunk");
    }
    let second = blocks_stream(8, 8, 3, 0x2222);
    let source = PackSource::spawn(
        std::io::Cursor::new(second),
        PackOptions::default(),
        Box::new(inventory),
    )
    .expect("pack threads");
    let err = fjord_transport::client::send(&sender, opts, source, Arc::new(Counters::default()))
        .await
        .expect_err("an unresolvable reference must fail");
    assert!(err.to_string().contains("does not hold"), "{err}");
    assert!(matches!(
        next_event(&mut rx, Duration::from_secs(10)).await,
        ServerEvent::Failed { .. }
    ));
    assert!(stored(rx.dir.path(), "backup/second").is_none());
    assert_eq!(files(rx.dir.path()).len(), 1, "{:?}", files(rx.dir.path()));
}

#[cfg(unix)]
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

/// Every directory below `dir` is 0700 and every file 0600.
#[cfg(unix)]
fn assert_owner_only(dir: &std::path::Path) {
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            assert_eq!(mode(&p), 0o700, "{}", p.display());
            assert_owner_only(&p);
        } else {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
}

/// Every file below `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
