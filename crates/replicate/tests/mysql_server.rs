//! The MySQL/MariaDB hook against a real MariaDB server, which the test
//! starts itself in a temporary directory (`mariadb-install-db`,
//! `mariadbd` on a Unix socket, binary log on). The primary's pool is the
//! in-memory fake, wrapped so that its `snapshot` probes the server from a
//! second connection while the hook's lock should be held: an INSERT must
//! time out on the global read lock during the snapshot, and go through
//! once the job is over, whether the snapshot was taken or failed.
//!
//! Needs `mariadbd`, `mariadb-install-db` and `mysql` on PATH (or in
//! /usr/sbin): `scripts/test` installs them.

mod support;

use fjord_config::hooks::{Database, HooksConfig};
use fjord_replicate::edge::CommandHooks;
use fjord_replicate::fake::PoolFault;
use fjord_replicate::RunOptions;
use fjord_replicate::{run_job, JobContext, JobResult, Pool, PoolError, SendStream};
use fjord_zfs::SendSpec;
use fjord_zfs::SnapshotInfo;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::World;

/// A MariaDB server of the test's own; killed when dropped.
struct Server {
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn program(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let user = user();
        let install = Command::new(program("mariadb-install-db"))
            .args([
                "--no-defaults",
                &format!("--datadir={}", data.display()),
                &format!("--user={user}"),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("mariadb-install-db runs (install mariadb-server: scripts/test does)");
        assert!(
            install.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&install.stderr)
        );
        let child = Command::new(program("mariadbd"))
            .args([
                "--no-defaults",
                &format!("--datadir={}", data.display()),
                &format!("--socket={}", dir.path().join("sock").display()),
                &format!("--pid-file={}", dir.path().join("pid").display()),
                &format!("--log-error={}", dir.path().join("err.log").display()),
                &format!("--log-bin={}", data.join("binlog").display()),
                "--server-id=1",
                "--skip-networking",
                &format!("--user={user}"),
            ])
            .stdin(Stdio::null())
            .spawn()
            .expect("mariadbd starts");
        let server = Server { child, dir };
        std::fs::write(
            server.cnf(),
            format!(
                "[client]\nsocket={}\nuser=root\n",
                server.dir.path().join("sock").display()
            ),
        )
        .expect("client option file");
        let deadline = Instant::now() + Duration::from_secs(120);
        while server.sql("SELECT 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "mariadbd did not answer within 120 s: {}",
                std::fs::read_to_string(server.dir.path().join("err.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
            .sql("CREATE DATABASE fj; CREATE TABLE fj.t (id INT PRIMARY KEY) ENGINE=InnoDB")
            .expect("schema");
        server
    }

    fn cnf(&self) -> PathBuf {
        self.dir.path().join("client.cnf")
    }

    /// One statement (or several) on a connection of its own.
    fn sql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mysql")
            .arg(format!("--defaults-extra-file={}", self.cnf().display()))
            .args(["--batch", "--skip-column-names", "-e", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// An INSERT that gives up after 1 s of waiting for a lock.
    fn try_insert(&self, id: u32) -> Result<String, String> {
        self.sql(&format!(
            "SET SESSION lock_wait_timeout = 1; INSERT INTO fj.t VALUES ({id})"
        ))
    }
}

/// The fake pool, whose `snapshot` first tries a write on the server and
/// records what happened.
struct ProbingPool {
    inner: Arc<fjord_replicate::fake::FakePool>,
    server: Arc<Server>,
    during: Mutex<Vec<Result<String, String>>>,
}

impl Pool for ProbingPool {
    async fn datasets(&self, root: &str, recursive: bool) -> Result<Vec<String>, PoolError> {
        self.inner.datasets(root, recursive).await
    }
    async fn snapshots(&self, dataset: &str) -> Result<Vec<SnapshotInfo>, PoolError> {
        self.inner.snapshots(dataset).await
    }
    async fn property(&self, dataset: &str, prop: &str) -> Result<Option<String>, PoolError> {
        self.inner.property(dataset, prop).await
    }
    async fn snapshot(
        &self,
        root: &str,
        short: &str,
        recursive: bool,
        props: &[(String, String)],
    ) -> Result<(), PoolError> {
        let server = self.server.clone();
        let probe = tokio::task::spawn_blocking(move || server.try_insert(100))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        self.during
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(probe);
        self.inner.snapshot(root, short, recursive, props).await
    }
    async fn demote(
        &self,
        root: &str,
        recursive: bool,
        base: &str,
        marker: &str,
    ) -> Result<(), PoolError> {
        self.inner.demote(root, recursive, base, marker).await
    }
    async fn holds(&self, snapshot: &str) -> Result<Vec<String>, PoolError> {
        self.inner.holds(snapshot).await
    }
    async fn hold(&self, tag: &str, snapshot: &str) -> Result<(), PoolError> {
        self.inner.hold(tag, snapshot).await
    }
    async fn release(&self, tag: &str, snapshot: &str) -> Result<(), PoolError> {
        self.inner.release(tag, snapshot).await
    }
    async fn destroy_snapshot(&self, snapshot: &str) -> Result<(), PoolError> {
        self.inner.destroy_snapshot(snapshot).await
    }
    async fn size_estimate(&self, spec: &SendSpec) -> Option<u64> {
        self.inner.size_estimate(spec).await
    }
    fn send(&self, spec: &SendSpec) -> Result<SendStream, PoolError> {
        self.inner.send(spec)
    }
}

async fn push(w: &World, pool: Arc<ProbingPool>, hooks: Arc<CommandHooks>) -> JobResult {
    let ctx = Arc::new(JobContext {
        pool,
        targets: fjord_replicate::target_nodes(&w.job, [w.dr.clone()]),
        job: w.job.clone(),
        options: RunOptions {
            force: false,
            dry_run: false,
            now_unix: w.clock + 3600,
        },
        hooks,
    });
    run_job(ctx, &w.state()).await.report.result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_lock_is_held_across_the_snapshot_and_released_when_it_fails_or_succeeds() {
    let server = Arc::new(
        tokio::task::spawn_blocking(Server::start)
            .await
            .expect("start"),
    );
    let w = World::new("");
    let hooks = Arc::new(CommandHooks::new(&HooksConfig {
        database: Some(Database::Mysql),
        connection: Some(server.cnf().display().to_string()),
        timeout: Some(Duration::from_secs(60)),
        ..HooksConfig::default()
    }));
    let pool = Arc::new(ProbingPool {
        inner: w.pool.clone(),
        server: server.clone(),
        during: Mutex::new(Vec::new()),
    });

    // the snapshot fails: the lock was held during it, and is gone after
    w.pool.inject(PoolFault::Snapshot);
    assert_eq!(
        push(&w, pool.clone(), hooks.clone()).await,
        JobResult::Failed
    );
    let during = pool.during.lock().unwrap().pop().expect("probed");
    let why = during.expect_err("an INSERT went through while the read lock should be held");
    assert!(why.contains("Lock wait timeout"), "{why}");
    assert_eq!(
        server.try_insert(1),
        Ok(String::new()),
        "the lock outlived a failed snapshot"
    );

    // the snapshot is taken: held during it, released after, binlog position recorded
    assert_eq!(push(&w, pool.clone(), hooks.clone()).await, JobResult::Ok);
    let during = pool.during.lock().unwrap().pop().expect("probed");
    assert!(
        during.is_err(),
        "an INSERT went through during the snapshot"
    );
    assert_eq!(
        server.try_insert(2),
        Ok(String::new()),
        "the lock outlived the job"
    );
    let snap = w.pool.snapshots_of("tank/home").pop().expect("a snapshot");
    let pos = w
        .pool
        .props_of(&snap.full_name("tank/home"))
        .into_iter()
        .find(|(k, _)| k == "fjord:binlog_pos")
        .map(|(_, v)| v)
        .unwrap_or_default();
    assert!(
        pos.starts_with("binlog.") && pos.contains(':'),
        "fjord:binlog_pos = {pos:?}"
    );
    assert_eq!(
        server
            .sql("SELECT COUNT(*) FROM fj.t")
            .map(|s| s.trim().to_string()),
        Ok("2".into())
    );
}
