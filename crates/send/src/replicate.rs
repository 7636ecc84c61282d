//! One dataset of a push job: ask the receiver what the target has, plan
//! (full, incremental, resume, or nothing), send `zfs send` through the
//! transport, protect the new base with a hold, then prune on both sides.
//! The decisions are `fjord_replicate::plan` and `fjord_config::retention` (pure);
//! this module only carries them out.

use crate::progress::Progress;
use crate::zfs_source::CheckedSend;
use anyhow::{anyhow, bail, Context};
use fjord_pack::{NoCache, PackOptions, ReceiverHoldings};
use fjord_replicate::plan::{plan, Plan, TargetState as PlanTarget};
use fjord_config::retention::{plan_pruning, Retention};
use fjord_transport::client::{chunk_inventory, request, Counters, RequestOptions, SendOptions};
use fjord_transport::message::offer_flags;
use fjord_transport::packed::PackReader;
use fjord_transport::{
    Identity, LinkConfig, Offer, PublicKey, Request, Response, SessionId, Snapshot, TargetState,
};
use fjord_zfs::{SendKind, SendSpec, SnapshotInfo, Zfs};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Everything a dataset's replication needs, shared by the job's tasks.
pub struct JobContext {
    /// The job's name (hold tag, logs).
    pub job: String,
    /// The `zfs` executor.
    pub zfs: Zfs,
    /// This sender's key.
    pub identity: Identity,
    /// The receiver.
    pub to: SocketAddr,
    /// The receiver's key.
    pub server_key: PublicKey,
    /// Link tuning (rate limit included).
    pub link: LinkConfig,
    /// Grace for link outages.
    pub grace: Duration,
    /// `zfs send` flags (the kind is set per transfer).
    pub send_flags: SendSpec,
    /// `-I` rather than `-i`.
    pub intermediates: bool,
    /// Pack the stream on the wire (dedup + zstd).
    pub pack: bool,
    /// Snapshot name prefix (retention only touches these).
    pub prefix: String,
    /// Retention on the source (none: never prune).
    pub keep_source: Option<Retention>,
    /// Retention on the target (none: never prune).
    pub keep_target: Option<Retention>,
    /// `--force`: roll a diverged target back.
    pub force: bool,
    /// `--dry-run`: plan only.
    pub dry_run: bool,
    /// The terminal progress display.
    pub progress: Progress,
}

/// What happened to one dataset.
#[derive(Debug, Default)]
pub struct DatasetReport {
    /// Lines for the operator, in order.
    pub lines: Vec<String>,
    /// Bytes sent over the link, all transfers (with packing, after dedup
    /// and compression).
    pub bytes: u64,
    /// Bytes sent again after reconnections.
    pub bytes_resent: u64,
    /// Reconnections.
    pub reconnects: u64,
    /// The newest snapshot both sides now have (creation time).
    pub replicated_creation: Option<i64>,
}

impl JobContext {
    /// The hold tag protecting this job's replication base.
    pub fn hold_tag(&self) -> String {
        format!("fjord-{}", self.job)
    }

    fn request_opts(&self) -> RequestOptions {
        RequestOptions {
            to: self.to,
            server_key: self.server_key,
            link: self.link.clone(),
            patience: self.grace,
        }
    }

    async fn ask(&self, req: Request) -> anyhow::Result<Response> {
        let what = format!("{req:?}");
        let mut responses = request(&self.identity, &self.request_opts(), &[req])
            .await
            .with_context(|| format!("asking the receiver at {}", self.to))?;
        let r = responses
            .pop()
            .ok_or_else(|| anyhow!("the receiver sent no answer to {what}"))?;
        if let Response::Failed { message, .. } = &r {
            bail!("the receiver refused: {message}");
        }
        Ok(r)
    }

    async fn target_state(&self, target: &str) -> anyhow::Result<TargetState> {
        match self
            .ask(Request::TargetState {
                dataset: target.to_string(),
            })
            .await?
        {
            Response::TargetState(t) => Ok(t),
            other => bail!("the receiver answered {other:?} to a target-state request"),
        }
    }
}

fn plan_target(t: &TargetState) -> PlanTarget {
    PlanTarget {
        exists: t.exists,
        snapshots: t
            .snapshots
            .iter()
            .map(|s| SnapshotInfo {
                name: s.name.clone(),
                guid: s.guid,
                createtxg: s.createtxg,
                creation: s.creation,
            })
            .collect(),
        resume_token: t.resume_token.clone(),
        written: t.written,
    }
}

