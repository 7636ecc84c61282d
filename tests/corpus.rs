//! The codec against real OpenZFS streams: every valid one decodes, verifies
//! and re-encodes byte for byte, however it is fed; the bad one is refused;
//! and every kind of damage to a good one is caught.

use fjord_stream::{
    Decoder, DecoderOptions, Encoder, Record, RecordType, StreamError, RECORD_SIZE,
};
use fjord_suite::{corpus, valid_corpus, XorShift, BAD_STREAM};

/// Decodes `bytes` fed in chunks whose sizes `chunk` picks.
fn decode_chunked(
    bytes: &[u8],
    mut chunk: impl FnMut() -> usize,
) -> Result<Vec<Record>, StreamError> {
    let mut d = Decoder::default();
    let mut records = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let n = chunk().clamp(1, bytes.len() - at);
        d.feed(&bytes[at..at + n]);
        at += n;
        while let Some(r) = d.next_record()? {
            records.push(r);
        }
    }
    d.finish()?;
    Ok(records)
}

fn decode(bytes: &[u8]) -> Result<Vec<Record>, StreamError> {
    decode_chunked(bytes, || usize::MAX)
}

#[test]
fn every_valid_stream_verifies_and_reencodes_byte_identically() {
    let streams = valid_corpus();
    assert!(
        streams.len() >= 14,
        "corpus has {} valid streams",
        streams.len()
    );
    for s in &streams {
        let records = decode(&s.bytes).unwrap_or_else(|e| panic!("{}: {e}", s.name));
        let order = if s.name.starts_with("big-endian") {
            fjord_stream::ByteOrder::Big
        } else {
            fjord_stream::ByteOrder::Little
        };
        let mut enc = Encoder::new(order);
        let mut verbatim = Vec::with_capacity(s.bytes.len());
        let mut typed = Vec::with_capacity(s.bytes.len());
        for r in &records {
            enc.write_record(r, &mut verbatim);
            // The typed header serialises back to the very same bytes.
            typed.extend_from_slice(&r.header.to_bytes(order));
            typed.extend_from_slice(&r.payload);
        }
        assert!(
            verbatim == s.bytes,
            "{}: verbatim re-encoding differs",
            s.name
        );
        assert!(typed == s.bytes, "{}: typed re-encoding differs", s.name);
        assert_eq!(
            records.last().map(Record::record_type),
            Some(RecordType::End),
            "{}",
            s.name
        );
    }
}

#[test]
fn corpus_covers_every_record_type_and_both_byte_orders() {
    let mut seen = std::collections::BTreeSet::new();
    for s in valid_corpus() {
        for r in decode(&s.bytes).unwrap() {
            seen.insert(r.record_type());
        }
    }
    // REDACT appears only in redacted sends, which the corpus does not hold;
    // the synthetic tests cover it.
    for t in RecordType::ALL.iter().filter(|t| **t != RecordType::Redact) {
        assert!(seen.contains(t), "no {t} record in the corpus");
    }
}

#[test]
fn any_feed_size_gives_the_same_records() {
    let mut rng = XorShift(0x5eed);
    for s in valid_corpus() {
        let whole = decode(&s.bytes).unwrap();
        let small = s.bytes.len() < 300_000;
        let pieces = if small {
            decode_chunked(&s.bytes, || 1).unwrap()
        } else {
            decode_chunked(&s.bytes, || rng.range(1, 300_000)).unwrap()
        };
        let mixed = decode_chunked(&s.bytes, || rng.range(1, 4096)).unwrap();
        for other in [&pieces, &mixed] {
            assert_eq!(whole.len(), other.len(), "{}", s.name);
            for (a, b) in whole.iter().zip(other.iter()) {
                assert_eq!(a.raw_header, b.raw_header, "{} record #{}", s.name, a.index);
                assert_eq!(a.payload, b.payload, "{} record #{}", s.name, a.index);
            }
        }
    }
}

#[test]
fn the_undersized_write_stream_is_refused_like_openzfs_does() {
    let bad = corpus()
        .into_iter()
        .find(|s| s.name == BAD_STREAM)
        .expect("bad stream present");
    let err = decode(&bad.bytes).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            StreamError::InvalidRecord {
                record_type: RecordType::Write,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("DRR_WRITE logical size 256 below minimum 512"),
        "{msg}"
    );
    assert!(msg.contains("record #7"), "{msg}");
}

/// Small streams, for the exhaustive damage tests.
fn small_streams() -> Vec<fjord_suite::CorpusStream> {
    valid_corpus()
        .into_iter()
        .filter(|s| s.bytes.len() <= 260_000)
        .collect()
}

