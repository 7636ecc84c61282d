//! Which of fjord's snapshots to destroy: a pure plan from a snapshot list
//! and a [`Retention`] policy.
//!
//! A policy keeps, for each class, the newest snapshot in each of the N
//! most recent UTC hours / days / weeks (weeks start on Monday) **that have
//! a snapshot**; the union of the classes is kept. Counting buckets that
//! have snapshots, rather than a calendar window back from now, means a
//! sender that was down for a week still keeps its 24 hourly snapshots
//! instead of losing them all on its first run back; it also makes the plan
//! independent of the clock, and applying it twice prunes nothing more.
//!
//! Never pruned: snapshots whose names are not `{prefix}_{time}` (someone
//! else's), the newest snapshot of the list, the newest of fjord's, and the
//! `protected` GUIDs (the replication base, snapshots being sent).

use fjord_zfs::snapname::parse_snapshot_time;
use fjord_zfs::SnapshotInfo;
use serde::Deserialize;
use std::collections::HashSet;

/// How many snapshots of each class to keep; 0 keeps none of that class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Newest snapshot of each of this many most recent hours.
    #[serde(default)]
    pub hourly: u32,
    /// Newest snapshot of each of this many most recent days (UTC).
    #[serde(default)]
    pub daily: u32,
    /// Newest snapshot of each of this many most recent weeks (UTC, from
    /// Monday).
    #[serde(default)]
    pub weekly: u32,
    /// Newest snapshot of each of this many most recent calendar months
    /// (UTC).
    #[serde(default)]
    pub monthly: u32,
    /// Newest snapshot of each of this many most recent calendar years
    /// (UTC).
    #[serde(default)]
    pub yearly: u32,
}

impl Retention {
    /// Whether the policy keeps nothing beyond the always-kept newest
    /// snapshot (every count is 0).
    pub fn keeps_nothing(&self) -> bool {
        self.hourly == 0
            && self.daily == 0
            && self.weekly == 0
            && self.monthly == 0
            && self.yearly == 0
    }
}

impl Retention {
    /// What the policy keeps, in words (`check-config`): "the newest
    /// snapshot of each of the last 24 hours, 7 days, 12 months and 5
    /// years that have one, and always the newest".
    pub fn describe(&self) -> String {
        let classes: Vec<String> = [
            (self.hourly, "hour", "hours"),
            (self.daily, "day", "days"),
            (self.weekly, "week", "weeks"),
            (self.monthly, "month", "months"),
            (self.yearly, "year", "years"),
        ]
        .iter()
        .filter(|(n, _, _)| *n > 0)
        .map(|(n, one, many)| format!("{n} {}", if *n == 1 { one } else { many }))
        .collect();
        match classes.split_last() {
            None => "only the newest snapshot".into(),
            Some((last, [])) => format!(
                "the newest snapshot of each of the last {last} that have one (UTC), and always the newest"
            ),
            Some((last, rest)) => format!(
                "the newest snapshot of each of the last {} and {last} that have one (UTC), and always the newest",
                rest.join(", ")
            ),
        }
    }
}

const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

fn hour_bucket(t: i64) -> i64 {
    t.div_euclid(HOUR)
}

fn day_bucket(t: i64) -> i64 {
    t.div_euclid(DAY)
}

/// 1970-01-01 was a Thursday: shifting by 3 days makes weeks start on
/// Monday, as ISO 8601 weeks do.
fn week_bucket(t: i64) -> i64 {
    (t.div_euclid(DAY) + 3).div_euclid(7)
}