/// Replicates `source` to `target` until the target is up to date, then
/// prunes. Returns what happened, or the first error (with context).
pub async fn replicate(
    ctx: Arc<JobContext>,
    source: String,
    target: String,
) -> anyhow::Result<DatasetReport> {
    let mut report = DatasetReport::default();
    // Each pass sends one stream; a resumed stream may be followed by the
    // snapshots taken since. Three passes cover resume + catch-up.
    for _pass in 0..3 {
        let src = ctx
            .zfs
            .snapshots(&source)
            .await
            .with_context(|| format!("listing the snapshots of {source}"))?;
        let tgt = ctx.target_state(&target).await?;
        let planned = plan(&src, &plan_target(&tgt), ctx.intermediates, ctx.force)
            .map_err(|e| anyhow::Error::new(e).context(format!("{source} -> {target}")))?;
        if let Some(stale) = &planned.abort_stale_token {
            let line = format!("{target}: stale resume token ({stale}); discarding it");
            if ctx.dry_run {
                report.lines.push(format!("would: {line}"));
            } else {
                report.lines.push(line);
                ctx.ask(Request::AbortResume {
                    dataset: target.clone(),
                })
                .await?;
                // The partial state is gone; plan again from the common snapshot.
                continue;
            }
        }
        let (kind, from, to, flags, what) = match &planned.plan {
            Plan::UpToDate { common } => {
                report.replicated_creation = Some(common.creation);
                report
                    .lines
                    .push(format!("{source}: up to date at @{}", common.name));
                break;
            }
            Plan::RollbackOnly { to } => {
                // Every push takes a snapshot first, so only a dry run can
                // find nothing newer than the common snapshot.
                let line = format!(
                    "{target} diverged after @{}; --force would roll it back",
                    to.name
                );
                if ctx.dry_run {
                    report.lines.push(format!("would: {line}"));
                    break;
                }
                bail!("{line}, but there is nothing new to send: run the push again");
            }
            Plan::Full { to } => (
                SendKind::Full {
                    snap: to.full_name(&source),
                },
                None,
                to.clone(),
                0,
                format!("full {source}@{} -> {target}", to.name),
            ),
            Plan::Incremental {
                from,
                to,
                intermediates,
                rollback,
            } => (
                SendKind::Incremental {
                    from: from.full_name(&source),
                    to: to.full_name(&source),
                    intermediates: *intermediates,
                },
                Some(from.clone()),
                to.clone(),
                if *rollback {
                    offer_flags::FORCE_ROLLBACK
                } else {
                    0
                },
                format!(
                    "incremental ({}) {source}@{} -> @{} -> {target}{}",
                    if *intermediates { "-I" } else { "-i" },
                    from.name,
                    to.name,
                    if *rollback {
                        ", rolling the target back first (--force)"
                    } else {
                        ""
                    }
                ),
            ),
            Plan::Resume { token, to_guid } => {
                let to = src
                    .iter()
                    .find(|s| s.guid == *to_guid)
                    .cloned()
                    .ok_or_else(|| anyhow!("the resume token's snapshot vanished"))?;
                (
                    SendKind::Resume {
                        token: token.clone(),
                    },
                    None,
                    to.clone(),
                    offer_flags::RESUME_TOKEN,
                    format!(
                        "resuming {source}@{} -> {target} from its receive_resume_token",
                        to.name
                    ),
                )
            }
        };
        if ctx.dry_run {
            report.lines.push(format!("would send: {what}"));
            break;
        }
        let spec = match &kind {
            // `zfs send -t` takes its flags from the token.
            SendKind::Resume { .. } => SendSpec {
                kind,
                raw: false,
                compressed: false,
                large_blocks: false,
                embedded: false,
            },
            _ => SendSpec {
                kind,
                ..ctx.send_flags.clone()
            },
        };
        let sent = send_one(
            &ctx,
            &source,
            &target,
            spec,
            from.as_ref(),
            &to,
            flags,
            &what,
        )
        .await?;
        report.bytes += sent.0;
        report.bytes_resent += sent.1;
        report.reconnects += sent.2;
        report.lines.push(format!(
            "{what}: {} bytes, re-sent {} bytes over {} reconnects",
            sent.0, sent.1, sent.2
        ));
        protect_base(&ctx, &source, from.as_ref(), &to).await;
        report.replicated_creation = Some(to.creation);
    }
    if !ctx.dry_run {
        prune(&ctx, &source, &target, &mut report).await;
    }
    Ok(report)
}

