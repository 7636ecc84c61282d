//! `fjord-send push` at its boundary, before any `zfs` runs: a bad
//! target_key is a config error naming the file, a missing state_dir is a
//! state error (exit 7, never "locked"), and only a held lock is exit 6.

use std::path::Path;
use std::process::{Command, Output};

fn fjord_send(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fjord-send"))
        .args(args)
        .output()
        .expect("fjord-send runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A one-job config in `dir` with `state_dir` and `target_key` as given
/// (`None`: a real key).
fn config(dir: &Path, state_dir: &Path, target_key: Option<&str>) -> String {
    let key = dir.join("send.key");
    if !key.exists() {
        let out = fjord_send(&["keygen", "--key", key.to_str().unwrap()]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let other = dir.join("recv.key");
    let out = if other.exists() {
        fjord_send(&["pubkey", "--key", other.to_str().unwrap()])
    } else {
        fjord_send(&["keygen", "--key", other.to_str().unwrap()])
    };
    assert!(out.status.success(), "{}", stderr(&out));
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let target_key = target_key.map(str::to_string).unwrap_or(public);
    let path = dir.join("send.toml");
    std::fs::write(
        &path,
        format!(
            "key = {:?}\nstate_dir = {:?}\n[[job]]\nname = \"home\"\nsource = \"tank/home\"\n\
             target_host = \"127.0.0.1:7450\"\ntarget_key = \"{target_key}\"\ntarget_dataset = \"backup/home\"\n",
            key.display().to_string(),
            state_dir.display().to_string()
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn a_placeholder_target_key_is_a_config_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), dir.path(), Some("BASE64PUBKEY="));
    let out = fjord_send(&["push", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&cfg) && err.contains("target_key"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_missing_state_dir_is_exit_7_not_locked() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("state");
    let cfg = config(dir.path(), &missing, None);
    for extra in [&[][..], &["--json"][..]] {
        let mut args = vec!["push", "--config", &cfg];
        args.extend_from_slice(extra);
        let out = fjord_send(&args);
        assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
        assert!(stderr(&out).contains("state_dir"), "{}", stderr(&out));
        if !extra.is_empty() {
            let job: serde_json::Value =
                serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
            assert_eq!(job["type"], "job");
            assert_eq!(job["result"], "failed");
        }
    }
}

#[test]
fn only_a_held_lock_is_exit_6() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), dir.path(), None);
    let lock = std::fs::File::create(dir.path().join("home.lock")).unwrap();
    lock.try_lock().unwrap();
    let out = fjord_send(&["push", "--config", &cfg, "--json"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let job: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
    assert_eq!(job["result"], "locked");
    drop(lock);
}

#[test]
fn check_config_reports_each_job_or_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), dir.path(), None);
    let ok = fjord_send(&["check-config", "--config", &cfg]);
    // zfs may be missing on a build machine without the lab: then it says so.
    if ok.status.success() {
        let said = String::from_utf8_lossy(&ok.stdout);
        assert!(
            said.contains("job home: tank/home -> backup/home"),
            "{said}"
        );
    } else {
        assert_eq!(ok.status.code(), Some(5));
        assert!(stderr(&ok).contains("zfs"), "{}", stderr(&ok));
    }
    let missing = dir.path().join("state");
    let cfg = config(dir.path(), &missing, None);
    let out = fjord_send(&["check-config", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        stderr(&out).contains("state_dir") && stderr(&out).contains("install -d"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn check_config_describes_each_target_and_a_snapshot_only_job() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), dir.path(), None);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("target_key = "))
        .unwrap()
        .to_string();
    let head = text.split("[[job]]").next().unwrap();
    let fanned = format!(
        "{head}[[job]]\nname = \"home\"\nsource = \"tank/home\"\n\
         [[job.target]]\nname = \"oslo\"\nhost = \"127.0.0.1:7450\"\nkey = {key}\ndataset = \"backup/home\"\n\
         [[job.target]]\nname = \"bergen\"\nhost = \"127.0.0.2:7450\"\nkey = {key}\ndataset = \"backup/home\"\n\
         [[job]]\nname = \"scratch\"\nsource = \"tank/scratch\"\n"
    );
    std::fs::write(&cfg, fanned).unwrap();
    let out = fjord_send(&["check-config", "--config", &cfg]);
    if out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout);
        for line in [
            "job home: tank/home -> 2 targets:",
            "  target oslo: backup/home at 127.0.0.1:7450",
            "base held as fjord-home-bergen",
            "job scratch: tank/scratch: snapshot-only",
        ] {
            assert!(said.contains(line), "{line:?} missing in {said}");
        }
    } else {
        // zfs may be missing on a build machine without the lab: then it says so.
        assert_eq!(out.status.code(), Some(5));
        assert!(stderr(&out).contains("zfs"), "{}", stderr(&out));
    }
    // a bad key of a named target names the target
    let bad = std::fs::read_to_string(&cfg).unwrap().replacen(
        &format!("key = {key}\ndataset"),
        "key = \"BASE64PUBKEY=\"\ndataset",
        1,
    );
    std::fs::write(&cfg, bad).unwrap();
    let out = fjord_send(&["check-config", "--config", &cfg]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        stderr(&out).contains("target \"oslo\": key"),
        "{}",
        stderr(&out)
    );
}
