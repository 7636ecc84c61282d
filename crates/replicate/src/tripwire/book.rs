//! The tripwire's memory of one job, `state_dir/<job>.tripwire.json`: per
//! source dataset, the history of judged pushes, the last push's shares,
//! and the alarm that waits for an operator's acknowledgement.

use super::judge::{Judgement, Sample};
use crate::report::DatasetReport;
use crate::status::{write_atomic, StatusError};
use fjord_config::textfile::escape_label_value;
pub use fjord_tripwire::page::{Alarm, Page};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A job's tripwire state, by source dataset.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Book {
    /// The job.
    pub job: String,
    /// Pages by source dataset.
    pub datasets: BTreeMap<String, Page>,
}

/// What a push's report says about one dataset, for the book.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TripwireReport {
    /// This push's measured shares.
    pub sample: Sample,
    /// The verdict.
    #[serde(flatten)]
    pub judgement: Judgement,
    /// Source-side pruning of this dataset is paused (an alarm waits).
    pub pruning_paused: bool,
}

const SUFFIX: &str = ".tripwire.json";

/// The tripwire file of `job`.
pub fn book_path(state_dir: &Path, job: &str) -> PathBuf {
    state_dir.join(format!("{job}{SUFFIX}"))
}

impl Book {
    /// Loads `job`'s book; an empty one if it has none yet.
    pub fn load(state_dir: &Path, job: &str) -> Result<Book, StatusError> {
        let path = book_path(state_dir, job);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StatusError::Corrupt { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Book {
                job: job.into(),
                datasets: BTreeMap::new(),
            }),
            Err(source) => Err(StatusError::Io { path, source }),
        }
    }

    /// Saves it atomically.
    pub fn save(&self, state_dir: &Path) -> Result<(), StatusError> {
        let path = book_path(state_dir, &self.job);
        let mut json = serde_json::to_vec_pretty(self).map_err(|source| StatusError::Corrupt {
            path: path.clone(),
            source,
        })?;
        json.push(b'\n');
        write_atomic(&path, &json).map_err(|source| StatusError::Io { path, source })
    }

    /// The history of `source` (empty if none).
    pub fn history(&self, source: &str) -> &[Sample] {
        self.datasets.get(source).map_or(&[], |p| &p.history)
    }

    /// The alarm of `source`, if one waits.
    pub fn alarm(&self, source: &str) -> Option<&Alarm> {
        self.datasets.get(source).and_then(|p| p.alarm.as_ref())
    }

    /// Records what this push's datasets measured: a trip raises the
    /// dataset's alarm (the first one stays until acknowledged); a judged
    /// push that did not trip joins the history (at most `keep`).
    pub fn record(&mut self, reports: &[DatasetReport], keep: usize) {
        for r in reports {
            let Some(t) = &r.tripwire else { continue };
            let page = self.datasets.entry(r.source.clone()).or_default();
            page.record(&t.sample, &t.judgement, keep);
        }
    }

    /// Clears the alarm of `source`, or of every dataset; returns the
    /// datasets whose alarm it cleared.
    pub fn acknowledge(&mut self, source: Option<&str>) -> Vec<String> {
        let mut cleared = Vec::new();
        for (name, page) in self.datasets.iter_mut() {
            if source.is_none_or(|s| s == name) && page.acknowledge() {
                cleared.push(name.clone());
            }
        }
        cleared
    }
}

/// Every job's book in `state_dir`, by job name.
pub fn load_all(state_dir: &Path) -> Vec<Book> {
    let mut books: Vec<Book> = std::fs::read_dir(state_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let job = name.strip_suffix(SUFFIX)?;
            (!job.starts_with('.')).then(|| Book::load(state_dir, job).ok())?
        })
        .collect();
    books.sort_by(|a, b| a.job.cmp(&b.job));
    books
}

/// The tripwire's Prometheus families: per job and dataset, whether an
/// alarm waits and the last push's two shares.
pub fn render_metrics(books: &[Book]) -> String {
    let mut out = String::new();
    type Value<'a> = &'a dyn Fn(&Page) -> Option<f64>;
    let families: [(&str, &str, Value); 3] = [
        (
            "fjord_tripwire_tripped",
            "1 while a ransomware tripwire alarm waits for `fjord-send tripwire ack`.",
            &|p| Some(if p.alarm.is_some() { 1.0 } else { 0.0 }),
        ),
        (
            "fjord_tripwire_incompressible_ratio",
            "Share of the last push's new block bytes that are incompressible.",
            &|p| p.last.as_ref().and_then(|s| s.incompressible),
        ),
        (
            "fjord_tripwire_rewritten_ratio",
            "Share of the last push's block bytes that rewrite files existing at the base snapshot.",
            &|p| p.last.as_ref().and_then(|s| s.rewritten),
        ),
    ];
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for book in books {
            for (dataset, page) in &book.datasets {
                if let Some(v) = value(page) {
                    let _ = writeln!(
                        out,
                        "{name}{{job=\"{}\",dataset=\"{}\"}} {v}",
                        escape_label_value(&book.job),
                        escape_label_value(dataset)
                    );
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tripwire::Verdict;

    fn report(source: &str, verdict: Verdict, reason: &str, i: f64) -> DatasetReport {
        let mut r = DatasetReport::new("home", source, "backup/x");
        r.tripwire = Some(TripwireReport {
            sample: Sample {
                time: 7,
                snapshot: "fjord_x".into(),
                write_bytes: 1 << 30,
                incompressible: Some(i),
                rewritten: None,
            },
            judgement: Judgement {
                verdict,
                baseline_incompressible: None,
                baseline_rewritten: None,
                reason: reason.into(),
            },
            pruning_paused: false,
        });
        r
    }

    #[test]
    fn trips_raise_alarms_history_is_bounded_ack_clears() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = Book::load(dir.path(), "home").unwrap();
        for _ in 0..5 {
            book.record(&[report("tank/a", Verdict::Normal, "ok", 0.1)], 3);
        }
        book.record(
            &[report("tank/a", Verdict::NotJudged, "under min_bytes", 0.9)],
            3,
        );
        assert_eq!(book.history("tank/a").len(), 3);
        book.record(&[report("tank/a", Verdict::Tripped, "first", 1.0)], 3);
        book.record(&[report("tank/a", Verdict::Tripped, "second", 1.0)], 3);
        assert_eq!(
            book.alarm("tank/a").map(|a| a.reason.as_str()),
            Some("first")
        );
        assert_eq!(book.history("tank/a").len(), 3);
        book.save(dir.path()).unwrap();
        let mut again = Book::load(dir.path(), "home").unwrap();
        assert_eq!(again, book);
        let text = render_metrics(&load_all(dir.path()));
        assert!(
            text.contains("fjord_tripwire_tripped{job=\"home\",dataset=\"tank/a\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "fjord_tripwire_incompressible_ratio{job=\"home\",dataset=\"tank/a\"} 1\n"
            ),
            "{text}"
        );
        assert!(!text.contains("fjord_tripwire_rewritten_ratio{"), "{text}");
        assert_eq!(again.acknowledge(Some("tank/b")), Vec::<String>::new());
        assert_eq!(again.acknowledge(None), vec!["tank/a".to_string()]);
        assert!(again.alarm("tank/a").is_none());
        assert!(render_metrics(&[again]).contains("dataset=\"tank/a\"} 0\n"));
    }
}
