//! The tripwire's decision, pure: this push's shares against the
//! dataset's own history.
//!
//! Each share (incompressible, rewritten) has a baseline, the median of
//! that share over the kept history (robust to a few odd pushes). A share
//! trips when it is at least `floor` and at least `factor` times its
//! baseline (and above it, for a baseline of 0). Either share tripping
//! trips the push. A push is not judged when the tripwire is disabled,
//! when it wrote fewer than `min_bytes` of blocks (tiny pushes are noise),
//! when nothing in it could be measured, or while fewer than
//! `min_history` pushes are kept.

use fjord_config::tripwire::TripwireConfig;
use serde::{Deserialize, Serialize};

/// One push's measured shares (what the history keeps).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// When the push ran (Unix seconds).
    pub time: i64,
    /// The snapshot it replicated (short name).
    pub snapshot: String,
    /// WRITE block bytes in its streams.
    pub write_bytes: u64,
    /// Share of the judged block bytes that are incompressible.
    pub incompressible: Option<f64>,
    /// Share of the block bytes of known age that rewrite existing files.
    pub rewritten: Option<f64>,
}

/// What the tripwire made of a push.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A share jumped past its threshold: possible mass encryption.
    Tripped,
    /// Within the dataset's usual range.
    Normal,
    /// Measured, but the history is still shorter than `min_history`:
    /// kept, not judged.
    Learning,
    /// Not judged: see the reason.
    NotJudged,
}

/// The verdict with the figures that led to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    /// The verdict.
    pub verdict: Verdict,
    /// The median incompressible share of the history, if it has any.
    pub baseline_incompressible: Option<f64>,
    /// The median rewritten share of the history, if it has any.
    pub baseline_rewritten: Option<f64>,
    /// Why, in one line.
    pub reason: String,
}

