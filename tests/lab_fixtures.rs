//! The codec on streams written by the lab's OpenZFS 2.3 (the version DR
//! nodes run), kept small in `tests/fixtures/lab-streams/`: each verifies,
//! re-encodes byte for byte, and says what `zfs send` was asked for.

use fjord_stream::read::decode_all;
use fjord_stream::{Encoder, FeatureFlags, Record, RecordType, StreamKind, Summary};
use fjord_suite::{lab_fixture, lab_fixtures};

fn summarise(bytes: &[u8]) -> (Summary, Vec<Record>) {
    let mut summary = Summary::default();
    let mut records = Vec::new();
    decode_all(bytes, Default::default(), |r, d| {
        summary.add(&r, d.state().order.expect("order known after BEGIN"));
        records.push(r);
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    (summary, records)
}

#[test]
fn every_lab_stream_verifies_and_reencodes() {
    let fixtures = lab_fixtures();
    assert!(
        fixtures.len() >= 9,
        "expected the nine lab streams, found {}",
        fixtures.len()
    );
    for (name, bytes) in fixtures {
        let (summary, records) = summarise(&bytes);
        let mut enc = Encoder::new(summary.byte_order.unwrap());
        let mut out = Vec::new();
        records.iter().for_each(|r| enc.write_record(r, &mut out));
        assert!(out == bytes, "{name}: re-encoding differs");
        assert_eq!(summary.total_bytes, bytes.len() as u64, "{name}");
    }
}

#[test]
fn each_send_flag_shows_in_the_stream() {
    let guid_fx_a = 10415461682167240985;
    let guid_fx_b = 10449521993296117214;

    let (s, _) = summarise(&lab_fixture("full.zsend"));
    assert_eq!(s.kind, Some(StreamKind::Full));
    assert_eq!(
        (s.substreams[0].toname.as_str(), s.substreams[0].toguid),
        ("src/fx@a", guid_fx_a)
    );

    let (s, _) = summarise(&lab_fixture("incr-i.zsend"));
    assert_eq!(s.kind, Some(StreamKind::Incremental));
    assert_eq!(
        (s.substreams[0].fromguid, s.substreams[0].toguid),
        (guid_fx_a, guid_fx_b)
    );

    let (s, _) = summarise(&lab_fixture("incr-I.zsend"));
    assert_eq!(s.kind, Some(StreamKind::Package), "-I is a package");
    assert_eq!(s.substreams.len(), 2, "@a..@c carries @b and @c");
    assert_eq!(s.substreams[0].fromguid, guid_fx_a);
    assert_eq!(s.substreams[1].fromguid, guid_fx_b);

    let (s, _) = summarise(&lab_fixture("compressed-c.zsend"));
    assert!(s.substreams[0].features.contains(FeatureFlags::COMPRESSED));
    assert!(s.compressed_block_bytes > 0);

    let (s, records) = summarise(&lab_fixture("large-L.zsend"));
    assert!(s.substreams[0]
        .features
        .contains(FeatureFlags::LARGE_BLOCKS));
    assert!(records.iter().any(
        |r| matches!(&r.header.body, fjord_stream::Body::Write(w) if w.logical_size > 128 * 1024)
    ));

    let (s, _) = summarise(&lab_fixture("embedded-e.zsend"));
    assert!(s.substreams[0].features.contains(FeatureFlags::EMBED_DATA));
    assert!(s.count(RecordType::WriteEmbedded).records > 0);

    let (s, _) = summarise(&lab_fixture("raw-w.zsend"));
    assert!(s.substreams[0].features.contains(FeatureFlags::RAW));
    assert!(s.count(RecordType::ObjectRange).records > 0);

    let (s, _) = summarise(&lab_fixture("replicate-R.zsend"));
    assert_eq!(s.kind, Some(StreamKind::Package));
    let names: Vec<_> = s.substreams.iter().map(|x| x.toname.as_str()).collect();
    assert!(
        names.contains(&"src/rep@r2") && names.contains(&"src/rep/child@r2"),
        "{names:?}"
    );
}

#[test]
fn the_resumed_stream_matches_its_token() {
    let token_text = String::from_utf8(lab_fixture("resume-token.txt")).unwrap();
    let token = fjord_stream::token::decode(&token_text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(token.toname, "src/big@s1");
    assert_eq!(token.toguid, 13376179955959643813);
    assert_eq!((token.object, token.offset, token.bytes), (130, 0, 215040));

    let (s, _) = summarise(&lab_fixture("resumed-t.zsend"));
    assert_eq!(s.kind, Some(StreamKind::Resumed));
    let sub = &s.substreams[0];
    assert!(sub.features.contains(FeatureFlags::RESUMING));
    assert_eq!(sub.toguid, token.toguid);
    assert_eq!(sub.resume_object, Some(token.object));
    assert_eq!(sub.resume_offset, Some(token.offset));
}