/// Sends one stream; returns (bytes, bytes re-sent, reconnects).
#[allow(clippy::too_many_arguments)]
async fn send_one(
    ctx: &JobContext,
    source: &str,
    target: &str,
    spec: SendSpec,
    from: Option<&SnapshotInfo>,
    to: &SnapshotInfo,
    mut flags: u64,
    what: &str,
) -> anyhow::Result<(u64, u64, u64)> {
    if ctx.pack {
        flags |= offer_flags::PACKED;
    }
    let estimate = ctx.zfs.send_size_estimate(&spec).await.unwrap_or(None);
    let offer = Offer {
        session: SessionId::random(),
        resuming: false,
        dataset: target.to_string(),
        from: from.map(|f| Snapshot {
            name: f.full_name(source),
            guid: f.guid,
        }),
        to: Snapshot {
            name: to.full_name(source),
            guid: to.guid,
        },
        flags,
        size_estimate: estimate,
    };
    // Asked before zfs send starts: the pack consults it from the first frame.
    let holdings: Box<dyn ReceiverHoldings + Send> = if ctx.pack {
        Box::new(
            chunk_inventory(&ctx.identity, &ctx.request_opts(), offer.session)
                .await
                .with_context(|| {
                    format!("asking the receiver at {} for its chunk inventory", ctx.to)
                })?,
        )
    } else {
        Box::new(NoCache)
    };
    let process = ctx
        .zfs
        .spawn_send(&spec)
        .with_context(|| format!("starting zfs send for {what}"))?;
    let mut opts = SendOptions::new(ctx.to, ctx.server_key, offer);
    opts.link = ctx.link.clone();
    opts.grace = ctx.grace;
    let counters = Arc::new(Counters::default());
    let _shown = ctx
        .progress
        .add(source.to_string(), counters.clone(), estimate);
    tracing::info!(dataset = source, target, estimate, "{what}");
    let stream: Box<dyn std::io::Read + Send> = if ctx.pack {
        Box::new(
            PackReader::spawn(CheckedSend::new(process), PackOptions::default(), holdings)
                .context("starting the pack threads")?,
        )
    } else {
        Box::new(CheckedSend::new(process))
    };
    let out = fjord_transport::client::send(&ctx.identity, opts, stream, counters)
        .await
        .with_context(|| format!("{what} failed"))?;
    tracing::info!(
        dataset = source,
        bytes = out.length,
        bytes_resent = out.stats.bytes_resent,
        reconnects = out.stats.reconnects,
        receiver = %out.report.message,
        "sent"
    );
    Ok((out.length, out.stats.bytes_resent, out.stats.reconnects))
}

/// Holds the new base so pruning (ours or anyone's `zfs destroy`) cannot
/// remove it, and releases the old base. Failures are logged: the
/// replication itself succeeded.
async fn protect_base(
    ctx: &JobContext,
    source: &str,
    from: Option<&SnapshotInfo>,
    to: &SnapshotInfo,
) {
    let tag = ctx.hold_tag();
    let new = to.full_name(source);
    if let Err(e) = ctx.zfs.hold(&tag, &new).await {
        // Already held (a resumed transfer of a held snapshot) is fine.
        if !e.to_string().contains("tag already exists") {
            tracing::warn!(snapshot = %new, error = %e, "cannot hold the new replication base");
        }
    }
    let Ok(snaps) = ctx.zfs.snapshots(source).await else {
        return;
    };
    for s in snaps.iter().filter(|s| s.guid != to.guid) {
        let full = s.full_name(source);
        // Only snapshots we may have held: the previous base, or older ones
        // left held by an interrupted run.
        if from.is_some_and(|f| f.guid == s.guid) || s.createtxg < to.createtxg {
            match ctx.zfs.holds(&full).await {
                Ok(tags) if tags.contains(&tag) => {
                    if let Err(e) = ctx.zfs.release(&tag, &full).await {
                        tracing::warn!(snapshot = %full, error = %e, "cannot release the old base");
                    }
                }
                _ => {}
            }
        }
    }
}

/// Applies retention on both sides; the newest common snapshot is always
/// protected. Failures are reported, not fatal.
async fn prune(ctx: &JobContext, source: &str, target: &str, report: &mut DatasetReport) {
    let Ok(tgt) = ctx.target_state(target).await else {
        report
            .lines
            .push(format!("{target}: could not list the target for pruning"));
        return;
    };
    let tgt = plan_target(&tgt);
    let Ok(src) = ctx.zfs.snapshots(source).await else {
        return;
    };
    // The base: the newest target snapshot that the source also has.
    let base = tgt
        .snapshots
        .iter()
        .rev()
        .find(|t| src.iter().any(|s| s.guid == t.guid))
        .map(|s| s.guid);
    let protected: Vec<u64> = base.into_iter().collect();
    if protected.is_empty() {
        return; // nothing replicated yet: prune nothing
    }
    let doomed_here = match &ctx.keep_source {
        Some(keep) => plan_pruning(&src, &ctx.prefix, keep, &protected),
        None => Vec::new(),
    };
    for s in doomed_here {
        let full = s.full_name(source);
        match ctx.zfs.destroy_snapshot(&full).await {
            Ok(()) => report.lines.push(format!("pruned {full}")),
            Err(e) => report.lines.push(format!("could not prune {full}: {e}")),
        }
    }
    let doomed: Vec<String> = match &ctx.keep_target {
        Some(keep) => plan_pruning(&tgt.snapshots, &ctx.prefix, keep, &protected)
            .into_iter()
            .map(|s| s.name)
            .collect(),
        None => Vec::new(),
    };
    if !doomed.is_empty() {
        match ctx
            .ask(Request::DestroySnapshots {
                dataset: target.to_string(),
                snapshots: doomed.clone(),
            })
            .await
        {
            Ok(_) => report
                .lines
                .push(format!("pruned {target}@{{{}}}", doomed.join(","))),
            Err(e) => report
                .lines
                .push(format!("could not prune {target}: {e:#}")),
        }
    }
}