/// The median of `values` (`None` when empty).
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// The share at which a baseline of `baseline` trips.
pub fn threshold(config: &TripwireConfig, baseline: f64) -> f64 {
    (config.factor * baseline).max(config.floor)
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

/// Judges `current` against `history` (oldest first, tripped pushes never
/// in it).
pub fn judge(config: &TripwireConfig, history: &[Sample], current: &Sample) -> Judgement {
    let base_i = median(history.iter().filter_map(|s| s.incompressible).collect());
    let base_r = median(history.iter().filter_map(|s| s.rewritten).collect());
    let not_judged = |reason: String| Judgement {
        verdict: Verdict::NotJudged,
        baseline_incompressible: base_i,
        baseline_rewritten: base_r,
        reason,
    };
    if !config.enabled {
        return not_judged("the tripwire is disabled".into());
    }
    if current.write_bytes < config.min_bytes {
        return not_judged(format!(
            "{} bytes of blocks, under min_bytes ({})",
            current.write_bytes, config.min_bytes
        ));
    }
    if current.incompressible.is_none() && current.rewritten.is_none() {
        return not_judged("nothing in the stream could be measured".into());
    }
    if history.len() < config.min_history {
        return Judgement {
            verdict: Verdict::Learning,
            ..not_judged(format!(
                "{} of the {} pushes of history it needs",
                history.len(),
                config.min_history
            ))
        };
    }
    let mut tripped = Vec::new();
    for (name, value, base) in [
        ("incompressible", current.incompressible, base_i),
        ("rewritten", current.rewritten, base_r),
    ] {
        let (Some(v), Some(b)) = (value, base) else {
            continue;
        };
        if v >= threshold(config, b) && v > b {
            tripped.push(format!("{name} {} (usually {})", pct(v), pct(b)));
        }
    }
    let verdict = if tripped.is_empty() {
        Verdict::Normal
    } else {
        Verdict::Tripped
    };
    let reason = if tripped.is_empty() {
        format!(
            "incompressible {}, rewritten {}: within the usual range",
            current.incompressible.map_or("-".into(), pct),
            current.rewritten.map_or("-".into(), pct)
        )
    } else {
        format!("{}: possible mass encryption", tripped.join(", "))
    };
    Judgement {
        verdict,
        baseline_incompressible: base_i,
        baseline_rewritten: base_r,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(i: Option<f64>, r: Option<f64>, bytes: u64) -> Sample {
        Sample {
            time: 0,
            snapshot: "s".into(),
            write_bytes: bytes,
            incompressible: i,
            rewritten: r,
        }
    }

    fn history(n: usize, i: f64, r: f64) -> Vec<Sample> {
        (0..n).map(|_| sample(Some(i), Some(r), 10 << 20)).collect()
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![0.3, 0.1, 0.2]), Some(0.2));
        assert_eq!(median(vec![0.4, 0.1, 0.2, 0.3]), Some(0.25));
    }

    #[test]
    fn mass_encryption_trips_and_normal_pushes_do_not() {
        let c = TripwireConfig::default();
        let h = history(5, 0.05, 0.10);
        let attack = sample(Some(0.98), Some(0.95), 50 << 20);
        let j = judge(&c, &h, &attack);
        assert_eq!(j.verdict, Verdict::Tripped, "{}", j.reason);
        assert!(
            j.reason.contains("incompressible 98% (usually 5%)"),
            "{}",
            j.reason
        );
        assert!(
            j.reason.contains("rewritten 95% (usually 10%)"),
            "{}",
            j.reason
        );
        assert_eq!(j.baseline_incompressible, Some(0.05));
        // Three times the baseline but under the floor: normal.
        let busy = sample(Some(0.20), Some(0.35), 50 << 20);
        assert_eq!(judge(&c, &h, &busy).verdict, Verdict::Normal);
        // One share alone is enough.
        let photos = sample(Some(0.90), Some(0.0), 50 << 20);
        assert_eq!(judge(&c, &h, &photos).verdict, Verdict::Tripped);
    }

    #[test]
    fn not_judged_when_small_disabled_unmeasured_or_young() {
        let c = TripwireConfig::default();
        let attack = |bytes| sample(Some(1.0), Some(1.0), bytes);
        let h = history(5, 0.0, 0.0);
        assert_eq!(judge(&c, &h, &attack(1 << 20)).verdict, Verdict::NotJudged);
        assert_eq!(
            judge(&c, &h[..4], &attack(8 << 20)).verdict,
            Verdict::Learning
        );
        assert!(judge(&c, &h[..4], &attack(8 << 20))
            .reason
            .contains("4 of the 5"));
        assert_eq!(
            judge(&c, &h, &sample(None, None, 8 << 20)).verdict,
            Verdict::NotJudged
        );
        let off = TripwireConfig {
            enabled: false,
            ..c.clone()
        };
        assert_eq!(
            judge(&off, &h, &attack(8 << 20)).verdict,
            Verdict::NotJudged
        );
        // A baseline of 0 trips at the floor.
        assert_eq!(judge(&c, &h, &attack(8 << 20)).verdict, Verdict::Tripped);
    }

    #[test]
    fn a_dataset_that_is_always_incompressible_cannot_trip_on_that_share() {
        let c = TripwireConfig::default();
        let h = history(5, 0.9, 0.0);
        let j = judge(&c, &h, &sample(Some(1.0), Some(0.0), 8 << 20));
        assert_eq!(j.verdict, Verdict::Normal);
    }

    proptest! {
        #[test]
        fn trips_exactly_past_the_threshold(
            base in 0.0f64..0.5, value in 0.0f64..=1.0, n in 5usize..30
        ) {
            let c = TripwireConfig::default();
            let h = history(n, base, 0.0);
            let j = judge(&c, &h, &sample(Some(value), None, 8 << 20));
            let expect = value >= (3.0 * base).max(0.5) && value > base;
            prop_assert_eq!(j.verdict == Verdict::Tripped, expect);
        }

        #[test]
        fn median_is_robust_to_a_minority_of_outliers(
            normal in 0.0f64..0.1, outliers in 1usize..5
        ) {
            let mut h = history(11, normal, normal);
            for s in h.iter_mut().take(outliers) {
                s.incompressible = Some(1.0);
            }
            let j = judge(&TripwireConfig::default(), &h, &sample(Some(0.95), None, 8 << 20));
            prop_assert_eq!(j.verdict, Verdict::Tripped);
        }
    }
}