#[test]
fn truncation_at_every_record_boundary_and_inside_every_record_is_caught() {
    for s in small_streams() {
        let records = decode(&s.bytes).unwrap();
        for r in &records {
            let start = r.offset as usize;
            let end = start + RECORD_SIZE + r.payload.len();
            let mut cuts = vec![start, start + 1, start + RECORD_SIZE - 1];
            if !r.payload.is_empty() {
                cuts.push(start + RECORD_SIZE);
                cuts.push(start + RECORD_SIZE + r.payload.len() / 2);
                cuts.push(end - 1);
            }
            for cut in cuts.into_iter().filter(|&c| c > 0 && c < s.bytes.len()) {
                let err = decode(&s.bytes[..cut])
                    .expect_err(&format!("{}: cut at {cut} not caught", s.name));
                let msg = err.to_string();
                assert!(
                    msg.starts_with("truncated at byte"),
                    "{}: cut at {cut}: {msg}",
                    s.name
                );
                assert!(msg.contains(&format!("byte {cut}")), "{}: {msg}", s.name);
                if cut > start + RECORD_SIZE && cut < end {
                    assert!(
                        msg.contains(&format!(
                            "inside the payload of record #{} ({})",
                            r.index,
                            r.record_type()
                        )),
                        "{msg}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_single_flipped_byte_anywhere_is_caught() {
    let mut rng = XorShift(42);
    for s in small_streams() {
        let records = decode(&s.bytes).unwrap();
        for r in &records {
            // One byte of the header and one of the payload of every record.
            let mut positions = vec![r.offset as usize + rng.range(0, RECORD_SIZE - 1)];
            if !r.payload.is_empty() {
                positions.push(r.offset as usize + RECORD_SIZE + rng.range(0, r.payload.len() - 1));
            }
            for pos in positions {
                let mut damaged = s.bytes.clone();
                damaged[pos] ^= 1 << rng.range(0, 7);
                assert!(
                    decode(&damaged).is_err(),
                    "{}: flip at byte {pos} (record #{} {}) not caught",
                    s.name,
                    r.index,
                    r.record_type()
                );
            }
        }
    }
}

#[test]
fn damaged_payloads_are_named_by_the_next_trailer() {
    // Damage inside a WRITE payload is caught by the next record's trailer:
    // the error names that record, its type and offset.
    let s = small_streams()
        .into_iter()
        .find(|s| s.name == "little-endian-all-drr-types-base-NATIVE")
        .unwrap();
    let records = decode(&s.bytes).unwrap();
    let w = records
        .iter()
        .position(|r| r.record_type() == RecordType::Write && !r.payload.is_empty())
        .unwrap();
    let mut damaged = s.bytes.clone();
    damaged[records[w].offset as usize + RECORD_SIZE + 10] ^= 0xff;
    let next = &records[w + 1];
    match decode(&damaged).unwrap_err() {
        StreamError::RecordChecksum {
            index,
            record_type,
            offset,
            ..
        } => {
            assert_eq!(
                (index, record_type, offset),
                (next.index, next.record_type(), next.offset)
            );
        }
        e => panic!("expected a checksum error, got {e}"),
    }
}

#[test]
fn wrong_end_checksums_are_caught() {
    for s in small_streams() {
        let records = decode(&s.bytes).unwrap();
        for r in records
            .iter()
            .filter(|r| r.record_type() == RecordType::End)
        {
            // Change the END checksum and zero its trailer so that only the
            // END checksum itself can catch it.
            let mut damaged = s.bytes.clone();
            let at = r.offset as usize;
            damaged[at + 8] ^= 0x01;
            damaged[at + RECORD_SIZE - 32..at + RECORD_SIZE].fill(0);
            match decode(&damaged) {
                Err(StreamError::EndChecksum { index, .. }) => {
                    assert_eq!(index, r.index, "{}", s.name)
                }
                // The package's final END must stay all zero.
                Err(StreamError::Unexpected { index, .. }) => {
                    assert_eq!(index, r.index, "{}", s.name)
                }
                other => panic!("{}: END #{} damage gave {other:?}", s.name, r.index),
            }
        }
    }
}

#[test]
fn verified_offset_never_runs_ahead_of_checked_bytes() {
    for s in small_streams() {
        let mut d = Decoder::new(DecoderOptions::default());
        d.feed(&s.bytes);
        let mut last_end = 0;
        while let Some(r) = d.next_record().unwrap() {
            // Only bytes before the current record's header are vouched for,
            // except after an END, which vouches for itself.
            let end = r.offset + r.wire_len();
            if r.record_type() == RecordType::End {
                assert_eq!(d.verified_offset(), end);
            } else {
                assert!(
                    d.verified_offset() <= r.offset + RECORD_SIZE as u64,
                    "{}",
                    s.name
                );
            }
            assert!(d.verified_offset() >= last_end.min(r.offset), "{}", s.name);
            last_end = end;
        }
        d.finish().unwrap();
        assert_eq!(d.verified_offset(), s.bytes.len() as u64);
    }
}

#[test]
fn every_single_byte_flip_in_a_whole_stream_is_caught() {
    // Exhaustive on one small real stream: flip each byte in turn.
    let s = small_streams()
        .into_iter()
        .find(|s| s.name == "little-endian-all-drr-types-base-NATIVE")
        .expect("stream present");
    let mut bytes = s.bytes.clone();
    for pos in 0..bytes.len() {
        bytes[pos] ^= 0x10;
        assert!(decode(&bytes).is_err(), "flip at byte {pos} not caught");
        bytes[pos] ^= 0x10;
    }
}
