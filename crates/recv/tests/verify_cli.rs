//! `fjord-recv verify`: the filter in front of `zfs recv` copies valid
//! streams byte for byte and, on damage, writes only verified records.

use fjord_suite::{valid_corpus, XorShift};
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn verify(stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fjord-recv"))
        .args(["verify", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fjord-recv runs");
    let mut pipe = child.stdin.take().expect("stdin piped");
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = pipe.write_all(&data);
    });
    let out = child.wait_with_output().expect("fjord-recv finishes");
    feeder.join().expect("feeder thread");
    out
}

#[test]
fn valid_streams_pass_through_unchanged() {
    for s in valid_corpus() {
        let out = verify(&s.bytes);
        assert!(
            out.status.success(),
            "{}: {}",
            s.name,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == s.bytes,
            "{}: output differs from input",
            s.name
        );
    }
}

#[test]
fn damage_stops_the_filter_before_any_unverified_byte() {
    let mut rng = XorShift(7);
    for s in valid_corpus()
        .into_iter()
        .filter(|s| s.bytes.len() < 300_000)
    {
        for _ in 0..8 {
            let pos = rng.range(0, s.bytes.len() - 1);
            let mut damaged = s.bytes.clone();
            damaged[pos] ^= 0x04;
            let out = verify(&damaged);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{}: flip at {pos} passed",
                s.name
            );
            // What was written is an untouched prefix ending before the damage.
            assert!(
                out.stdout.len() <= pos,
                "{}: wrote {} bytes past damage at {pos}",
                s.name,
                out.stdout.len()
            );
            assert!(s.bytes.starts_with(&out.stdout), "{}", s.name);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("verified bytes were written, nothing after them"),
                "{stderr}"
            );
        }
    }
}

#[test]
fn truncation_writes_only_verified_records() {
    let s = valid_corpus()
        .into_iter()
        .find(|s| s.name == "dedup")
        .unwrap();
    let cut = s.bytes.len() / 2 + 3;
    let out = verify(&s.bytes[..cut]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.len() < cut && s.bytes.starts_with(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("truncated at byte"));
}
