//! The verifier, the file sink and the sink errors as the sender sees them.

use crate::*;
use fjord_proto::message::{Offer, RefuseCode};
use fjord_stream::builder::StreamBuilder;
use fjord_stream::ByteOrder;
use std::path::Path;

fn stream() -> Vec<u8> {
    let mut b = StreamBuilder::full(ByteOrder::Little, "tank/fs@a", 0x77);
    b.object(2, 4096, &[0u8; 64]);
    for i in 0..8u64 {
        b.write(2, i * 4096, &vec![i as u8; 4096]);
    }
    b.finish()
}

const END_LEN: usize = fjord_stream::RECORD_SIZE;

/// Feeds `s` in pieces of `step` bytes; returns what came out.
fn push_all(v: &mut Verifier, s: &[u8], step: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in s.chunks(step) {
        v.push(Bytes::copy_from_slice(c), &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        })
        .expect("a valid stream verifies");
        assert_eq!(&out[..], &s[..out.len()]);
    }
    out
}

fn finish_into(v: &mut Verifier, length: u64, out: &mut Vec<u8>) -> Result<Option<u64>, SinkError> {
    v.finish(length, &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    })
}

/// Two substreams in a `zfs send -R` package.
fn package() -> Vec<u8> {
    use fjord_stream::builder::PackageBuilder;
    use fjord_stream::nvlist::{NvList, Value};
    let hdr = NvList::new()
        .with("tosnap", Value::String("a".into()))
        .with("fss", Value::List(NvList::new()));
    let mut p = PackageBuilder::new(ByteOrder::Little, "tank/fs@a", &hdr);
    p.substream(&stream());
    let mut child = StreamBuilder::full(ByteOrder::Little, "tank/fs/child@a", 0x78);
    child.object(2, 4096, &[0u8; 64]);
    child.write(2, 0, &[9u8; 4096]);
    p.substream(&child.finish());
    p.finish()
}

#[test]
fn verifier_releases_only_verified_bytes_and_the_end_only_at_finish() {
    let s = stream();
    for step in [1usize, 100, 312, 5000, s.len()] {
        let mut v = Verifier::new(1 << 30);
        let mut out = push_all(&mut v, &s, step);
        assert!(v.end_held(), "step {step}");
        assert_eq!(out.len(), s.len() - END_LEN, "step {step}: the END is held");
        assert_eq!(v.released(), (s.len() - END_LEN) as u64);
        let guid = finish_into(&mut v, s.len() as u64, &mut out).expect("finish");
        assert_eq!(out, s);
        assert_eq!(guid, Some(0x77));
        assert_eq!(v.released(), s.len() as u64);
    }
}

#[test]
fn the_verifier_tells_a_volume_from_a_file_system_past_a_package_header() {
    let mut volume = StreamBuilder::volume(ByteOrder::Big, "tank/vm@a", 0x79);
    volume.object(1, 8192, &[]);
    let volume = volume.finish();
    for (s, want) in [(stream(), 2), (package(), 2), (volume, 3)] {
        let mut v = Verifier::with_options(
            1 << 30,
            VerifierOptions {
                accept_compound: true,
            },
        );
        assert_eq!(v.objset_type(), None);
        push_all(&mut v, &s, 97);
        assert_eq!(v.objset_type(), Some(want));
    }
}

#[test]
fn a_wrong_length_fails_and_the_end_is_never_released() {
    let s = stream();
    let len = s.len() as u64;
    for wrong in [0, len - 1, len - END_LEN as u64, len + 1, len + 4096] {
        let mut v = Verifier::new(1 << 30);
        let mut out = push_all(&mut v, &s, 4096);
        match finish_into(&mut v, wrong, &mut out) {
            Err(SinkError::LengthMismatch {
                verified,
                announced,
            }) => {
                assert_eq!((verified, announced), (len, wrong));
            }
            r => panic!("{wrong}: {r:?}"),
        }
        assert_eq!(out, &s[..s.len() - END_LEN], "{wrong}: no END byte out");
        // Closed for good: the right length afterwards changes nothing.
        assert!(matches!(
            finish_into(&mut v, len, &mut out),
            Err(SinkError::VerifierClosed)
        ));
        assert!(matches!(
            v.push(Bytes::from_static(b"x"), &mut |_| Ok(())),
            Err(SinkError::VerifierClosed)
        ));
        assert_eq!(out.len(), s.len() - END_LEN);
    }
}

#[test]
fn a_stream_cut_before_its_end_never_finishes() {
    let s = stream();
    let cut = &s[..s.len() - 100];
    let mut v = Verifier::new(1 << 30);
    let mut out = push_all(&mut v, cut, 1000);
    assert!(!v.end_held());
    let r = finish_into(&mut v, cut.len() as u64, &mut out);
    assert!(matches!(r, Err(SinkError::Stream(_))), "{r:?}");
    assert!(out.len() <= s.len() - END_LEN);
}

