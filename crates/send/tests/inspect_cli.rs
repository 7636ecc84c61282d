//! `fjord-send inspect` as an operator runs it: on every corpus stream and
//! on the real streams the lab's OpenZFS 2.3 wrote.

use fjord_suite::{corpus, lab_fixture, BAD_STREAM};
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn inspect(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fjord-send"))
        .arg("inspect")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fjord-send runs");
    if let Some(data) = stdin {
        let mut pipe = child.stdin.take().expect("stdin piped");
        // The child may stop reading early on a bad stream.
        let _ = pipe.write_all(data);
    }
    child.wait_with_output().expect("fjord-send finishes")
}

fn with_file<T>(bytes: &[u8], f: impl FnOnce(&str) -> T) -> T {
    let dir = std::env::temp_dir().join(format!("fjord-inspect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("s{}.zsend", bytes.len()));
    std::fs::write(&path, bytes).unwrap();
    let out = f(path.to_str().unwrap());
    let _ = std::fs::remove_file(&path);
    out
}

#[test]
fn accepts_every_valid_corpus_stream_and_rejects_the_bad_one() {
    for s in corpus() {
        let out = with_file(&s.bytes, |p| inspect(&["--verify", p], None));
        let stderr = String::from_utf8_lossy(&out.stderr);
        if s.name == BAD_STREAM {
            assert_eq!(out.status.code(), Some(1), "{}", s.name);
            assert_eq!(stderr.lines().count(), 1, "one-line error: {stderr}");
            assert!(
                stderr.contains("DRR_WRITE logical size 256 below minimum 512"),
                "{stderr}"
            );
        } else {
            assert!(out.status.success(), "{}: {stderr}", s.name);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                stdout.contains("checksums:         all verified"),
                "{}",
                s.name
            );
        }
    }
}

#[test]
fn truncated_stdin_gives_the_exact_one_line_error() {
    let s = corpus()
        .into_iter()
        .find(|s| s.name == "little-endian-all-drr-types-base-NATIVE")
        .unwrap();
    // Cut inside a payload: find one through the codec.
    let mut d = fjord_stream::Decoder::default();
    d.feed(&s.bytes);
    let w = std::iter::from_fn(|| d.next_record().unwrap())
        .find(|r| r.record_type() == fjord_stream::RecordType::Write)
        .unwrap();
    let cut = w.offset as usize + 312 + 100;
    let out = inspect(&["--verify", "-"], Some(&s.bytes[..cut]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!("fjord-send: error: -: truncated at byte {cut} inside the payload of record #{} (DRR_WRITE)", w.index)
    );
}

#[test]
fn json_summary_of_a_real_incremental() {
    let bytes = lab_fixture("incr-i.zsend");
    let out = with_file(&bytes, |p| inspect(&["--json", "--verify", p], None));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    assert_eq!(v["kind"], "incremental");
    assert_eq!(v["byte_order"], "little-endian");
    assert_eq!(v["checksums_verified"], true);
    assert_eq!(v["substreams"][0]["toname"], "src/fx@b");
    assert_ne!(v["substreams"][0]["fromguid"], 0);
    assert_eq!(v["total_bytes"], bytes.len() as u64);
    let begin = v["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "DRR_BEGIN")
        .unwrap();
    assert_eq!(begin["records"], 1);
}

#[test]
fn missing_file_is_an_io_error() {
    let out = inspect(&["/nonexistent/stream.zsend"], None);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open /nonexistent/stream.zsend"));
}
