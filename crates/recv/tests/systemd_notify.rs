//! `fjord-recv serve` under systemd's `Type=notify` protocol, with a Unix
//! datagram socket standing in for systemd's: `READY=1` once listening,
//! `WATCHDOG=1` at half `WATCHDOG_USEC`, `STOPPING=1` on SIGTERM, exit 0.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn keygen(path: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_fjord-recv"))
        .arg("keygen")
        .arg("--key")
        .arg(path)
        .output()
        .expect("fjord-recv keygen runs");
    assert!(out.status.success(), "keygen failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Kills the receiver if the test fails before it exits.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The next datagram, as text (panics after the socket's read timeout).
fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 1024];
    let n = sock
        .recv(&mut buf)
        .expect("a notification before the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn serve_notifies_ready_keeps_the_watchdog_fed_and_says_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("recv.key");
    keygen(&key);
    let sender = keygen(&dir.path().join("send.key"));
    let sink = dir.path().join("sink");
    std::fs::create_dir(&sink).expect("sink dir");
    let socket = dir.path().join("notify");
    let sock = UnixDatagram::bind(&socket).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");

    let mut child = Reap(
        Command::new(env!("CARGO_BIN_EXE_fjord-recv"))
            .args(["serve", "--listen", "127.0.0.1:0", "--key"])
            .arg(&key)
            .args(["--allow-key", &sender, "--sink-dir"])
            .arg(&sink)
            .env("NOTIFY_SOCKET", &socket)
            // 200 ms: a keep-alive every 100 ms
            .env("WATCHDOG_USEC", "200000")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("fjord-recv serve starts"),
    );

    let ready = next(&sock);
    assert!(
        ready.starts_with("READY=1\nSTATUS=listening on 127.0.0.1:"),
        "{ready:?}"
    );
    let t0 = Instant::now();
    for _ in 0..3 {
        assert_eq!(next(&sock), "WATCHDOG=1\n");
    }
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "three keep-alives took {:?}",
        t0.elapsed()
    );

    let term = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    // keep-alives may still arrive before it
    let mut said = next(&sock);
    while said == "WATCHDOG=1\n" {
        said = next(&sock);
    }
    assert_eq!(said, "STOPPING=1\n");
    let status = child.0.wait().expect("fjord-recv exits");
    assert!(status.success(), "{status:?}");
}
