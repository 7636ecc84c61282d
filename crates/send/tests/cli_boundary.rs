//! The CLI boundary of `fjord-send`: exit codes from `fjord_cli::exit`,
//! every error printed once, `status` consistent between the table and
//! `--json`, and `keygen`.

use std::os::unix::fs::PermissionsExt;
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

/// A config with two jobs in `dir`, none of which ever ran.
fn config(dir: &Path) -> String {
    let key = dir.join("send.key");
    let out = fjord_send(&["keygen", "--key", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let path = dir.join("send.toml");
    let mut toml = format!(
        "key = {key:?}\nstate_dir = {dir:?}\n",
        key = key.display().to_string(),
        dir = dir.display().to_string()
    );
    for name in ["home", "db"] {
        toml.push_str(&format!(
            "[[job]]\nname = \"{name}\"\nsource = \"tank/{name}\"\ntarget_host = \"127.0.0.1:7450\"\n\
             target_key = \"{public}\"\ntarget_dataset = \"backup/{name}\"\n"
        ));
    }
    std::fs::write(&path, toml).expect("write config");
    path.display().to_string()
}

#[test]
fn a_never_run_job_is_flagged_alike_in_the_table_and_in_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let table = fjord_send(&["status", "--config", &config]);
    let json = fjord_send(&["status", "--config", &config, "--json"]);
    assert_eq!(table.status.code(), Some(4), "{}", stderr(&table));
    assert_eq!(json.status.code(), Some(4), "{}", stderr(&json));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("home             never run"), "{text}");
    assert!(text.contains("db               never run"), "{text}");
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    let jobs = v.as_array().expect("an array");
    assert_eq!(jobs.len(), 2, "every configured job: {v}");
    assert_eq!(jobs[0]["job"], "home");
    assert_eq!(jobs[0]["last_result"], "never");
    assert_eq!(jobs[1]["job"], "db");
    assert_eq!(jobs[1]["last_result"], "never");
    for out in [&table, &json] {
        let e = stderr(out);
        assert_eq!(e.matches("fjord-send: error:").count(), 1, "{e}");
        assert!(
            e.contains("home never ran") && e.contains("db never ran"),
            "{e}"
        );
    }
}

#[test]
fn a_missing_config_is_a_config_error_said_once() {
    for json in [false, true] {
        let mut args = vec!["status", "--config", "/nonexistent/send.toml"];
        if json {
            args.push("--json");
        }
        let out = fjord_send(&args);
        assert_eq!(out.status.code(), Some(5));
        let e = stderr(&out);
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.starts_with("fjord-send: error: "), "{e}");
        let enoent = std::io::Error::from_raw_os_error(2).to_string();
        assert_eq!(e.matches(&enoent).count(), 1, "said once: {e}");
    }
}

#[test]
fn keygen_makes_its_directory_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("etc/fjord/send.key");
    let key_arg = key.to_str().unwrap();
    let out = fjord_send(&["keygen", "--key", key_arg]);
    assert!(out.status.success(), "{}", stderr(&out));
    let public = String::from_utf8(out.stdout).unwrap();
    assert_eq!(public.trim().len(), 44, "{public}");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(key.parent().unwrap()), 0o700);
    let before = std::fs::read(&key).unwrap();
    let again = fjord_send(&["keygen", "--key", key_arg]);
    assert_eq!(again.status.code(), Some(3));
    let e = stderr(&again);
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    assert_eq!(std::fs::read(&key).unwrap(), before, "the key is unchanged");
}