#[test]
fn compound_streams_are_refused_before_a_byte_is_released() {
    let p = package();
    for step in [1usize, 300, p.len()] {
        let mut v = Verifier::new(1 << 30);
        let mut out = Vec::new();
        let mut err = None;
        for c in p.chunks(step) {
            if let Err(e) = v.push(Bytes::copy_from_slice(c), &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            }) {
                err = Some(e);
                break;
            }
        }
        let err = err.expect("a package is refused");
        assert!(matches!(err, SinkError::Compound), "{err:?}");
        assert_eq!(
            err.to_string(),
            "compound (zfs send -R) streams are not accepted by this receiver"
        );
        assert!(out.is_empty(), "step {step}: {} bytes out", out.len());
        assert!(matches!(
            finish_into(&mut v, p.len() as u64, &mut out),
            Err(SinkError::VerifierClosed)
        ));
    }
}

#[test]
fn an_accepted_compound_stream_holds_its_last_ends_until_finish() {
    let p = package();
    let mut v = Verifier::with_options(
        1 << 30,
        VerifierOptions {
            accept_compound: true,
        },
    );
    let mut out = push_all(&mut v, &p, 777);
    assert!(v.end_held());
    // The last substream's END and the package's final END wait.
    assert_eq!(out.len(), p.len() - 2 * END_LEN);
    let r = finish_into(&mut v, p.len() as u64 + 1, &mut out);
    assert!(matches!(r, Err(SinkError::LengthMismatch { .. })), "{r:?}");
    // The last substream's END and the package's final END wait.
    assert_eq!(out.len(), p.len() - 2 * END_LEN);

    let mut v = Verifier::with_options(
        1 << 30,
        VerifierOptions {
            accept_compound: true,
        },
    );
    let mut out = push_all(&mut v, &p, 777);
    let guid = finish_into(&mut v, p.len() as u64, &mut out).expect("finish");
    assert_eq!(out, p);
    assert_eq!(guid, Some(0x78), "the last BEGIN's toguid");
}

#[test]
fn a_flipped_byte_stops_before_the_damage() {
    let mut s = stream();
    let at = s.len() / 2;
    s[at] ^= 1;
    let mut v = Verifier::new(1 << 30);
    let mut out = Vec::new();
    let r = v.push(Bytes::from(s.clone()), &mut |b| {
        out.extend_from_slice(b);
        Ok(())
    });
    assert!(r.is_err());
    assert!(out.len() <= at);
    assert_eq!(&out[..], &s[..out.len()]);
}

