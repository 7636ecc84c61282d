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

/// A receiver config in `dir` for one client, with its key files made.
fn recv_config(dir: &std::path::Path) -> (String, String) {
    let key = dir.join("recv.key");
    let out = fjord_recv(&["keygen", "--key", key.to_str().unwrap()]);
    assert!(out.status.success());
    let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let client = dir.join("client.key");
    let out = fjord_recv(&["keygen", "--key", client.to_str().unwrap()]);
    let client_public = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let path = dir.join("recv.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:7450\"\nkey = {:?}\n[[client]]\nname = \"oslo\"\nkey = \"{client_public}\"\nprefixes = [\"backup/oslo\"]\n",
            key.display().to_string()
        ),
    )
    .unwrap();
    (path.display().to_string(), public)
}

/// A `PATH` holding only an executable named `zfs` (never run: the checks
/// only look for it).
fn path_with_zfs(dir: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let zfs = bin.join("zfs");
    std::fs::write(&zfs, "#!/bin/sh\nexit 1\n").unwrap();
    std::fs::set_permissions(&zfs, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin.display().to_string()
}

#[test]
fn check_config_passes_a_good_file_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, public) = recv_config(dir.path());
    let run = |path: &str| {
        Command::new(env!("CARGO_BIN_EXE_fjord-recv"))
            .args(["check-config", "--config", &config])
            .env("PATH", path)
            .output()
            .unwrap()
    };
    let ok = run(&path_with_zfs(dir.path()));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let said = String::from_utf8_lossy(&ok.stdout);
    assert!(said.contains("ok") && said.contains(&public), "{said}");
    // No zfs on the PATH: a config error naming the binary, before any client connects.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let no_zfs = run(empty.to_str().unwrap());
    assert_eq!(no_zfs.status.code(), Some(5));
    assert!(
        said_once(&no_zfs).contains("zfs"),
        "{}",
        String::from_utf8_lossy(&no_zfs.stderr)
    );
}

#[test]
fn pubkey_prints_the_public_key_of_a_key_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, public) = recv_config(dir.path());
    let key = dir.path().join("recv.key");
    let out = fjord_recv(&["pubkey", "--key", key.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), public);
    let missing = fjord_recv(&["pubkey", "--key", "/nonexistent/recv.key"]);
    assert_eq!(missing.status.code(), Some(3));
    assert!(said_once(&missing).contains("/nonexistent/recv.key"));
}
