//! The receiver daemon's own Prometheus metrics (`fjord-recv serve`,
//! `metrics_file` in recv.toml): what it refused, by code and by client,
//! what its policy refused and pruned, how sessions ended, reloads, and
//! the chunk cache's size and hit rate. Counters count from the daemon's
//! start (`fjord_dr_serve_start_time_seconds` says when), as Prometheus
//! expects of a `_total`. The copies' freshness is `fjord-recv status
//! --metrics-file` ([`crate::status::render_prometheus`]).

use fjord_config::textfile::escape_label_value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Refusals of one code to one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// The refusal code's label (`policy`, `busy`, `bad_dataset`,
    /// `not_pinned`, ...).
    pub code: String,
    /// The client's name from the config; `unknown` for a key that is
    /// not (or no longer) a client, or a handshake refused before a key.
    pub client: String,
    /// How many since the start.
    pub count: u64,
}

/// The label of refusals whose key names no configured client.
pub const UNKNOWN_CLIENT: &str = "unknown";

/// Sums `(code, client name if known, count)` into one [`Refused`] per
/// (code, client), sorted; keys of no client fall under
/// [`UNKNOWN_CLIENT`].
pub fn by_client(counts: impl IntoIterator<Item = (String, Option<String>, u64)>) -> Vec<Refused> {
    let mut sums: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (code, client, n) in counts {
        let client = client.unwrap_or_else(|| UNKNOWN_CLIENT.to_string());
        *sums.entry((code, client)).or_default() += n;
    }
    sums.into_iter()
        .map(|((code, client), count)| Refused {
            code,
            client,
            count,
        })
        .collect()
}

/// What the DR node's policy refused and did, since the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyTotals {
    /// Destroy requests refused.
    pub refused_destroys: u64,
    /// Rollbacks (`push --force`) refused.
    pub refused_rollbacks: u64,
    /// Pushes and requests refused because their target was promoted.
    pub refused_promoted: u64,
    /// Snapshots destroyed at clients' requests.
    pub client_pruned: u64,
    /// Snapshots destroyed by the DR node's retention.
    pub retention_pruned: u64,
    /// Received snapshots that could not be held.
    pub hold_failures: u64,
}

/// The chunk cache's size now and its hits and stores since the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheTotals {
    /// Bytes kept.
    pub bytes: u64,
    /// Chunks kept.
    pub chunks: u64,
    /// References resolved from the cache.
    pub hits: u64,
    /// Their bytes.
    pub hit_bytes: u64,
    /// Chunks sent in full and stored.
    pub stored: u64,
    /// Their bytes.
    pub stored_bytes: u64,
}

