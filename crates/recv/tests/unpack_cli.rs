//! `fjord-recv unpack`: packs made with the library come back byte for
//! byte; damage gives exit 1, a message naming the frame, and only
//! verified bytes on the output.

use fjord_pack::{pack, NoCache, PackOptions};
use fjord_suite::{lab_fixtures, XorShift};
use std::process::{Command, Output};

fn pack_bytes(stream: &[u8]) -> Vec<u8> {
    let mut packed = Vec::new();
    let opts = PackOptions {
        frame_target: 16 * 1024,
        ..Default::default()
    };
    pack(stream, &mut packed, &opts, &mut NoCache).expect("packs");
    packed
}

fn unpack_file(path: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fjord-recv"))
        .arg("unpack")
        .arg(path)
        .args(extra)
        .output()
        .expect("fjord-recv runs")
}

#[test]
fn unpacks_to_stdout_and_to_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, stream) in lab_fixtures() {
        let p = dir.path().join(format!("{name}.fjp"));
        std::fs::write(&p, pack_bytes(&stream)).expect("write");
        let out = unpack_file(&p, &[]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout == stream, "{name}: stdout differs");
        let o = dir.path().join(format!("{name}.out"));
        let out = unpack_file(&p, &["-o", o.to_str().expect("utf-8 path")]);
        assert!(out.status.success());
        assert!(out.stdout.is_empty());
        assert!(
            std::fs::read(&o).expect("output") == stream,
            "{name}: file differs"
        );
    }
}

#[test]
fn damage_exits_1_names_the_frame_and_writes_only_verified_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stream = fjord_suite::lab_fixture("full.zsend");
    let packed = pack_bytes(&stream);
    let mut rng = XorShift(3);
    for i in 0..6 {
        let mut damaged = packed.clone();
        if i % 2 == 0 {
            let pos = rng.range(0, damaged.len() - 1);
            damaged[pos] ^= 0x10;
        } else {
            damaged.truncate(rng.range(1, damaged.len() - 1));
        }
        let p = dir.path().join(format!("damaged{i}.fjp"));
        std::fs::write(&p, &damaged).expect("write");
        let out = unpack_file(&p, &[]);
        assert_eq!(out.status.code(), Some(1), "case {i}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("frame") && stderr.contains("verified"),
            "{stderr}"
        );
        assert!(
            out.stdout == stream[..out.stdout.len()],
            "case {i}: output is not a prefix"
        );
    }
}

#[test]
fn a_missing_pack_is_an_io_error() {
    let out = unpack_file(std::path::Path::new("/nonexistent/x.fjp"), &[]);
    assert_eq!(out.status.code(), Some(3));
}