/// What the sender reads when opening a sink fails with `e`: the
/// refusal goes over the wire and is decoded on the sending side.
fn sender_sees(e: &SinkError) -> (RefuseCode, String) {
    let (m, _) = *fjord_proto::receiver::refuse(e.refuse_code(), e.to_string());
    match fjord_proto::message::Message::decode(m.to_bytes().slice(4..)) {
        Ok(fjord_proto::message::Message::Refuse { code, reason }) => (
            code,
            fjord_proto::SessionError::Refused {
                code,
                reason: reason.clone(),
            }
            .to_string(),
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn each_kind_of_sink_error_reaches_the_sender_as_its_own_refusal() {
    let policy = SinkError::refused(
        RefuseCode::Policy,
        "refused by the DR node's policy: client oslo may not roll backup/oslo/fs back",
    );
    assert_eq!(
        sender_sees(&policy),
        (
            RefuseCode::Policy,
            "refused by the receiver (DR policy): refused by the DR node's policy: client oslo may not roll backup/oslo/fs back".into()
        )
    );
    let name = SinkError::refused(RefuseCode::BadDataset, "client oslo: tank/x is outside");
    assert_eq!(sender_sees(&name).0, RefuseCode::BadDataset);
    let exists = SinkError::refused(RefuseCode::Exists, "/srv/x@a.zsend already exists");
    assert_eq!(sender_sees(&exists).0, RefuseCode::Exists);

    let recv = SinkError::Downstream {
        what: "zfs recv into backup/oslo/fs@b".into(),
        status: Some(1),
        stderr: "cannot receive incremental stream: destination backup/oslo/fs has been modified\nsince most recent snapshot\n".into(),
    };
    assert_eq!(
        sender_sees(&recv),
        (
            RefuseCode::SinkFailed,
            "refused by the receiver (receiver's storage failed): zfs recv into backup/oslo/fs@b exited 1: cannot receive incremental stream: destination backup/oslo/fs has been modified\nsince most recent snapshot".into()
        )
    );
    assert_eq!(recv.report_status(), 1);
    let killed = SinkError::Downstream {
        what: "zfs recv into backup/oslo/fs@b".into(),
        status: Some(137),
        stderr: String::new(),
    };
    assert_eq!(killed.report_status(), 137);
    let missing = SinkError::Downstream {
        what: "zfs recv into backup/oslo/fs@b".into(),
        status: None,
        stderr: "cannot run /sbin/zfs: not found".into(),
    };
    assert_eq!(
        missing.to_string(),
        "zfs recv into backup/oslo/fs@b failed: cannot run /sbin/zfs: not found"
    );
    assert_eq!(missing.report_status(), 1);

    let thread = SinkError::Internal("cannot start the sink thread: out of memory".into());
    assert_eq!(
        sender_sees(&thread),
        (
            RefuseCode::Other,
            "refused by the receiver (other): internal error in the receiver: cannot start the sink thread: out of memory".into()
        )
    );
    let busy = SinkError::Busy("a stream into backup/oslo/fs is already being received".into());
    assert_eq!(sender_sees(&busy).0, RefuseCode::Busy);
    let io = SinkError::Io {
        path: "/srv/x".into(),
        source: std::io::Error::other("no space left on device"),
    };
    assert_eq!(sender_sees(&io).0, RefuseCode::SinkFailed);
    assert_eq!(io.report_status(), 1);
}

#[test]
fn a_write_out_of_order_is_an_internal_error() {
    let mut next = 10;
    match advance_contiguous(&mut next, 12, 5) {
        Err(SinkError::Internal(why)) => {
            assert_eq!(why, "write at stream offset 12, expected 10")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(next, 10);
    advance_contiguous(&mut next, 10, 5).expect("contiguous");
    assert_eq!(next, 15);
}

#[test]
fn the_file_sink_refuses_by_name_by_existing_file_and_by_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let factory = FileSinkFactory::new(dir.path().to_path_buf(), 1 << 20);
    let key = PublicKey([1; 32]);
    let code = |r: Result<Box<dyn Sink>, SinkError>| match r {
        Err(e) => e.refuse_code(),
        Ok(_) => panic!("expected a refusal"),
    };
    assert_eq!(
        code(factory.open(&offer("../etc"), &key)),
        RefuseCode::BadDataset
    );
    std::fs::write(dir.path().join("backup_fs@a.zsend"), b"old").expect("write");
    assert_eq!(
        code(factory.open(&offer("backup/fs"), &key)),
        RefuseCode::Exists
    );
    let mut forced = offer("backup/other");
    forced.flags = fjord_proto::message::offer_flags::FORCE_ROLLBACK;
    assert_eq!(code(factory.open(&forced, &key)), RefuseCode::Other);
}

#[test]
fn file_names_refuse_path_tricks() {
    let mut o = Offer {
        session: fjord_proto::SessionId(1),
        resuming: false,
        dataset: "backup/fs".into(),
        from: None,
        to: fjord_proto::message::Snapshot {
            name: "tank/fs@b".into(),
            guid: 1,
        },
        flags: 0,
        size_estimate: None,
    };
    assert_eq!(stream_file_name(&o).unwrap(), "backup_fs@b.zsend");
    for bad in ["../etc", "/abs", "a//b", "", "a\0b"] {
        o.dataset = bad.into();
        assert!(stream_file_name(&o).is_err(), "{bad}");
    }
}

fn offer(dataset: &str) -> Offer {
    Offer {
        session: fjord_proto::SessionId(1),
        resuming: false,
        dataset: dataset.into(),
        from: None,
        to: fjord_proto::message::Snapshot {
            name: "tank/fs@a".into(),
            guid: 0x77,
        },
        flags: 0,
        size_estimate: None,
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

#[test]
fn the_file_sink_never_renames_a_partial_whose_length_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let factory = FileSinkFactory::new(dir.path().to_path_buf(), 1 << 20);
    let s = stream();
    let target = dir.path().join("backup_fs@a.zsend");
    let partial = dir.path().join(".backup_fs@a.zsend.partial");
    let mut sink = factory
        .open(&offer("backup/fs"), &PublicKey([1; 32]))
        .expect("open");
    #[cfg(unix)]
    assert_eq!(mode(&partial), 0o600);
    let mut at = 0u64;
    for c in s.chunks(1000) {
        sink.write(at, Bytes::copy_from_slice(c)).expect("write");
        at += c.len() as u64;
    }
    let err = sink.finish(at + 1).expect_err("a wrong length fails");
    assert!(matches!(err, SinkError::LengthMismatch { .. }), "{err}");
    assert!(!target.exists(), "never renamed");
    // What reached the partial file stops before the END.
    let written = std::fs::read(&partial).expect("partial still there");
    assert_eq!(written, &s[..s.len() - END_LEN]);
    drop(sink);
    assert!(!partial.exists(), "discarded when the session goes");
    assert!(!target.exists());
}

#[test]
fn the_file_sink_stores_owner_only_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let factory = FileSinkFactory::new(dir.path().to_path_buf(), 1 << 20);
    let s = stream();
    let mut sink = factory
        .open(&offer("backup/fs"), &PublicKey([1; 32]))
        .expect("open");
    sink.write(0, Bytes::from(s.clone())).expect("write");
    let outcome = sink.finish(s.len() as u64).expect("finish");
    assert_eq!(outcome.snapshot_guid, Some(0x77));
    drop(sink);
    let target = dir.path().join("backup_fs@a.zsend");
    assert_eq!(std::fs::read(&target).expect("stored"), s);
    #[cfg(unix)]
    assert_eq!(mode(&target), 0o600);
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("ls").count(),
        1,
        "no partial left"
    );
}
