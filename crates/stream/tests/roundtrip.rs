//! Property tests: any stream the builder makes decodes, verifies and
//! re-encodes byte for byte, however it is fed; mutations never panic.

use fjord_stream::builder::{PackageBuilder, StreamBuilder};
use fjord_stream::nvlist::{DataType, NvList, Value};
use fjord_stream::record::{RecordType, Redact};
use fjord_stream::{Body, ByteOrder, Decoder, Encoder, FeatureFlags, Record, Summary};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Object {
        object: u64,
        blksz: u32,
        bonus: usize,
    },
    Write {
        object: u64,
        offset: u64,
        len: usize,
        fill: u8,
    },
    Compressed {
        object: u64,
        logical: u64,
        psize: usize,
    },
    Embedded {
        object: u64,
        psize: usize,
    },
    Spill {
        object: u64,
        len: usize,
    },
    Free {
        object: u64,
        offset: u64,
        len: u64,
    },
    FreeObjects {
        first: u64,
        n: u64,
    },
    Redact {
        object: u64,
        offset: u64,
        len: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let obj = 1u64..1_000_000;
    prop_oneof![
        (
            obj.clone(),
            prop::sample::select(vec![512u32, 4096, 131072, 1 << 20]),
            0usize..320
        )
            .prop_map(|(object, blksz, bonus)| Op::Object {
                object,
                blksz,
                bonus
            }),
        (
            obj.clone(),
            0u64..1 << 40,
            prop::sample::select(vec![512usize, 1024, 4096, 65536, 131072, 1 << 20]),
            any::<u8>()
        )
            .prop_map(|(object, offset, len, fill)| Op::Write {
                object,
                offset,
                len,
                fill
            }),
        (obj.clone(), 1usize..64).prop_map(|(object, k)| Op::Compressed {
            object,
            logical: 131072,
            psize: k * 512
        }),
        (obj.clone(), 1usize..=112).prop_map(|(object, psize)| Op::Embedded { object, psize }),
        (obj.clone(), prop::sample::select(vec![512usize, 1024]))
            .prop_map(|(object, len)| Op::Spill { object, len }),
        (
            obj.clone(),
            0u64..1 << 30,
            prop_oneof![Just(u64::MAX), 1u64..1 << 30]
        )
            .prop_map(|(object, offset, len)| Op::Free {
                object,
                offset,
                len
            }),
        (0u64..1 << 40, 0u64..1 << 20).prop_map(|(first, n)| Op::FreeObjects { first, n }),
        (obj, 0u64..1 << 30, 1u64..1 << 30).prop_map(|(object, offset, len)| Op::Redact {
            object,
            offset,
            len
        }),
    ]
}

fn features() -> FeatureFlags {
    FeatureFlags(
        FeatureFlags::EMBED_DATA
            | FeatureFlags::LARGE_BLOCKS
            | FeatureFlags::COMPRESSED
            | FeatureFlags::SA_SPILL
            | FeatureFlags::REDACTED,
    )
}

fn build_substream(order: ByteOrder, n: u64, ops: &[Op], resume: bool) -> Vec<u8> {
    let nv = resume.then(|| {
        NvList::new()
            .with("resume_object", Value::Number(DataType::Uint64, 5))
            .with("resume_offset", Value::Number(DataType::Uint64, 4096))
    });
    let mut f = features();
    if resume {
        f.0 |= FeatureFlags::RESUMING;
    }
    let mut b = StreamBuilder::with(
        order,
        &format!("tank/fs{n}@snap"),
        0xabc0 + n,
        n,
        f,
        nv.as_ref(),
    );
    for op in ops {
        match *op {
            Op::Object {
                object,
                blksz,
                bonus,
            } => {
                b.object(object, blksz, &vec![0x5a; bonus]);
            }
            Op::Write {
                object,
                offset,
                len,
                fill,
            } => {
                b.write(object, offset, &vec![fill; len]);
            }
            Op::Compressed {
                object,
                logical,
                psize,
            } => {
                b.write_compressed(object, 0, logical, 15, &vec![3; psize]);
            }
            Op::Embedded { object, psize } => {
                b.write_embedded(object, 0, 512, &vec![9; psize]);
            }
            Op::Spill { object, len } => {
                b.spill(object, &vec![1; len]);
            }
            Op::Free {
                object,
                offset,
                len,
            } => {
                b.free(object, offset, len);
            }
            Op::FreeObjects { first, n } => {
                b.free_objects(first, n);
            }
            Op::Redact {
                object,
                offset,
                len,
            } => {
                let toguid = b.toguid();
                b.record(
                    Body::Redact(Redact {
                        object,
                        offset,
                        length: len,
                        toguid,
                    }),
                    &[],
                );
            }
        }
    }
    b.finish()
}

