//! A primary and a DR node in memory, and a push job between them.
#![allow(dead_code)]

use fjord_config::{Job, SendConfig};
use fjord_replicate::fake::{FakeDrNode, FakeHooks, FakePool};
use fjord_replicate::{run_job, JobContext, JobOutcome, RunOptions, StateFiles};
use std::path::Path;
use std::sync::Arc;

/// The start of the fakes' clock (2026-02-01T00:00:00Z).
pub const T0: i64 = 1_769_904_000;

/// `tank/home` (and, for tree tests, children) on the primary; `backup` on
/// the DR node; one job `home` to `backup/home`.
pub struct World {
    pub pool: Arc<FakePool>,
    pub dr: Arc<FakeDrNode>,
    pub hooks: Arc<FakeHooks>,
    pub state: tempfile::TempDir,
    pub job: Job,
    pub clock: i64,
}

/// A job from TOML lines added to a minimal one.
pub fn job(extra: &str) -> Job {
    let text = format!(
        "key = \"/etc/fjord/send.key\"\nstate_dir = \"/var/lib/fjord\"\n\n[[job]]\nname = \"home\"\nsource = \"tank/home\"\ntarget_host = \"10.0.0.2:7450\"\ntarget_key = \"AAAA\"\ntarget_dataset = \"backup/home\"\n{extra}\n"
    );
    let mut config = SendConfig::from_toml(Path::new("test.toml"), &text).expect("test config");
    config.jobs.remove(0)
}

impl World {
    pub fn new(extra: &str) -> World {
        let pool = Arc::new(FakePool::new());
        pool.create("tank/home");
        World {
            pool,
            dr: Arc::new(FakeDrNode::new(&["backup"])),
            hooks: Arc::new(FakeHooks::default()),
            state: tempfile::tempdir().expect("tempdir"),
            job: job(extra),
            clock: T0,
        }
    }

    pub fn state(&self) -> StateFiles {
        StateFiles {
            state_dir: self.state.path().to_path_buf(),
            metrics_file: None,
        }
    }

    /// One push an hour later than the last.
    pub async fn push_with(&mut self, force: bool, dry_run: bool, state: StateFiles) -> JobOutcome {
        self.clock += 3600;
        self.pool.set_clock(self.clock);
        let ctx = Arc::new(JobContext {
            pool: self.pool.clone(),
            targets: fjord_replicate::target_nodes(&self.job, [self.dr.clone()]),
            job: self.job.clone(),
            options: RunOptions {
                force,
                dry_run,
                now_unix: self.clock,
            },
            hooks: self.hooks.clone(),
        });
        run_job(ctx, &state).await
    }

    pub async fn push(&mut self) -> JobOutcome {
        let state = self.state();
        self.push_with(false, false, state).await
    }

    pub async fn push_forced(&mut self) -> JobOutcome {
        let state = self.state();
        self.push_with(true, false, state).await
    }

    /// Short names of a source dataset's snapshots.
    pub fn source_names(&self, dataset: &str) -> Vec<String> {
        self.pool
            .snapshots_of(dataset)
            .into_iter()
            .map(|s| s.name)
            .collect()
    }

    /// Short names of a target's snapshots.
    pub fn target_names(&self, target: &str) -> Vec<String> {
        self.dr
            .snapshots_of(target)
            .into_iter()
            .map(|s| s.name)
            .collect()
    }

    /// Source snapshots (short names) holding the job's tag.
    pub fn held(&self, dataset: &str) -> Vec<String> {
        self.pool
            .snapshots_of(dataset)
            .into_iter()
            .filter(|s| {
                self.pool
                    .holds_of(&s.full_name(dataset))
                    .contains(&"fjord-home".to_string())
            })
            .map(|s| s.name)
            .collect()
    }
}
