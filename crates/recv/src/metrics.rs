//! `fjord-recv serve`'s metrics file (`metrics_file` in recv.toml): the
//! server's refusals (each key named by its client in the config in
//! force), the policy's counts and the chunk cache, gathered here and
//! rendered by [`fjord_dr::serve_metrics`]; written atomically on the
//! blocking pool. A write that fails is logged, never fatal.

use crate::zfs_target::ZfsTarget;
use fjord_dr::serve_metrics::{
    by_client, render_prometheus, CacheTotals, PolicyTotals, ServeMetrics,
};
use fjord_transport::server::{Server, ServerEvent};
use std::sync::atomic::Ordering::Relaxed;

/// What the serve loop itself counts.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// When the daemon started, Unix seconds.
    pub(crate) started: i64,
    completed: u64,
    failed: u64,
    /// Reloads put in force.
    pub(crate) reloads_applied: u64,
    /// Reloads rejected.
    pub(crate) reloads_rejected: u64,
}

impl Tally {
    /// Counting from `started` (Unix seconds).
    pub(crate) fn new(started: i64) -> Tally {
        Tally {
            started,
            ..Tally::default()
        }
    }

    /// Counts a session's end.
    pub(crate) fn event(&mut self, event: &ServerEvent) {
        match event {
            ServerEvent::Completed { .. } => self.completed += 1,
            ServerEvent::Failed { .. } => self.failed += 1,
            ServerEvent::Refused { .. } => {}
        }
    }
}

/// The metrics now.
pub(crate) fn gather(server: &Server, target: &ZfsTarget, tally: &Tally, now: i64) -> ServeMetrics {
    let policy = target.policy();
    let refused = by_client(server.refusals().into_iter().map(|r| {
        let client = r
            .key
            .and_then(|k| policy.clients.get(&k).map(|c| c.name.clone()));
        (r.code, client, r.count)
    }));
    let c = target.counts();
    ServeMetrics {
        started: tally.started,
        now,
        refused,
        policy: PolicyTotals {
            refused_destroys: c.refused_destroys.load(Relaxed),
            refused_rollbacks: c.refused_rollbacks.load(Relaxed),
            refused_promoted: c.refused_promoted.load(Relaxed),
            client_pruned: c.client_pruned.load(Relaxed),
            retention_pruned: c.retention_pruned.load(Relaxed),
            hold_failures: c.hold_failures.load(Relaxed),
        },
        sessions_completed: tally.completed,
        sessions_failed: tally.failed,
        reloads_applied: tally.reloads_applied,
        reloads_rejected: tally.reloads_rejected,
        cache: server.chunk_cache_stats().map(|s| CacheTotals {
            bytes: s.bytes,
            chunks: s.chunks,
            hits: s.hits,
            hit_bytes: s.hit_bytes,
            stored: s.stored,
            stored_bytes: s.stored_bytes,
        }),
    }
}

/// Writes the metrics to the config's `metrics_file`, if it names one.
pub(crate) async fn write(server: &Server, target: &ZfsTarget, tally: &Tally) {
    let Some(path) = target.policy().config.metrics_file.clone() else {
        return;
    };
    let text = render_prometheus(&gather(server, target, tally, now()));
    let shown = path.display().to_string();
    let written = tokio::task::spawn_blocking(move || {
        fjord_config::textfile::write_atomic(&path, text.as_bytes())
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(file = %shown, error = %e, "cannot write the metrics file"),
        Err(e) => tracing::warn!(file = %shown, error = %e, "the metrics writer failed"),
    }
}

/// Unix seconds now.
pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