#[test]
fn an_unreadable_key_is_an_io_error_said_once() {
    let out = fjord_send(&[
        "send",
        "--stream",
        "-",
        "--to",
        "127.0.0.1:9",
        "--key",
        "/nonexistent/send.key",
        "--server-key",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "--dataset",
        "backup/x",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let e = stderr(&out);
    let enoent = std::io::Error::from_raw_os_error(2).to_string();
    assert_eq!(e.matches(&enoent).count(), 1, "said once: {e}");
    assert!(e.contains("/nonexistent/send.key"), "{e}");
}

/// `status --check`: one line on stdout and the Nagios exit code, from the
/// status files `push` writes.
#[test]
fn status_check_is_nagios_shaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let check = |extra: &[&str]| {
        let mut args = vec!["status", "--config", &config, "--check"];
        args.extend_from_slice(extra);
        let out = fjord_send(&args);
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(line.lines().count(), 1, "one line: {line}");
        (out.status.code(), line.trim().to_string())
    };
    // Neither job ever ran: no DR copy, critical.
    let (code, line) = check(&[]);
    assert_eq!(code, Some(2), "{line}");
    assert!(
        line.starts_with("FJORD-SEND CRITICAL - 2 of 2 jobs: home: never ran"),
        "{line}"
    );
    // Both pushed; the newest replicated snapshot is 45 minutes old.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    for job in ["home", "db"] {
        let status = serde_json::json!({
            "job": job, "last_attempt": now - 60, "last_success": now - 60,
            "last_result": "ok", "last_error": null, "bytes": 1, "bytes_resent": 0,
            "duration_secs": 1.0, "newest_replicated_snapshot_time": now - 2700,
        });
        std::fs::write(
            dir.path().join(format!("{job}.status.json")),
            status.to_string(),
        )
        .expect("status file");
    }
    let (code, line) = check(&[]);
    assert_eq!(code, Some(1), "{line}");
    assert!(
        line.starts_with("FJORD-SEND WARNING - 2 of 2 jobs: home: lag 45m > 30m"),
        "{line}"
    );
    let (code, line) = check(&["--warn-lag", "1h"]);
    assert_eq!(code, Some(0), "{line}");
    assert_eq!(line, "FJORD-SEND OK - 2 jobs, largest lag 45m");
    let (code, line) = check(&["--warn-lag", "10m", "--crit-lag", "40m"]);
    assert_eq!(code, Some(2), "{line}");
    // The check cannot run: unknown.
    let out = fjord_send(&["status", "--config", "/nonexistent/send.toml", "--check"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("FJORD-SEND UNKNOWN - "));
}

/// A fan-out job's status: one row per target under the job's, and
/// `--check` names the worst target.
#[test]
fn status_shows_each_target_of_a_fan_out_job_and_checks_the_worst() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let target = |name: &str, result: &str, lag: i64, error: Option<&str>| {
        serde_json::json!({
            "name": name, "last_result": result, "last_error": error,
            "last_success": now - 60, "newest_replicated_snapshot_time": now - lag,
        })
    };
    for job in ["home", "db"] {
        let targets = if job == "home" {
            vec![
                target("oslo", "ok", 60, None),
                target("bergen", "failed", 10_800, Some("unreachable")),
            ]
        } else {
            Vec::new()
        };
        let status = serde_json::json!({
            "job": job, "last_attempt": now - 60, "last_success": now - 60,
            "last_result": if job == "home" { "failed" } else { "ok" },
            "last_error": null, "bytes": 1, "bytes_resent": 0,
            "duration_secs": 1.0, "newest_replicated_snapshot_time": now - 60,
            "targets": targets,
        });
        std::fs::write(
            dir.path().join(format!("{job}.status.json")),
            status.to_string(),
        )
        .expect("status file");
    }
    let table = fjord_send(&["status", "--config", &config]);
    let text = String::from_utf8_lossy(&table.stdout);
    for (name, result) in [("oslo", "ok"), ("bergen", "failed")] {
        let row = format!("\n{:<16} {result} ", format!("  {name}"));
        assert!(text.contains(&row), "{row:?} in {text}");
    }
    assert!(text.contains("unreachable"), "{text}");
    let out = fjord_send(&["status", "--config", &config, "--check"]);
    let line = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{line}");
    assert!(
        line.contains("home: target bergen: last push failed, lag 3h > 2h"),
        "{line}"
    );
}
