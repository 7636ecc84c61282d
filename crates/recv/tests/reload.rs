//! `fjord-recv serve --config` reloads its clients on SIGHUP, over real
//! QUIC on loopback with a stand-in `zfs` on the PATH: a key the reload
//! adds is answered, a key it removes is refused, a file that does not
//! load is rejected (its file and key named) and the previous config
//! stays; systemd hears `RELOADING=1` (with `MONOTONIC_USEC`) and
//! `READY=1` around each reload. (That a transfer under way goes on
//! across a reload is shown in fjord-transport's tests/reload.rs.) The
//! metrics file written at shutdown counts the refusals by code and by
//! client name, and the reloads.

use fjord_proto::{Request, Response};
use fjord_transport::client::{request, RequestOptions, SendError};
use fjord_transport::{Identity, LinkConfig};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn keygen(path: &Path) -> String {
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

/// A `zfs` that knows no dataset (enough for target-state requests).
fn fake_zfs(dir: &Path) {
    let path = dir.join("zfs");
    std::fs::write(
        &path,
        "#!/bin/sh\nfor last; do :; done\necho \"cannot open '$last': dataset does not exist\" >&2\nexit 1\n",
    )
    .expect("write the fake zfs");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn config(key: &Path, clients: &[(&str, &str)]) -> String {
    let metrics = key.with_file_name("fjord-recv.prom");
    let mut text = format!(
        "listen = \"127.0.0.1:0\"\nkey = \"{}\"\nmetrics_file = \"{}\"\n",
        key.display(),
        metrics.display()
    );
    for (name, pubkey) in clients {
        text.push_str(&format!(
            "[[client]]\nname = \"{name}\"\nkey = \"{pubkey}\"\nprefixes = [\"backup/{name}\"]\n"
        ));
    }
    text
}

/// Asks for the state of `dataset` as `id`.
fn ask_for(
    id: &Identity,
    to: SocketAddr,
    server: &Identity,
    dataset: &str,
) -> Result<Vec<Response>, SendError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let opts = RequestOptions {
        to,
        server_key: server.public_key(),
        link: LinkConfig::default(),
        patience: Duration::from_secs(5),
    };
    rt.block_on(request(
        id,
        &opts,
        &[Request::TargetState {
            dataset: dataset.to_string(),
        }],
    ))
}

/// Asks for the state of `backup/<client>/fs` as `id`.
fn ask(id: &Identity, to: SocketAddr, server: &Identity, client: &str) -> Result<(), SendError> {
    let dataset = format!("backup/{client}/fs");
    let answers = ask_for(id, to, server, &dataset)?;
    assert!(
        matches!(answers.as_slice(), [Response::TargetState(t)] if t.dataset == dataset && !t.exists),
        "{answers:?}"
    );
    Ok(())
}

fn hup(child: &Reap) {
    let ok = Command::new("kill")
        .args(["-HUP", &child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(ok.success());
}

/// The notifications of one reload: `RELOADING=1` with a monotonic time,
/// then `READY=1` (watchdog keep-alives are not asked for here).
fn reload_notified(sock: &UnixDatagram) {
    let reloading = next(sock);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert_eq!(next(sock), "READY=1\n");
}

/// Waits until the receiver's stderr (a file) contains `what`.
fn wait_for_log(log: &Path, what: &str) -> String {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "no {what:?} in the log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sighup_reloads_the_clients_and_rejects_a_bad_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    fake_zfs(dir.path());
    let recv_key = dir.path().join("recv.key");
    keygen(&recv_key);
    let server = Identity::load(&recv_key).expect("receiver key");
    let old_pub = keygen(&dir.path().join("old.key"));
    let new_pub = keygen(&dir.path().join("new.key"));
    let old = Identity::load(&dir.path().join("old.key")).expect("old key");
    let new = Identity::load(&dir.path().join("new.key")).expect("new key");
    let file = dir.path().join("recv.toml");
    std::fs::write(&file, config(&recv_key, &[("old", &old_pub)])).expect("config");
    let socket = dir.path().join("notify");
    let sock = UnixDatagram::bind(&socket).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let log = dir.path().join("stderr");
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Reap(
        Command::new(env!("CARGO_BIN_EXE_fjord-recv"))
            .arg("serve")
            .arg("--config")
            .arg(&file)
            .env("PATH", path)
            .env("NOTIFY_SOCKET", &socket)
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("fjord-recv serve starts"),
    );
    let ready = next(&sock);
    let addr: SocketAddr = ready
        .strip_prefix("READY=1\nSTATUS=listening on ")
        .and_then(|s| s.split(';').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{ready:?}"));

    ask(&old, addr, &server, "old").expect("the configured client is answered");
    assert!(matches!(
        ask(&new, addr, &server, "new"),
        Err(SendError::KeyRefused { .. })
    ));

    // The reload: "new" in, "old" out.
    std::fs::write(&file, config(&recv_key, &[("new", &new_pub)])).expect("config");
    hup(&child);
    reload_notified(&sock);
    wait_for_log(&log, "clients added: new; removed: old; changed: none");
    ask(&new, addr, &server, "new").expect("the added client is answered");
    let err = ask(&old, addr, &server, "old").expect_err("the removed client is refused");
    assert!(matches!(err, SendError::KeyRefused { .. }), "{err}");

    // A file that does not load: rejected, named; the config in force stays.
    std::fs::write(&file, config(&recv_key, &[("new", "not-a-key")])).expect("config");
    hup(&child);
    reload_notified(&sock);
    let text = wait_for_log(&log, "reload rejected");
    assert!(
        text.contains(&format!("{}: client[1].key (client new)", file.display())),
        "{text}"
    );
    ask(&new, addr, &server, "new").expect("the previous config is still in force");
    // A request outside the client's prefixes: refused, counted for "new".
    let answers = ask_for(&new, addr, &server, "backup/old/fs").expect("answered");
    assert!(
        matches!(answers.as_slice(), [Response::Failed { .. }]),
        "{answers:?}"
    );

    let term = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(term.success());
    let mut child = child;
    let status = child.0.wait().expect("fjord-recv exits");
    assert!(status.success(), "{status:?}");

    // The metrics file, written at shutdown.
    let text = std::fs::read_to_string(dir.path().join("fjord-recv.prom")).expect("metrics file");
    for line in [
        // "new" before the reload, "old" after it: refused in the handshake.
        "fjord_dr_refused_requests_total{code=\"not_pinned\",client=\"unknown\"} 2",
        "fjord_dr_refused_requests_total{code=\"bad_dataset\",client=\"new\"} 1",
        "fjord_dr_reloads_total{result=\"applied\"} 1",
        "fjord_dr_reloads_total{result=\"rejected\"} 1",
        "fjord_dr_policy_refusals_total{action=\"destroy\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
}