fn decode_in_chunks(bytes: &[u8], chunks: &[usize]) -> Vec<Record> {
    let mut d = Decoder::default();
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < bytes.len() {
        let n = chunks[i % chunks.len()].min(bytes.len() - at);
        i += 1;
        d.feed(&bytes[at..at + n]);
        at += n;
        while let Some(r) = d.next_record().expect("builder streams are valid") {
            out.push(r);
        }
    }
    d.finish().expect("builder streams are complete");
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn built_streams_round_trip(
        big in any::<bool>(),
        package in any::<bool>(),
        resume in any::<bool>(),
        subs in prop::collection::vec(prop::collection::vec(op(), 0..24), 1..4),
        chunks in prop::collection::vec(1usize..70_000, 1..8),
    ) {
        let order = if big { ByteOrder::Big } else { ByteOrder::Little };
        let stream = if package {
            let hdr = NvList::new()
                .with("tosnap", Value::String("snap".into()))
                .with("fss", Value::List(NvList::new()));
            let mut p = PackageBuilder::new(order, "tank/fs@snap", &hdr);
            for (n, ops) in subs.iter().enumerate() {
                p.substream(&build_substream(order, n as u64, ops, false));
            }
            p.finish()
        } else {
            build_substream(order, 0, &subs[0], resume)
        };
        let records = decode_in_chunks(&stream, &chunks);

        // Byte-identical re-encoding, verbatim and from the typed headers.
        let mut enc = Encoder::new(order);
        let mut verbatim = Vec::new();
        let mut typed = Vec::new();
        let mut summary = Summary::default();
        for r in &records {
            enc.write_record(r, &mut verbatim);
            typed.extend_from_slice(&r.header.to_bytes(order));
            typed.extend_from_slice(&r.payload);
            summary.add(r, order);
        }
        prop_assert!(verbatim == stream);
        prop_assert!(typed == stream);

        // The records are the ones built, in order.
        let used: Vec<&Vec<Op>> = if package { subs.iter().collect() } else { vec![&subs[0]] };
        let data_records: usize = used.iter().map(|ops| ops.len()).sum();
        let overhead = if package { 3 + 2 * used.len() } else { 2 };
        prop_assert_eq!(records.len(), data_records + overhead);
        prop_assert_eq!(summary.count(RecordType::Begin).records as usize, used.len() + package as usize);
        prop_assert_eq!(summary.substreams.len(), used.len());
        if resume && !package {
            prop_assert_eq!(summary.substreams[0].resume_object, Some(5));
            prop_assert_eq!(summary.substreams[0].resume_offset, Some(4096));
        }
        let writes = used
            .iter()
            .flat_map(|ops| ops.iter())
            .filter(|o| matches!(o, Op::Write { .. } | Op::Compressed { .. }))
            .count();
        prop_assert_eq!(summary.count(RecordType::Write).records as usize, writes);
    }

    #[test]
    fn missing_end_is_truncation_unless_allowed(ops in prop::collection::vec(op(), 1..10)) {
        let mut b = StreamBuilder::with(ByteOrder::Little, "tank/fs@s", 1, 0, features(), None);
        for op in &ops {
            if let Op::Free { object, offset, len } = *op {
                b.free(object, offset, len);
            } else {
                b.free_objects(1, 1);
            }
        }
        let stream = b.finish_without_end();
        let mut strict = Decoder::default();
        strict.feed(&stream);
        while strict.next_record().unwrap().is_some() {}
        let err = strict.finish().unwrap_err().to_string();
        prop_assert!(err.contains("without its DRR_END record"), "{}", err);
        let mut lenient = Decoder::new(fjord_stream::DecoderOptions { allow_missing_end: true, ..Default::default() });
        lenient.feed(&stream);
        while lenient.next_record().unwrap().is_some() {}
        prop_assert!(lenient.finish().is_ok());
        prop_assert!(lenient.state().ended_without_end);
    }

    #[test]
    fn arbitrary_mutations_never_panic(
        ops in prop::collection::vec(op(), 0..6),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut stream = build_substream(ByteOrder::Little, 1, &ops, false);
        for (i, v) in &edits {
            let at = i.index(stream.len());
            stream[at] = *v;
        }
        let len = cut.index(stream.len() + 1);
        let mut d = Decoder::default();
        d.feed(&stream[..len]);
        loop {
            match d.next_record() {
                Ok(Some(_)) => continue,
                Ok(None) => {
                    let _ = d.finish();
                    break;
                }
                Err(e) => {
                    prop_assert!(!e.to_string().is_empty());
                    break;
                }
            }
        }
    }
}
