//! Progress bars on a terminal (indicatif): one bar per running transfer,
//! bytes acknowledged by the DR node out of `zfs send -nP`'s estimate, the
//! rate and the ETA. Nothing is drawn when stderr is not a terminal
//! (cron, systemd) or when the caller disables it (`--json`, `--dry-run`).

use fjord_transport::client::Counters;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A bar with a known total: `tank/home [####    ] 10.0 MiB/40.0 MiB 5.0 MiB/s ETA 6s`.
const WITH_TOTAL: &str =
    "{prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}";
/// Without an estimate (`zfs send -nP` gave none): bytes and rate only.
const WITHOUT_TOTAL: &str = "{prefix} {binary_bytes} {binary_bytes_per_sec}";

/// The style of a bar, from whether the transfer's size is known.
fn style(estimate: Option<u64>) -> ProgressStyle {
    let template = if estimate.is_some() {
        WITH_TOTAL
    } else {
        WITHOUT_TOTAL
    };
    // Both templates are constants checked by the tests.
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#>-")
}

/// Each running transfer's bar and the counters it follows.
type Bars = Vec<(ProgressBar, Arc<Counters>)>;

/// The running transfers' bars, updated twice a second by
/// [`Progress::spawn`].
#[derive(Clone)]
pub struct Progress {
    multi: MultiProgress,
    bars: Arc<Mutex<Bars>>,
}

/// Removes its transfer's bar when dropped.
pub struct ProgressEntry {
    progress: Progress,
    bar: ProgressBar,
    counters: Arc<Counters>,
}

impl Drop for ProgressEntry {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
        self.progress
            .lock()
            .retain(|(_, c)| !Arc::ptr_eq(c, &self.counters));
        self.progress.multi.remove(&self.bar);
    }
}

impl Progress {
    /// Bars drawn on stderr when `enabled` and stderr is a terminal;
    /// otherwise kept but never drawn.
    pub fn new(enabled: bool) -> Progress {
        let target = if enabled && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Progress::with_target(target)
    }

    fn with_target(target: ProgressDrawTarget) -> Progress {
        Progress {
            multi: MultiProgress::with_draw_target(target),
            bars: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bars> {
        self.bars.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shows a transfer of about `estimate` bytes until the returned entry
    /// is dropped.
    pub fn add(
        &self,
        name: String,
        counters: Arc<Counters>,
        estimate: Option<u64>,
    ) -> ProgressEntry {
        let bar = match estimate {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::no_length(),
        };
        bar.set_style(style(estimate));
        bar.set_prefix(name);
        let bar = self.multi.add(bar);
        self.lock().push((bar.clone(), counters.clone()));
        ProgressEntry {
            progress: self.clone(),
            bar,
            counters,
        }
    }

    /// Moves every bar to its transfer's acknowledged bytes.
    fn refresh(&self) {
        for (bar, counters) in self.lock().iter() {
            bar.set_position(counters.acked.load(Ordering::Relaxed));
        }
    }

    /// Updates the bars twice a second until the handle is given to
    /// [`Progress::clear`]; `None` when nothing is drawn.
    pub fn spawn(&self) -> Option<tokio::task::JoinHandle<()>> {
        if self.multi.is_hidden() {
            return None;
        }
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                me.refresh();
            }
        }))
    }

    /// Stops updating and clears the bars (call after the transfers end).
    pub fn clear(&self, handle: Option<tokio::task::JoinHandle<()>>) {
        if let Some(h) = handle {
            h.abort();
        }
        let _ = self.multi.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_templates_parse() {
        assert!(ProgressStyle::with_template(WITH_TOTAL).is_ok());
        assert!(ProgressStyle::with_template(WITHOUT_TOTAL).is_ok());
    }

    #[test]
    fn a_bar_per_transfer_follows_the_acknowledged_bytes_and_goes_when_dropped() {
        let p = Progress::with_target(ProgressDrawTarget::hidden());
        let a = Arc::new(Counters::default());
        let b = Arc::new(Counters::default());
        let ea = p.add("tank/a".into(), a.clone(), Some(40 << 20));
        let eb = p.add("tank/b".into(), b.clone(), None);
        a.acked.store(10 << 20, Ordering::Relaxed);
        b.acked.store(512, Ordering::Relaxed);
        p.refresh();
        assert_eq!(ea.bar.position(), 10 << 20);
        assert_eq!(ea.bar.length(), Some(40 << 20));
        assert_eq!(eb.bar.position(), 512);
        assert_eq!(eb.bar.length(), None);
        assert_eq!(ea.bar.prefix(), "tank/a");
        drop(ea);
        assert_eq!(p.lock().len(), 1);
        assert_eq!(p.lock()[0].0.prefix(), "tank/b");
        drop(eb);
        assert!(p.lock().is_empty());
    }

    #[test]
    fn nothing_is_drawn_off_a_terminal_or_when_disabled() {
        // Tests run with stderr captured, not a terminal.
        assert!(Progress::new(true).spawn().is_none());
        assert!(Progress::new(false).spawn().is_none());
    }
}
