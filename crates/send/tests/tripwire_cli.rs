//! `fjord-send status` shows a waiting tripwire alarm (table, --json, exit
//! 4) and `fjord-send tripwire ack` clears it.

use std::path::Path;
use std::process::{Command, Output};

fn fjord_send(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fjord-send"))
        .args(args)
        .output()
        .expect("fjord-send runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn setup(dir: &Path) -> String {
    let key = dir.join("send.key");
    let out = fjord_send(&["keygen", "--key", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let public = text(&out.stdout).trim().to_string();
    let state = dir.join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(
        state.join("home.status.json"),
        r#"{"job":"home","last_attempt":1769860800,"last_success":1769860800,"last_result":"ok",
            "last_error":null,"bytes":1,"bytes_resent":0,"duration_secs":1.0,
            "newest_replicated_snapshot_time":1769860790}"#,
    )
    .unwrap();
    std::fs::write(
        state.join("home.tripwire.json"),
        r#"{"job":"home","datasets":{"tank/home":{"history":[],"last":null,
            "alarm":{"time":1769860800,"snapshot":"fjord_2026-01-31T120000Z",
            "incompressible":0.99,"rewritten":0.97,
            "reason":"incompressible 99% (usually 4%): possible mass encryption"}}}}"#,
    )
    .unwrap();
    let path = dir.join("send.toml");
    std::fs::write(
        &path,
        format!(
            "key = {:?}\nstate_dir = {:?}\n[[job]]\nname = \"home\"\nsource = \"tank/home\"\n\
             target_host = \"127.0.0.1:7450\"\ntarget_key = \"{public}\"\ntarget_dataset = \"backup/home\"\n\
             [job.tripwire]\npause_pruning = true\n",
            key.display().to_string(),
            state.display().to_string()
        ),
    )
    .unwrap();
    path.display().to_string()
}

#[test]
fn status_shows_the_alarm_until_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let out = fjord_send(&["status", "--config", &config]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table
            .contains("home: tank/home: TRIPWIRE at @fjord_2026-01-31T120000Z: incompressible 99%")
            && table.contains("source pruning paused"),
        "{table}"
    );
    let out = fjord_send(&["status", "--config", &config, "--json"]);
    assert_eq!(out.status.code(), Some(4));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let alarm = &json[0]["tripwire_alarms"][0];
    assert_eq!(alarm["dataset"], "tank/home");
    assert_eq!(alarm["incompressible"], 0.99);
    assert_eq!(alarm["pruning_paused"], true);

    let out = fjord_send(&["tripwire", "ack", "--config", &config, "nosuchjob"]);
    assert_eq!(out.status.code(), Some(5));
    let out = fjord_send(&["tripwire", "ack", "--config", &config, "home"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("tank/home: tripwire alarm acknowledged"));
    let out = fjord_send(&["status", "--config", &config, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json[0]["tripwire_alarms"], serde_json::json!([]));
    let out = fjord_send(&["tripwire", "ack", "--config", &config, "home"]);
    assert!(text(&out.stdout).contains("no tripwire alarm"));
}

#[test]
fn check_config_names_a_bad_tripwire_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path());
    let mut text_cfg = std::fs::read_to_string(&config).unwrap();
    text_cfg.push_str("factor = 0.5\n");
    std::fs::write(&config, text_cfg).unwrap();
    let out = fjord_send(&["check-config", "--config", &config]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        text(&out.stderr).contains("job[1].tripwire.factor"),
        "{}",
        text(&out.stderr)
    );
}
