//! What a push did, per dataset and per job: the values `fjord-send push`
//! prints (as text, or one JSON object per line with `--json`) and records
//! in the status file.
//!
//! The JSON is a stable interface (documented in the README): fields are
//! only ever added.

use serde::Serialize;

/// How one dataset ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetResult {
    /// Something was sent; the target now has the newest snapshot.
    Ok,
    /// The target already had the newest snapshot.
    UpToDate,
    /// `--dry-run`: `steps` is what would be done.
    Planned,
    /// The target diverged (needs an operator: `--force`).
    Diverged,
    /// Failed; `error` says why.
    Failed,
    /// Refused: the target was promoted on the DR node (failover); `error`
    /// is the DR node's message (when, and how to fail back).
    Promoted,
    /// Not tried: its parent dataset failed.
    Skipped,
}

/// What a step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A full stream into a new target.
    Full,
    /// An incremental stream (`-i` or `-I`).
    Incremental,
    /// The rest of an interrupted stream (`zfs send -t`).
    Resume,
    /// A stale resume token discarded on the target (`zfs recv -A`).
    DiscardStaleToken,
    /// `--dry-run` of `--force` with nothing new to send: only a rollback.
    RollbackOnly,
}

/// One step of a dataset's push, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// What it does.
    pub action: Action,
    /// The base snapshot (short name), for incrementals.
    pub from: Option<String>,
    /// The snapshot it brings the target to (short name).
    pub to: Option<String>,
    /// `zfs send -I`.
    pub intermediates: bool,
    /// The target is rolled back first (`--force`).
    pub rollback: bool,
    /// Stream bytes delivered.
    pub bytes: u64,
    /// Bytes sent again after reconnections.
    pub bytes_resent: u64,
    /// Reconnections.
    pub reconnects: u64,
    /// Carried out (false: planned only, or failed).
    pub done: bool,
}

impl Step {
    pub(crate) fn new(action: Action) -> Step {
        Step {
            action,
            from: None,
            to: None,
            intermediates: false,
            rollback: false,
            bytes: 0,
            bytes_resent: 0,
            reconnects: 0,
            done: false,
        }
    }

    /// One line for the operator.
    pub fn describe(&self) -> String {
        let to = self.to.as_deref().unwrap_or("?");
        match self.action {
            Action::Full => format!("full @{to}"),
            Action::Incremental => format!(
                "incremental ({}) @{} -> @{to}{}",
                if self.intermediates { "-I" } else { "-i" },
                self.from.as_deref().unwrap_or("?"),
                if self.rollback {
                    ", rolling the target back first (--force)"
                } else {
                    ""
                }
            ),
            Action::Resume => format!("resuming the interrupted receive of @{to}"),
            Action::DiscardStaleToken => "discarding a stale resume token".into(),
            Action::RollbackOnly => format!("rolling the target back to @{to} (--force)"),
        }
    }
}

/// What happened to one dataset.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DatasetReport {
    /// The job.
    pub job: String,
    /// The source dataset.
    pub source: String,
    /// The target dataset on the DR node (empty for a snapshot-only job).
    pub target: String,
    /// Which of the job's DR nodes: its `[[job.target]]` name, `default`
    /// for the one-target shorthand, `null` for a snapshot-only job.
    pub target_name: Option<String>,
    /// How it ended.
    pub result: DatasetResult,
    /// What was done (or, with `--dry-run`, would be), in order.
    pub steps: Vec<Step>,
    /// The newest snapshot both sides have now (short name).
    pub replicated: Option<String>,
    /// Its creation time (Unix seconds): the replication lag's reference.
    #[serde(skip)]
    pub replicated_creation: Option<i64>,
    /// Stream bytes delivered, all steps.
    pub bytes: u64,
    /// Bytes sent again after reconnections.
    pub bytes_resent: u64,
    /// Reconnections.
    pub reconnects: u64,
    /// Wall time.
    pub duration_secs: f64,
    /// Snapshots destroyed on the source by retention (short names).
    pub pruned_source: Vec<String>,
    /// Snapshots the DR node destroyed at our request (short names).
    pub pruned_target: Vec<String>,
    /// What went wrong without failing the dataset (a hold, a prune).
    pub warnings: Vec<String>,
    /// Why it failed or was skipped.
    pub error: Option<String>,
    /// The ransomware tripwire's shares and verdict for this push
    /// (`null` when nothing was measured: a full or resumed send, a dry run).
    pub tripwire: Option<crate::tripwire::TripwireReport>,
    /// What the tripwire's meter measured on this push's incrementals.
    #[serde(skip)]
    pub figures: Option<crate::tripwire::StreamFigures>,
}

impl DatasetReport {
    pub(crate) fn new(job: &str, source: &str, target: &str) -> DatasetReport {
        DatasetReport {
            job: job.into(),
            source: source.into(),
            target: target.into(),
            target_name: None,
            result: DatasetResult::Failed,
            steps: Vec::new(),
            replicated: None,
            replicated_creation: None,
            bytes: 0,
            bytes_resent: 0,
            reconnects: 0,
            duration_secs: 0.0,
            pruned_source: Vec::new(),
            pruned_target: Vec::new(),
            warnings: Vec::new(),
            error: None,
            tripwire: None,
            figures: None,
        }
    }

