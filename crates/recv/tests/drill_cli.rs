//! `fjord-recv drill` end to end against a stand-in `zfs` (a shell script
//! that answers the listings and logs every command): the `--dry-run
//! --json` plan changes nothing; a drill clones, mounts, runs the check
//! with its environment and destroys the clone; a failing check is
//! recorded failed with the clone destroyed all the same; `status`
//! shows the last drill.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const LEFTOVER: &str = "backup/drill/fjord-drill-backup_oslo_db-20200101T000000Z";

/// The stand-in `zfs`: two snapshots of backup/oslo/db (the newer with a
/// WAL position), the scratch dataset with one leftover clone.
fn fake_zfs(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = format!(
        r#"#!/bin/sh
echo "$*" >>"{log}"
case "$*" in
"list -H -o name backup/oslo/db" | "list -H -o name backup/drill" | "list -H -o name backup/oslo") ;;
"list -H -p -t snapshot -o name,guid,createtxg,creation -s createtxg -d 1 backup/oslo/db")
    printf 'backup/oslo/db@fjord_a\t11\t10\t1700000000\nbackup/oslo/db@fjord_b\t22\t20\t1700000600\n' ;;
"list -H -p -t snapshot "*) ;;
"list -H -o name -t filesystem,volume -r backup/oslo") printf 'backup/oslo\nbackup/oslo/db\n' ;;
"get -H -p -o name,value -t snapshot -d 1 fjord:wal_lsn backup/oslo/db")
    printf 'backup/oslo/db@fjord_a\t-\nbackup/oslo/db@fjord_b\t0/16B3F40\n' ;;
"get -H -p -o name,value -t snapshot -d 1 "*) ;;
"get -H -p -o value receive_resume_token "*) echo - ;;
"list -H -o name,fjord:drill -t filesystem -d 1 backup/drill")
    printf 'backup/drill\t-\n{LEFTOVER}\tbackup/oslo/db@fjord_a 2020-01-01T00:00:00Z\nbackup/drill/keep\t-\n' ;;
"clone "*) ;;
"mount "*) mkdir -p "{mnt}" && echo restored >"{mnt}/file" ;;
"get -H -p -o value mountpoint "*) echo "{mnt}" ;;
"destroy -r "*) ;;
*) echo "unexpected: zfs $*" >&2; exit 1 ;;
esac
"#,
        log = dir.join("zfs.log").display(),
        mnt = dir.join("mnt").display(),
    );
    let zfs = bin.join("zfs");
    std::fs::write(&zfs, script).unwrap();
    std::fs::set_permissions(&zfs, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn config(dir: &Path, check: &str) -> PathBuf {
    let path = dir.join("recv.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:7450\"\nkey = \"/nonexistent\"\n[[client]]\nname = \"oslo\"\nkey = \"K\"\nprefixes = [\"backup/oslo\"]\n[drill]\nscratch = \"backup/drill\"\nmount_dir = \"{}\"\nstate_dir = \"{}\"\ntimeout = \"20s\"\n[[drill.target]]\ndataset = \"backup/oslo/db\"\ncheck = {check}\n",
            dir.join("mounts").display(),
            dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

fn run(dir: &Path, args: &[&str]) -> Output {
    let path = format!("{}:/usr/bin:/bin", fake_zfs(dir).display());
    Command::new(env!("CARGO_BIN_EXE_fjord-recv"))
        .args(args)
        .env("PATH", path)
        .output()
        .expect("fjord-recv runs")
}

fn zfs_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("zfs.log")).unwrap_or_default()
}

fn json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn dry_run_prints_the_plan_as_json_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "[\"/bin/true\"]");
    let out = run(
        dir.path(),
        &[
            "drill",
            "--config",
            cfg.to_str().unwrap(),
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json(&out);
    assert_eq!(j["dataset"], "backup/oslo/db");
    assert_eq!(
        (j["dry_run"].as_bool(), j["result"].as_str()),
        (Some(true), Some("planned"))
    );
    let plan = &j["plan"];
    assert_eq!(plan["snapshot"], "fjord_b");
    assert_eq!(plan["log_position"]["value"], "0/16B3F40");
    assert_eq!(plan["leftovers"][0], LEFTOVER);
    let actions: Vec<&str> = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["destroy_leftover", "clone", "mount", "check", "destroy"]
    );
    assert_eq!(plan["actions"][1]["properties"]["readonly"], "on");
    let clone = plan["clone"].as_str().unwrap();
    assert!(
        clone.starts_with("backup/drill/fjord-drill-backup_oslo_db-"),
        "{clone}"
    );
    assert!(j["steps"].as_array().unwrap().is_empty());
    let log = zfs_log(dir.path());
    for verb in ["clone ", "mount ", "destroy "] {
        assert!(
            !log.lines().any(|l| l.starts_with(verb)),
            "dry run ran zfs {verb}: {log}"
        );
    }
    assert!(!dir
        .path()
        .join("state/drill")
        .join("backup@oslo@db.json")
        .exists());
}

