//! Packed transfers over real QUIC on loopback: the receiver decodes the
//! pack and stores the original stream byte for byte; a pack damaged in
//! transit (here: before it) is refused and nothing is stored. A
//! compressible stream costs fewer bytes on the wire than its length.

mod support;

use fjord_pack::PackOptions;
use fjord_transport::client::Counters;
use fjord_transport::message::offer_flags;
use fjord_transport::packed::PackReader;
use fjord_transport::server::ServerEvent;
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
        let source = PackReader::spawn(std::io::Cursor::new(bytes.clone()), PackOptions::default())
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