/// Everything [`render_prometheus`] writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServeMetrics {
    /// When the daemon started, Unix seconds.
    pub started: i64,
    /// When these were taken, Unix seconds.
    pub now: i64,
    /// Refusals by code and client.
    pub refused: Vec<Refused>,
    /// The policy's counts.
    pub policy: PolicyTotals,
    /// Sessions received, verified and stored.
    pub sessions_completed: u64,
    /// Sessions failed, aborted or replaced.
    pub sessions_failed: u64,
    /// Reloads (SIGHUP) put in force.
    pub reloads_applied: u64,
    /// Reloads rejected (the file did not load).
    pub reloads_rejected: u64,
    /// The chunk cache; none when there is none.
    pub cache: Option<CacheTotals>,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The metrics as Prometheus text (node-exporter's textfile format).
pub fn render_prometheus(m: &ServeMetrics) -> String {
    let mut out = String::new();
    let o = &mut out;
    let name = "fjord_dr_refused_requests_total";
    family(
        o,
        name,
        "counter",
        "Connections, offers and requests the receiver refused, by refusal code and client.",
    );
    for r in &m.refused {
        let _ = writeln!(
            o,
            "{name}{{code=\"{}\",client=\"{}\"}} {}",
            escape_label_value(&r.code),
            escape_label_value(&r.client),
            r.count
        );
    }
    let name = "fjord_dr_policy_refusals_total";
    family(
        o,
        name,
        "counter",
        "Destroys, rollbacks and writes into promoted datasets the DR policy refused.",
    );
    let p = &m.policy;
    for (action, n) in [
        ("destroy", p.refused_destroys),
        ("rollback", p.refused_rollbacks),
        ("promoted", p.refused_promoted),
    ] {
        let _ = writeln!(o, "{name}{{action=\"{action}\"}} {n}");
    }
    let name = "fjord_dr_pruned_snapshots_total";
    family(
        o,
        name,
        "counter",
        "Snapshots destroyed on the DR node, at clients' requests or by its own retention.",
    );
    let _ = writeln!(o, "{name}{{by=\"client\"}} {}", p.client_pruned);
    let _ = writeln!(o, "{name}{{by=\"retention\"}} {}", p.retention_pruned);
    let name = "fjord_dr_hold_failures_total";
    family(
        o,
        name,
        "counter",
        "Received snapshots the DR node could not hold.",
    );
    let _ = writeln!(o, "{name} {}", p.hold_failures);
    let name = "fjord_dr_sessions_total";
    family(o, name, "counter", "Transfers that ended, by result.");
    let _ = writeln!(o, "{name}{{result=\"completed\"}} {}", m.sessions_completed);
    let _ = writeln!(o, "{name}{{result=\"failed\"}} {}", m.sessions_failed);
    let name = "fjord_dr_reloads_total";
    family(o, name, "counter", "Config reloads (SIGHUP), by result.");
    let _ = writeln!(o, "{name}{{result=\"applied\"}} {}", m.reloads_applied);
    let _ = writeln!(o, "{name}{{result=\"rejected\"}} {}", m.reloads_rejected);
    if let Some(c) = &m.cache {
        render_cache(o, c);
    }
    let name = "fjord_dr_serve_start_time_seconds";
    family(
        o,
        name,
        "gauge",
        "When fjord-recv serve started (the counters count from then).",
    );
    let _ = writeln!(o, "{name} {}", m.started);
    let name = "fjord_dr_serve_timestamp_seconds";
    family(
        o,
        name,
        "gauge",
        "When fjord-recv serve last wrote these metrics.",
    );
    let _ = writeln!(o, "{name} {}", m.now);
    out
}

fn render_cache(o: &mut String, c: &CacheTotals) {
    let gauges = [
        (
            "fjord_dr_chunk_cache_bytes",
            "Bytes the chunk cache keeps.",
            c.bytes,
        ),
        (
            "fjord_dr_chunk_cache_chunks",
            "Chunks the chunk cache keeps.",
            c.chunks,
        ),
    ];
    for (name, help, v) in gauges {
        family(o, name, "gauge", help);
        let _ = writeln!(o, "{name} {v}");
    }
    let counters = [
        (
            "fjord_dr_chunk_cache_hits_total",
            "References resolved from the chunk cache (chunks not sent again).",
            c.hits,
        ),
        (
            "fjord_dr_chunk_cache_hit_bytes_total",
            "Bytes of the chunks resolved from the chunk cache.",
            c.hit_bytes,
        ),
        (
            "fjord_dr_chunk_cache_stored_total",
            "Chunks sent in full and stored in the chunk cache (misses).",
            c.stored,
        ),
        (
            "fjord_dr_chunk_cache_stored_bytes_total",
            "Bytes of the chunks sent in full and stored.",
            c.stored_bytes,
        ),
    ];
    for (name, help, v) in counters {
        family(o, name, "counter", help);
        let _ = writeln!(o, "{name} {v}");
    }
    let total = c.hit_bytes + c.stored_bytes;
    if total > 0 {
        let name = "fjord_dr_chunk_cache_hit_ratio";
        family(
            o,
            name,
            "gauge",
            "Share of packed chunk bytes the cache supplied since the start (0 to 1).",
        );
        let _ = writeln!(o, "{name} {:.4}", c.hit_bytes as f64 / total as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_summed_per_code_and_client_unknown_keys_together() {
        let r = by_client([
            ("policy".to_string(), Some("oslo".to_string()), 2),
            ("not_pinned".to_string(), None, 3),
            ("policy".to_string(), None, 1),
            ("policy".to_string(), None, 4),
            ("busy".to_string(), Some("oslo".to_string()), 1),
        ]);
        let flat: Vec<(&str, &str, u64)> = r
            .iter()
            .map(|r| (r.code.as_str(), r.client.as_str(), r.count))
            .collect();
        assert_eq!(
            flat,
            vec![
                ("busy", "oslo", 1),
                ("not_pinned", "unknown", 3),
                ("policy", "oslo", 2),
                ("policy", "unknown", 5),
            ]
        );
    }

    #[test]
    fn every_family_has_help_type_and_samples() {
        let m = ServeMetrics {
            started: 1_700_000_000,
            now: 1_700_000_100,
            refused: by_client([("policy".to_string(), Some("os\"lo".to_string()), 2)]),
            policy: PolicyTotals {
                refused_destroys: 3,
                refused_rollbacks: 1,
                ..Default::default()
            },
            sessions_completed: 5,
            sessions_failed: 1,
            reloads_applied: 2,
            reloads_rejected: 1,
            cache: Some(CacheTotals {
                bytes: 4096,
                chunks: 1,
                hits: 3,
                hit_bytes: 3072,
                stored: 1,
                stored_bytes: 1024,
            }),
        };
        let text = render_prometheus(&m);
        for line in [
            "fjord_dr_refused_requests_total{code=\"policy\",client=\"os\\\"lo\"} 2",
            "fjord_dr_policy_refusals_total{action=\"destroy\"} 3",
            "fjord_dr_policy_refusals_total{action=\"rollback\"} 1",
            "fjord_dr_policy_refusals_total{action=\"promoted\"} 0",
            "fjord_dr_sessions_total{result=\"completed\"} 5",
            "fjord_dr_reloads_total{result=\"rejected\"} 1",
            "fjord_dr_chunk_cache_bytes 4096",
            "fjord_dr_chunk_cache_hits_total 3",
            "fjord_dr_chunk_cache_hit_ratio 0.7500",
            "fjord_dr_serve_start_time_seconds 1700000000",
            "# TYPE fjord_dr_refused_requests_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        // No cache, no cache families; no traffic, no ratio.
        let bare = render_prometheus(&ServeMetrics::default());
        assert!(!bare.contains("chunk_cache"), "{bare}");
        let idle = render_prometheus(&ServeMetrics {
            cache: Some(CacheTotals::default()),
            ..Default::default()
        });
        assert!(idle.contains("fjord_dr_chunk_cache_bytes 0"));
        assert!(!idle.contains("hit_ratio"), "{idle}");
    }
}
