//! A one-line progress display on a terminal: bytes, rate and ETA of each
//! running transfer. Nothing is drawn when stderr is not a terminal (cron).

use fjord_transport::client::Counters;
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Transfer {
    name: String,
    counters: Arc<Counters>,
    estimate: Option<u64>,
    started: Instant,
}

/// The running transfers, redrawn twice a second by [`Progress::spawn`].
#[derive(Clone, Default)]
pub struct Progress {
    transfers: Arc<Mutex<Vec<Transfer>>>,
}

/// Removes its transfer from the display when dropped.
pub struct ProgressEntry {
    progress: Progress,
    counters: Arc<Counters>,
}

impl Drop for ProgressEntry {
    fn drop(&mut self) {
        self.progress
            .lock()
            .retain(|t| !Arc::ptr_eq(&t.counters, &self.counters));
    }
}

/// Formats bytes with a binary unit.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// One transfer's line: `name 12.0 MiB/40.0 MiB 30% 5.1 MiB/s ETA 6s`.
pub fn render(name: &str, done: u64, estimate: Option<u64>, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = done as f64 / secs;
    let mut line = format!("{name} {}", human_bytes(done));
    if let Some(total) = estimate.filter(|t| *t > 0) {
        let pct = (done as f64 * 100.0 / total as f64).min(100.0);
        line += &format!("/{} {pct:.0}%", human_bytes(total));
        if rate > 0.0 && done < total {
            line += &format!(" ETA {:.0}s", (total - done) as f64 / rate);
        }
    }
    line + &format!(" {}/s", human_bytes(rate as u64))
}

impl Progress {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Transfer>> {
        self.transfers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shows a transfer until the returned entry is dropped.
    pub fn add(
        &self,
        name: String,
        counters: Arc<Counters>,
        estimate: Option<u64>,
    ) -> ProgressEntry {
        self.lock().push(Transfer {
            name,
            counters: counters.clone(),
            estimate,
            started: Instant::now(),
        });
        ProgressEntry {
            progress: self.clone(),
            counters,
        }
    }

    /// Redraws on stderr while `enabled` and stderr is a terminal.
    pub fn spawn(&self, enabled: bool) -> Option<tokio::task::JoinHandle<()>> {
        if !enabled || !std::io::stderr().is_terminal() {
            return None;
        }
        let me = self.clone();
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tick.tick().await;
                let line = me
                    .lock()
                    .iter()
                    .map(|t| {
                        render(
                            &t.name,
                            t.counters.acked.load(Ordering::Relaxed),
                            t.estimate,
                            t.started.elapsed(),
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(" | ");
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
            }
        }))
    }

    /// Clears the line (call after the transfers end).
    pub fn clear(handle: Option<tokio::task::JoinHandle<()>>) {
        if let Some(h) = handle {
            h.abort();
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_show_size_percentage_eta_and_rate() {
        let l = render(
            "tank/home",
            10 << 20,
            Some(40 << 20),
            Duration::from_secs(2),
        );
        assert_eq!(l, "tank/home 10.0 MiB/40.0 MiB 25% ETA 6s 5.0 MiB/s");
        let l = render("x", 512, None, Duration::from_secs(1));
        assert_eq!(l, "x 512 B 512 B/s");
    }
}
