//! The CLI boundary of `fjord-recv`: exit codes from `fjord_cli::exit`
//! and every error printed once.

use std::process::{Command, Output};

fn fjord_recv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fjord-recv"))
        .args(args)
        .output()
        .expect("fjord-recv runs")
}

fn said_once(out: &Output) -> String {
    let e = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(e.matches("fjord-recv: error: ").count(), 1, "{e}");
    let enoent = std::io::Error::from_raw_os_error(2).to_string();
    assert!(e.matches(&enoent).count() <= 1, "the cause said once: {e}");
    e
}

#[test]
fn a_missing_config_is_a_config_error() {
    for cmd in ["serve", "prune"] {
        let out = fjord_recv(&[cmd, "--config", "/nonexistent/recv.toml"]);
        assert_eq!(out.status.code(), Some(5), "{cmd}");
        assert!(said_once(&out).contains("/nonexistent/recv.toml"));
    }
}

#[test]
fn serve_without_its_key_cannot_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = fjord_recv(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--key",
        "/nonexistent/recv.key",
        "--allow-key",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "--sink-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(said_once(&out).contains("/nonexistent/recv.key"));
}

#[test]
fn keygen_makes_its_directory_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("fjord/recv.key");
    let key = key.to_str().unwrap();
    let out = fjord_recv(&["keygen", "--key", key]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim().len(), 44);
    let again = fjord_recv(&["keygen", "--key", key]);
    assert_eq!(again.status.code(), Some(3));
    assert!(said_once(&again).contains("already exists"));
}
