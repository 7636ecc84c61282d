//! One dataset's tripwire memory: the history of judged pushes, the last
//! measured one, and the alarm that waits for an operator.

use crate::judge::{Judgement, Sample, Verdict};
use serde::{Deserialize, Serialize};

/// An unacknowledged trip.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alarm {
    /// When the tripping push ran (Unix seconds).
    pub time: i64,
    /// The snapshot it replicated.
    pub snapshot: String,
    /// Its incompressible share.
    pub incompressible: Option<f64>,
    /// Its rewritten share.
    pub rewritten: Option<f64>,
    /// Why it tripped.
    pub reason: String,
}

/// One dataset's page.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// Judged pushes that did not trip, oldest first.
    pub history: Vec<Sample>,
    /// The last measured push (tripped or not).
    pub last: Option<Sample>,
    /// The alarm, until acknowledged.
    pub alarm: Option<Alarm>,
}

impl Page {
    /// Records one judged push: a trip raises the alarm (the first one
    /// stays until acknowledged, so a later normal push cannot hide it); a
    /// push that did not trip joins the history, which keeps the newest
    /// `keep`.
    pub fn record(&mut self, sample: &Sample, judgement: &Judgement, keep: usize) {
        self.last = Some(sample.clone());
        match judgement.verdict {
            Verdict::Tripped => {
                if self.alarm.is_none() {
                    self.alarm = Some(Alarm {
                        time: sample.time,
                        snapshot: sample.snapshot.clone(),
                        incompressible: sample.incompressible,
                        rewritten: sample.rewritten,
                        reason: judgement.reason.clone(),
                    });
                }
            }
            Verdict::Normal | Verdict::Learning => self.history.push(sample.clone()),
            // Too small, unmeasured or disabled: not kept.
            Verdict::NotJudged => {}
        }
        let excess = self.history.len().saturating_sub(keep);
        self.history.drain(..excess);
    }

    /// Clears the alarm; whether there was one.
    pub fn acknowledge(&mut self) -> bool {
        self.alarm.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(time: i64, incompressible: f64) -> Sample {
        Sample {
            time,
            snapshot: format!("s{time}"),
            write_bytes: 1 << 20,
            incompressible: Some(incompressible),
            rewritten: None,
        }
    }

    fn judged(verdict: Verdict) -> Judgement {
        Judgement {
            verdict,
            baseline_incompressible: None,
            baseline_rewritten: None,
            reason: "why".into(),
        }
    }

    #[test]
    fn the_first_trip_stays_until_acknowledged_and_normal_pushes_keep_the_newest() {
        let mut page = Page::default();
        for t in 0..4 {
            page.record(&sample(t, 0.1), &judged(Verdict::Normal), 3);
        }
        assert_eq!(
            page.history.iter().map(|s| s.time).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        page.record(&sample(10, 0.9), &judged(Verdict::Tripped), 3);
        page.record(&sample(11, 0.95), &judged(Verdict::Tripped), 3);
        page.record(&sample(12, 0.1), &judged(Verdict::Normal), 3);
        assert_eq!(page.alarm.as_ref().map(|a| a.time), Some(10));
        assert_eq!(page.last.as_ref().map(|s| s.time), Some(12));
        assert!(page.history.iter().all(|s| s.incompressible < Some(0.5)));
        page.record(&sample(13, 0.1), &judged(Verdict::NotJudged), 3);
        assert_eq!(page.history.len(), 3);
        assert!(page.acknowledge());
        assert!(!page.acknowledge());
    }
}