#[test]
fn a_drill_runs_the_check_on_the_clone_and_always_destroys_it() {
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("env");
    let check = format!(
        "[\"/bin/sh\", \"-c\", \"echo $FJORD_DRILL_DATASET $FJORD_DRILL_SNAPSHOT $FJORD_DRILL_CLONE >{}; cat $FJORD_DRILL_MOUNTPOINT/file\"]",
        env_file.display()
    );
    let cfg = config(dir.path(), &check);
    let cfg = cfg.to_str().unwrap();
    let out = run(dir.path(), &["drill", "--config", cfg, "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = json(&out);
    assert_eq!(j["result"], "ok");
    assert_eq!(j["output_tail"], "restored\n");
    let clone = j["plan"]["clone"].as_str().unwrap().to_string();
    let seen = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(seen.trim(), format!("backup/oslo/db fjord_b {clone}"));
    let log = zfs_log(dir.path());
    let order: Vec<&str> = log
        .lines()
        .filter(|l| {
            ["clone", "mount", "destroy"]
                .iter()
                .any(|v| l.starts_with(v))
        })
        .collect();
    assert_eq!(order[0], format!("destroy -r {LEFTOVER}"));
    assert!(
        order[1].starts_with("clone -o canmount=noauto -o devices=off"),
        "{order:?}"
    );
    assert!(
        order[1].ends_with(&format!("backup/oslo/db@fjord_b {clone}")),
        "{order:?}"
    );
    assert_eq!(
        &order[2..],
        [format!("mount {clone}"), format!("destroy -r {clone}")]
    );
    assert!(!log.contains("destroy -r backup/drill/keep"));

    // A failing check: recorded failed, the clone destroyed all the same,
    // the last success kept.
    let fail = run(
        dir.path(),
        &[
            "drill",
            "--config",
            cfg,
            "backup/oslo/db",
            "--check",
            "echo broken >&2; exit 3",
            "--json",
        ],
    );
    assert_eq!(fail.status.code(), Some(4));
    let j = json(&fail);
    assert_eq!(j["result"], "failed");
    assert!(j["error"].as_str().unwrap().contains("exited 3"), "{j}");
    assert_eq!(j["output_tail"], "broken\n");
    let clone = j["plan"]["clone"].as_str().unwrap();
    assert!(zfs_log(dir.path())
        .lines()
        .any(|l| l == format!("destroy -r {clone}")));
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("state/drill/backup@oslo@db.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["result"], "failed");
    assert!(record["last_success_at"].as_i64().is_some(), "{record}");
    assert_eq!(record["clone_destroyed"], true);

    // status: the copy with its last drill; --check warns about it
    let status = run(dir.path(), &["status", "--config", cfg, "--json"]);
    assert_eq!(
        status.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let copies = json(&status);
    let db = copies
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["dataset"] == "backup/oslo/db")
        .expect("the copy");
    assert_eq!(db["drill"]["last"]["result"], "failed");
    assert_eq!(db["drill"]["health"], "warning");
    let check = run(
        dir.path(),
        &[
            "status",
            "--config",
            cfg,
            "--check",
            "--warn-age",
            "100000d",
            "--crit-age",
            "100000d",
            "--metrics-file",
            dir.path().join("m.prom").to_str().unwrap(),
        ],
    );
    let line = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{line}");
    assert!(
        line.starts_with("FJORD-DR WARNING")
            && line.contains("drills: backup/oslo/db: the last drill failed"),
        "{line}"
    );
    let metrics = std::fs::read_to_string(dir.path().join("m.prom")).unwrap();
    assert!(
        metrics.contains(
            "fjord_recv_drill_last_result{dataset=\"backup/oslo/db\",result=\"failed\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics
        .contains("fjord_recv_drill_last_success_timestamp_seconds{dataset=\"backup/oslo/db\"} "));
}

#[test]
fn a_check_past_its_time_limit_is_killed_and_the_clone_destroyed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "[\"/bin/sleep\", \"30\"]");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("timeout = \"20s\"", "timeout = \"1s\"");
    std::fs::write(&cfg, text).unwrap();
    let t0 = std::time::Instant::now();
    let out = run(
        dir.path(),
        &["drill", "--config", cfg.to_str().unwrap(), "--json"],
    );
    assert!(t0.elapsed().as_secs() < 20, "waited for the check");
    assert_eq!(out.status.code(), Some(4));
    let j = json(&out);
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("did not finish within 1s"),
        "{j}"
    );
    let clone = j["plan"]["clone"].as_str().unwrap();
    assert!(zfs_log(dir.path())
        .lines()
        .any(|l| l == format!("destroy -r {clone}")));
}

#[test]
fn another_running_drill_is_exit_6_and_no_drill_table_is_exit_5() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "[\"/bin/true\"]");
    std::fs::create_dir_all(dir.path().join("state/drill")).unwrap();
    let lock = std::fs::File::create(dir.path().join("state/drill/drill.lock")).unwrap();
    lock.lock().unwrap();
    let out = run(dir.path(), &["drill", "--config", cfg.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(lock);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let cut = text.split("[drill]").next().unwrap().to_string();
    std::fs::write(&cfg, cut).unwrap();
    let out = run(dir.path(), &["drill", "--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [drill] table"));
}

/// The first PostgreSQL installation's `bin` directory (Debian's layout).
fn postgresql_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// The built-in PostgreSQL check against a real server (the host's): it
/// starts on the "clone" as the data directory's owner, answers the
/// query, and is stopped; a failing query fails the drill and the server
/// is stopped all the same. Needs root (to start it as that user) and a
/// PostgreSQL installation; skipped without them.
#[test]
fn the_postgresql_check_starts_queries_and_stops_a_real_server() {
    let root = euid() == 0;
    let (Some(bin), true) = (postgresql_bin(), root) else {
        eprintln!("SKIP: needs root and PostgreSQL in /usr/lib/postgresql/*/bin");
        return;
    };
    let postgres_user = Command::new("id").args(["-u", "postgres"]).output().ok();
    let Some(uid) = postgres_user.filter(|o| o.status.success()).and_then(|o| {
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .parse::<u32>()
            .ok()
    }) else {
        eprintln!("SKIP: no postgres user");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let pg = dir.path().join("mnt/pg");
    std::fs::create_dir_all(&pg).unwrap();
    std::os::unix::fs::chown(&pg, Some(uid), None).unwrap();
    let data = pg.join("data");
    let initdb = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("initdb"))
        .args(["-A", "trust", "-D"])
        .arg(&data)
        .output()
        .expect("initdb runs");
    assert!(
        initdb.status.success(),
        "{}",
        String::from_utf8_lossy(&initdb.stderr)
    );
    let check = format!(
        "\"postgresql\"\ndata_dir = \"pg/data\"\nport = 55471\nquery = \"SELECT 6 * 7\"\npg_bin = \"{}\"",
        bin.display()
    );
    let cfg = config(dir.path(), &check);
    let cfg = cfg.to_str().unwrap();
    let out = run(dir.path(), &["drill", "--config", cfg, "--json"]);
    let j = json(&out);
    assert_eq!(out.status.code(), Some(0), "{j}");
    assert!(j["output_tail"].as_str().unwrap().ends_with("42\n"), "{j}");
    assert_eq!(
        j["plan"]["actions"][1]["properties"]["readonly"], "off",
        "the server writes"
    );
    assert!(
        !data.join("postmaster.pid").exists(),
        "the server was stopped"
    );

    let text = std::fs::read_to_string(cfg)
        .unwrap()
        .replace("SELECT 6 * 7", "SELECT * FROM no_such_table");
    std::fs::write(cfg, text).unwrap();
    let out = run(dir.path(), &["drill", "--config", cfg, "--json"]);
    let j = json(&out);
    assert_eq!(out.status.code(), Some(4), "{j}");
    assert!(
        j["error"].as_str().unwrap().contains("the query failed"),
        "{j}"
    );
    assert!(
        j["output_tail"].as_str().unwrap().contains("no_such_table"),
        "{j}"
    );
    assert!(
        !data.join("postmaster.pid").exists(),
        "the server was stopped after the failure"
    );
    let clone = j["plan"]["clone"].as_str().unwrap();
    assert!(zfs_log(dir.path())
        .lines()
        .any(|l| l == format!("destroy -r {clone}")));
}

/// This process's effective uid (`id -u`).
fn euid() -> u32 {
    let out = Command::new("id").arg("-u").output().expect("id runs");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(u32::MAX)
}
