//! `fjord-send pack` and `fjord-recv unpack` (built alongside, driven from
//! this crate's tests through the recv binary path): file mode round trips.

use fjord_suite::{lab_fixture, valid_corpus};
use std::process::Command;

fn fjord_send() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fjord-send"))
}

#[test]
fn packs_every_corpus_stream_and_reports_the_receipt() {
    let dir = tempfile::tempdir().expect("tempdir");
    for s in valid_corpus() {
        let input = dir.path().join(format!("{}.zsend", s.name));
        let output = dir.path().join(format!("{}.fjp", s.name));
        std::fs::write(&input, &s.bytes).expect("write input");
        let out = fjord_send()
            .args(["pack"])
            .arg(&input)
            .arg("-o")
            .arg(&output)
            .output()
            .expect("fjord-send runs");
        assert!(
            out.status.success(),
            "{}: {}",
            s.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let receipt = blake3::hash(&s.bytes).to_hex().to_string();
        assert!(stdout.contains(&receipt), "{}: {stdout}", s.name);
        let packed = std::fs::read(&output).expect("pack written");
        assert_eq!(&packed[..4], b"FJFR");
    }
}

#[test]
fn reads_standard_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("full.fjp");
    let stream = lab_fixture("full.zsend");
    let mut child = fjord_send()
        .args(["pack", "-", "-o"])
        .arg(&output)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("fjord-send runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&stream).expect("feed");
    }
    let out = child.wait_with_output().expect("finishes");
    assert!(out.status.success());
    assert!(output.exists());
}

#[test]
fn an_invalid_stream_is_refused_and_leaves_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("cut.zsend");
    let output = dir.path().join("cut.fjp");
    let stream = lab_fixture("full.zsend");
    std::fs::write(&input, &stream[..stream.len() / 2]).expect("write");
    let out = fjord_send()
        .arg("pack")
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("truncated"), "{stderr}");
    assert!(!output.exists());
}

#[test]
fn a_missing_input_is_an_io_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = fjord_send()
        .args(["pack", "/nonexistent/stream", "-o"])
        .arg(dir.path().join("x.fjp"))
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(3));
}
