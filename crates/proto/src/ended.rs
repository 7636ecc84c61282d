//! The receiver's memory of sessions that ended: their final reports,
//! kept for a while so that a sender whose connection died after the
//! receiver finished (stored or failed the stream) but before the report
//! reached it learns the outcome when it resumes, instead of being told
//! the session is unknown and pushing again what is already stored.
//!
//! Pure: time is an argument. Only the key that offered a session is
//! answered with its report; any other key learns nothing. The memory is
//! bounded in time (`keep`) and in entries (the oldest go first), so a
//! client holding a valid key cannot make it grow without bound.

use crate::key::PublicKey;
use crate::message::{Report, SessionId};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// How many ended sessions a receiver remembers at most by default.
pub const DEFAULT_CAPACITY: usize = 1024;

/// An ended session's outcome.
#[derive(Clone, Debug)]
struct Ended {
    key: PublicKey,
    report: Report,
    at: Instant,
}

/// Reports of recently ended sessions, by session id.
#[derive(Debug)]
pub struct EndedSessions {
    keep: Duration,
    capacity: usize,
    entries: HashMap<SessionId, Ended>,
    /// Ids in the order they ended (an id may appear again after a later
    /// record; stale positions are skipped).
    order: VecDeque<(Instant, SessionId)>,
}

impl EndedSessions {
    /// Remembers reports for `keep` (use at least the sender's grace
    /// period: a sender resumes within it), at most `capacity` of them.
    pub fn new(keep: Duration, capacity: usize) -> Self {
        EndedSessions {
            keep,
            capacity: capacity.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records that session `id`, offered by `key`, ended with `report`.
    pub fn record(&mut self, id: SessionId, key: PublicKey, report: Report, now: Instant) {
        self.expire(now);
        self.entries.insert(
            id,
            Ended {
                key,
                report,
                at: now,
            },
        );
        self.order.push_back((now, id));
        while self.entries.len() > self.capacity {
            self.pop_oldest();
        }
    }

    /// The report of session `id` if it ended within `keep` and `key`
    /// offered it. The entry stays: the replayed report may be lost too.
    pub fn report(&mut self, id: &SessionId, key: &PublicKey, now: Instant) -> Option<Report> {
        self.expire(now);
        self.entries
            .get(id)
            .filter(|e| e.key == *key)
            .map(|e| e.report.clone())
    }

    /// Forgets reports older than `keep`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(at, _)) = self.order.front() {
            if now.saturating_duration_since(at) < self.keep {
                break;
            }
            self.pop_oldest();
        }
    }

    /// How many reports are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when none is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn pop_oldest(&mut self) {
        if let Some((at, id)) = self.order.pop_front() {
            // Only the position of the entry's latest record removes it.
            if self.entries.get(&id).is_some_and(|e| e.at == at) {
                self.entries.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(delivered: u64) -> Report {
        Report {
            success: true,
            downstream_status: 0,
            delivered,
            snapshot_guid: Some(7),
            message: "stored".into(),
        }
    }

    const A: PublicKey = PublicKey([1; 32]);
    const B: PublicKey = PublicKey([2; 32]);

    #[test]
    fn the_offering_key_gets_the_report_within_keep_and_no_one_else() {
        let t = Instant::now();
        let mut e = EndedSessions::new(Duration::from_secs(60), 8);
        e.record(SessionId(1), A, report(10), t);
        assert_eq!(
            e.report(&SessionId(1), &A, t).map(|r| r.delivered),
            Some(10)
        );
        // Asked twice (the first replay may be lost too).
        assert!(e
            .report(&SessionId(1), &A, t + Duration::from_secs(59))
            .is_some());
        assert!(
            e.report(&SessionId(1), &B, t).is_none(),
            "a foreign key learns nothing"
        );
        assert!(e.report(&SessionId(2), &A, t).is_none());
        assert!(e
            .report(&SessionId(1), &A, t + Duration::from_secs(60))
            .is_none());
        assert!(e.is_empty());
    }

    #[test]
    fn the_oldest_go_first_past_the_capacity() {
        let t = Instant::now();
        let mut e = EndedSessions::new(Duration::from_secs(60), 2);
        for i in 0..3u128 {
            e.record(
                SessionId(i),
                A,
                report(i as u64),
                t + Duration::from_secs(i as u64),
            );
        }
        assert_eq!(e.len(), 2);
        assert!(e.report(&SessionId(0), &A, t).is_none());
        assert!(e.report(&SessionId(2), &A, t).is_some());
    }

    #[test]
    fn a_second_record_of_an_id_outlives_its_first_position() {
        let t = Instant::now();
        let mut e = EndedSessions::new(Duration::from_secs(10), 8);
        e.record(SessionId(1), A, report(1), t);
        e.record(SessionId(1), A, report(2), t + Duration::from_secs(5));
        let r = e.report(&SessionId(1), &A, t + Duration::from_secs(12));
        assert_eq!(r.map(|r| r.delivered), Some(2));
    }
}