    /// Lines for the operator (`--verbose`, or a terminal).
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        // Several DR nodes may hold the same dataset name: say which.
        let target = match self.target_name.as_deref() {
            Some(name) if name != "default" => format!("{name}:{}", self.target),
            _ => self.target.clone(),
        };
        let prefix = |s: &Step| if s.done { "" } else { "would: " };
        for s in &self.steps {
            let cost = if s.done && s.action != Action::DiscardStaleToken {
                format!(
                    ": {} bytes, re-sent {} bytes over {} reconnects",
                    s.bytes, s.bytes_resent, s.reconnects
                )
            } else {
                String::new()
            };
            out.push(format!(
                "{}{} -> {}: {}{cost}",
                prefix(s),
                self.source,
                target,
                s.describe()
            ));
        }
        match self.result {
            DatasetResult::UpToDate => out.push(format!(
                "{}: up to date at @{}",
                self.source,
                self.replicated.as_deref().unwrap_or("?")
            )),
            DatasetResult::Skipped
            | DatasetResult::Failed
            | DatasetResult::Diverged
            | DatasetResult::Promoted => {
                if let Some(e) = &self.error {
                    out.push(format!("{}: {e}", self.source));
                }
            }
            DatasetResult::Ok | DatasetResult::Planned => {}
        }
        if !self.pruned_source.is_empty() {
            out.push(format!(
                "pruned {}@{{{}}}",
                self.source,
                self.pruned_source.join(",")
            ));
        }
        if !self.pruned_target.is_empty() {
            out.push(format!(
                "pruned {}@{{{}}}",
                target,
                self.pruned_target.join(",")
            ));
        }
        out.extend(self.warnings.iter().map(|w| format!("warning: {w}")));
        out
    }
}

/// How a job ended, worst last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobResult {
    /// Every dataset is up to date on the DR node.
    Ok,
    /// `--dry-run`: nothing was done.
    DryRun,
    /// Another run holds the job's lock; this run did nothing.
    Locked,
    /// A target diverged (needs `--force`); others may have succeeded.
    Diverged,
    /// At least one dataset failed, or the job could not start.
    Failed,
    /// A target was promoted on the DR node: this primary is fenced off
    /// until the operator fails back.
    Promoted,
}

/// What happened to one job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobReport {
    /// The job.
    pub job: String,
    /// How it ended.
    pub result: JobResult,
    /// The snapshot this run took (short name).
    pub snapshot: Option<String>,
    /// Datasets in the job.
    pub datasets: usize,
    /// Datasets that failed, diverged or were skipped.
    pub failed: usize,
    /// Stream bytes delivered, all datasets.
    pub bytes: u64,
    /// Bytes sent again after reconnections.
    pub bytes_resent: u64,
    /// Reconnections.
    pub reconnects: u64,
    /// Wall time.
    pub duration_secs: f64,
    /// Why the job failed, in one line (each dataset's error is in its own
    /// report).
    pub error: Option<String>,
    /// Copies on the DR node whose source child was destroyed on the
    /// primary: destroyed there or kept, by the DR node's policy.
    pub removed: Vec<crate::removed::RemovedCopy>,
    /// Copies renamed on the DR node after their source child was renamed
    /// on the primary (followed by guid).
    pub renamed: Vec<crate::renamed::RenamedCopy>,
    /// What went wrong or needs a look without failing the job (a removed
    /// child's copy kept or destroyed on the DR node).
    pub warnings: Vec<String>,
    /// Each target's outcome, in config order (empty for a snapshot-only
    /// job): which DR node failed.
    pub targets: Vec<TargetReport>,
    /// The job has no target: it snapshots and prunes its source only.
    pub snapshot_only: bool,
    /// Each dataset's report, parents first, target after target.
    #[serde(skip)]
    pub dataset_reports: Vec<DatasetReport>,
}

/// How one target of a job ended.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TargetReport {
    /// The target's name (`default` for the one-target shorthand).
    pub name: String,
    /// How it ended.
    pub result: JobResult,
    /// Datasets that failed, diverged or were skipped on this target.
    pub failed: usize,
    /// Stream bytes delivered to this target.
    pub bytes: u64,
    /// The newest snapshot of the job's source dataset this target has.
    pub replicated: Option<String>,
    /// Creation time (Unix seconds) of the oldest of its datasets' newest
    /// replicated snapshots: its replication lag's reference.
    #[serde(skip)]
    pub replicated_creation: Option<i64>,
    /// Why it failed, in one line.
    pub error: Option<String>,
}

/// One line of `fjord-send push --json`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JsonLine<'a> {
    /// A dataset's report.
    Dataset(&'a DatasetReport),
    /// A job's report (after its datasets').
    Job(&'a JobReport),
}

impl JobReport {
    /// A report of `job` with `result` and nothing done yet.
    pub fn new(job: &str, result: JobResult) -> JobReport {
        JobReport {
            job: job.into(),
            result,
            snapshot: None,
            datasets: 0,
            failed: 0,
            bytes: 0,
            bytes_resent: 0,
            reconnects: 0,
            duration_secs: 0.0,
            error: None,
            removed: Vec::new(),
            renamed: Vec::new(),
            warnings: Vec::new(),
            targets: Vec::new(),
            snapshot_only: false,
            dataset_reports: Vec::new(),
        }
    }

    /// The report as JSON Lines: each dataset, then the job.
    pub fn json_lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .dataset_reports
            .iter()
            .map(|d| json(&JsonLine::Dataset(d)))
            .collect();
        out.push(json(&JsonLine::Job(self)));
        out
    }
}

fn json(line: &JsonLine<'_>) -> String {
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_string(line)
        .unwrap_or_else(|e| format!("{{\"type\":\"error\",\"error\":\"{e}\"}}"))
}