/// The proleptic Gregorian (year, month) of a Unix time, UTC (Howard
/// Hinnant's days-to-civil algorithm).
fn year_month(t: i64) -> (i64, i64) {
    let z = t.div_euclid(DAY) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

fn month_bucket(t: i64) -> i64 {
    let (y, m) = year_month(t);
    y * 12 + (m - 1)
}

fn year_bucket(t: i64) -> i64 {
    year_month(t).0
}

/// The snapshots to destroy, oldest first: a subset of `snapshots`.
///
/// Candidates are the snapshots whose names parse with
/// [`parse_snapshot_time`] for `prefix`; their bucket is the time in the
/// name. See the module docs for what is kept.
pub fn plan_pruning(
    snapshots: &[SnapshotInfo],
    prefix: &str,
    policy: &Retention,
    protected: &[u64],
) -> Vec<SnapshotInfo> {
    // (time, createtxg, index): newest last after sorting.
    let mut ours: Vec<(i64, u64, usize)> = snapshots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| parse_snapshot_time(prefix, &s.name).map(|t| (t, s.createtxg, i)))
        .collect();
    ours.sort_unstable();

    let mut keep: HashSet<usize> = HashSet::new();
    if let Some(&(_, _, newest_ours)) = ours.last() {
        keep.insert(newest_ours);
    }
    if let Some((newest, _)) = snapshots
        .iter()
        .enumerate()
        .max_by_key(|(_, s)| s.createtxg)
    {
        keep.insert(newest);
    }
    for (count, bucket) in [
        (policy.hourly, hour_bucket as fn(i64) -> i64),
        (policy.daily, day_bucket),
        (policy.weekly, week_bucket),
        (policy.monthly, month_bucket),
        (policy.yearly, year_bucket),
    ] {
        let mut seen = 0u32;
        let mut last_bucket = None;
        // Newest first: the first snapshot of each bucket is its newest.
        for &(t, _, i) in ours.iter().rev() {
            if seen >= count {
                break;
            }
            let b = bucket(t);
            if last_bucket != Some(b) {
                last_bucket = Some(b);
                seen += 1;
                keep.insert(i);
            }
        }
    }
    let mut prune: Vec<(u64, usize)> = ours
        .iter()
        .filter(|&&(_, _, i)| !keep.contains(&i) && !protected.contains(&snapshots[i].guid))
        .map(|&(_, txg, i)| (txg, i))
        .collect();
    prune.sort_unstable();
    prune
        .into_iter()
        .map(|(_, i)| snapshots[i].clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_zfs::snapname::format_snapshot_name;
    use proptest::prelude::*;

    /// 2026-01-05 00:00:00 UTC, a Monday.
    const MONDAY: i64 = 1_767_571_200;

    fn ours(times: &[i64]) -> Vec<SnapshotInfo> {
        times
            .iter()
            .enumerate()
            .map(|(i, &t)| SnapshotInfo {
                name: format_snapshot_name("fjord", t),
                guid: 1000 + i as u64,
                createtxg: 10 + i as u64,
                creation: t,
            })
            .collect()
    }

    fn names(list: &[SnapshotInfo]) -> Vec<String> {
        list.iter().map(|s| s.name.clone()).collect()
    }

    #[test]
    fn a_policy_describes_its_classes_monthly_and_yearly_included() {
        let p = Retention {
            hourly: 24,
            daily: 1,
            monthly: 12,
            yearly: 5,
            ..Retention::default()
        };
        assert_eq!(
            p.describe(),
            "the newest snapshot of each of the last 24 hours, 1 day, 12 months and 5 years that have one (UTC), and always the newest"
        );
        let y = Retention {
            yearly: 1,
            ..Retention::default()
        };
        assert!(
            y.describe().contains("last 1 year that"),
            "{}",
            y.describe()
        );
        assert_eq!(Retention::default().describe(), "only the newest snapshot");
    }

    #[test]
    fn calendar_months_and_years_are_utc() {
        // 2026-01-05 is in January 2026; 2024-02-29 a leap day; the
        // second before 2000-03-01 still February.
        assert_eq!(year_month(MONDAY), (2026, 1));
        assert_eq!(year_month(1_709_164_800), (2024, 2));
        assert_eq!(year_month(951_868_799), (2000, 2));
        assert_eq!(year_month(951_868_800), (2000, 3));
        assert_eq!(year_month(-1), (1969, 12));
    }

    #[test]
    fn monthly_and_yearly_keep_the_newest_of_each() {
        // A snapshot every 15 days from 2025-01-01 to 2026-03-27.
        let start = 1_735_689_600; // 2025-01-01T00:00Z
        let times: Vec<i64> = (0..30).map(|i| start + i * 15 * DAY).collect();
        let snaps = ours(&times);
        let doomed = plan_pruning(
            &snaps,
            "fjord",
            &Retention {
                monthly: 3,
                ..Retention::default()
            },
            &[],
        );
        let kept: Vec<i64> = snaps
            .iter()
            .filter(|s| !doomed.contains(s))
            .map(|s| s.creation)
            .collect();
        let months: Vec<i64> = kept.iter().map(|&t| month_bucket(t)).collect();
        let mut distinct = months.clone();
        distinct.dedup();
        assert_eq!(kept.len(), 3, "{kept:?}");
        assert_eq!(distinct.len(), 3);
        let yearly = plan_pruning(
            &snaps,
            "fjord",
            &Retention {
                yearly: 5,
                ..Retention::default()
            },
            &[],
        );
        // 2025 and 2026 are present: the newest of each is kept.
        assert_eq!(snaps.len() - yearly.len(), 2);
    }

    fn policy(hourly: u32, daily: u32, weekly: u32) -> Retention {
        Retention {
            hourly,
            daily,
            weekly,
            ..Retention::default()
        }
    }

    #[test]
    fn monday_constant_is_a_monday() {
        assert_eq!(format_snapshot_name("x", MONDAY), "x_2026-01-05T000000Z");
        assert_eq!(week_bucket(MONDAY), week_bucket(MONDAY + 6 * DAY + DAY - 1));
        assert_ne!(week_bucket(MONDAY), week_bucket(MONDAY - 1));
    }

    #[test]
    fn hourly_keeps_newest_per_hour() {
        // Two snapshots in each of hours 0..4.
        let times: Vec<i64> = (0..4)
            .flat_map(|h| [MONDAY + h * HOUR, MONDAY + h * HOUR + 1800])
            .collect();
        let snaps = ours(&times);
        let prune = plan_pruning(&snaps, "fjord", &policy(2, 0, 0), &[]);
        // Keep 03:30 and 02:30; prune the rest.
        assert_eq!(
            names(&prune),
            vec![
                "fjord_2026-01-05T000000Z",
                "fjord_2026-01-05T003000Z",
                "fjord_2026-01-05T010000Z",
                "fjord_2026-01-05T013000Z",
                "fjord_2026-01-05T020000Z",
                "fjord_2026-01-05T030000Z",
            ]
        );
    }

    #[test]
    fn classes_are_united() {
        // One snapshot every 6 hours for 3 weeks.
        let times: Vec<i64> = (0..84).map(|i| MONDAY + i * 6 * HOUR).collect();
        let snaps = ours(&times);
        let prune = plan_pruning(&snaps, "fjord", &policy(4, 3, 3), &[]);
        let kept: Vec<i64> = snaps
            .iter()
            .filter(|s| !prune.contains(s))
            .map(|s| s.creation)
            .collect();
        let last = MONDAY + 83 * 6 * HOUR; // Sunday 18:00 of week 3
        let expected = vec![
            MONDAY + 6 * DAY + 18 * HOUR,  // newest of week 1 (Sunday 18:00)
            MONDAY + 13 * DAY + 18 * HOUR, // newest of week 2
            last - 2 * DAY,                // newest of the day before yesterday
            last - DAY,                    // newest of yesterday
            last - 18 * HOUR,              // hourly
            last - 12 * HOUR,              // hourly
            last - 6 * HOUR,               // hourly
            last,                          // newest: hourly, daily, weekly
        ];
        assert_eq!(kept, expected);
    }

    #[test]
    fn zero_policy_keeps_only_newest_and_protected() {
        let snaps = ours(&[MONDAY, MONDAY + DAY, MONDAY + 2 * DAY]);
        let prune = plan_pruning(&snaps, "fjord", &policy(0, 0, 0), &[snaps[0].guid]);
        assert_eq!(names(&prune), vec!["fjord_2026-01-06T000000Z"]);
    }

    #[test]
    fn foreign_snapshots_are_never_pruned_nor_counted() {
        let mut snaps = ours(&[MONDAY, MONDAY + HOUR]);
        snaps.push(SnapshotInfo {
            name: "manual-before-upgrade".into(),
            guid: 7,
            createtxg: 5,
            creation: MONDAY - DAY,
        });
        snaps.push(SnapshotInfo {
            name: format_snapshot_name("other", MONDAY),
            guid: 8,
            createtxg: 6,
            creation: MONDAY,
        });
        let prune = plan_pruning(&snaps, "fjord", &policy(1, 0, 0), &[]);
        assert_eq!(names(&prune), vec!["fjord_2026-01-05T000000Z"]);
    }

    #[test]
    fn a_gap_does_not_empty_the_hourly_class() {
        // Hours 0 and 1, then a week of downtime, then hour 170.
        let snaps = ours(&[MONDAY, MONDAY + HOUR, MONDAY + 170 * HOUR]);
        let prune = plan_pruning(&snaps, "fjord", &policy(2, 0, 0), &[]);
        assert_eq!(names(&prune), vec!["fjord_2026-01-05T000000Z"]);
    }

    fn arb_snapshots() -> impl Strategy<Value = Vec<SnapshotInfo>> {
        prop::collection::vec((0i64..60 * DAY, any::<bool>()), 0..60).prop_map(|entries| {
            let mut entries = entries;
            entries.sort_by_key(|e| e.0);
            entries
                .into_iter()
                .enumerate()
                .map(|(i, (offset, foreign))| {
                    let t = MONDAY + offset;
                    SnapshotInfo {
                        name: if foreign {
                            format!("manual{i}")
                        } else {
                            format_snapshot_name("fjord", t)
                        },
                        guid: 1 + i as u64,
                        createtxg: 100 + i as u64,
                        creation: t,
                    }
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn pruning_properties(
            snaps in arb_snapshots(),
            hourly in 0u32..30, daily in 0u32..10, weekly in 0u32..5,
            protected_picks in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        ) {
            let policy = policy(hourly, daily, weekly);
            let protected: Vec<u64> = if snaps.is_empty() {
                vec![]
            } else {
                protected_picks.iter().map(|p| snaps[p.index(snaps.len())].guid).collect()
            };
            let prune = plan_pruning(&snaps, "fjord", &policy, &protected);
            for p in &prune {
                prop_assert!(snaps.contains(p), "result is a subset");
                prop_assert!(!protected.contains(&p.guid), "protected pruned");
                prop_assert!(parse_snapshot_time("fjord", &p.name).is_some(), "foreign pruned");
            }
            if let Some(newest) = snaps.iter().max_by_key(|s| s.createtxg) {
                prop_assert!(!prune.contains(newest), "newest pruned");
            }
            let kept: Vec<SnapshotInfo> =
                snaps.iter().filter(|s| !prune.contains(s)).cloned().collect();
            let again = plan_pruning(&kept, "fjord", &policy, &protected);
            prop_assert!(again.is_empty(), "not idempotent: {:?}", names(&again));
            // Every class keeps as many buckets as it asked for, when there
            // are that many.
            let hours: HashSet<i64> = kept
                .iter()
                .filter_map(|s| parse_snapshot_time("fjord", &s.name))
                .map(hour_bucket)
                .collect();
            let all_hours: HashSet<i64> = snaps
                .iter()
                .filter_map(|s| parse_snapshot_time("fjord", &s.name))
                .map(hour_bucket)
                .collect();
            prop_assert!(hours.len() >= all_hours.len().min(hourly as usize));
        }
    }
}
