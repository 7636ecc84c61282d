//! Log lines for journald: under systemd, when stderr is the journal's
//! stream (`JOURNAL_STREAM` names stderr's device and inode), each line
//! starts with the sd-daemon priority prefix (`<3>` error, `<4>` warning,
//! `<6>` info, `<7>` debug and trace) and carries neither colours nor a
//! timestamp (journald adds its own); `journalctl -p warning` then shows
//! exactly the warnings and errors.
//!
//! Why the prefix on stderr and not `tracing-journald` (the journal's
//! native socket): the binaries also write plain lines to stderr
//! (`eprintln!`: the start-up line, session results), which must stay in
//! order with the log and keep working when the same unit's stderr is a
//! file or a pipe; the native protocol would split them into two streams
//! and need the journal socket inside the unit's sandbox. The prefix costs
//! a few bytes a line, no dependency, and falls back to plain stderr by
//! itself.

use std::fmt::Write as _;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Format, Full, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The sd-daemon priority of a `tracing` level (syslog's numbers).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// True when `journal_stream` (the value of `JOURNAL_STREAM`,
/// `DEVICE:INODE` in decimal) names the file `stderr` is, given as its
/// (device, inode); systemd sets it for a unit whose stderr goes to the
/// journal, and a child whose stderr was redirected no longer matches.
pub fn is_journal_stream(journal_stream: Option<&str>, stderr: Option<(u64, u64)>) -> bool {
    let (Some(value), Some((dev, ino))) = (journal_stream, stderr) else {
        return false;
    };
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>() == Ok(dev) && i.parse::<u64>() == Ok(ino)
}

/// stderr's (device, inode), or `None` if it cannot be read.
pub fn stderr_identity() -> Option<(u64, u64)> {
    // SAFETY: fstat writes into the zeroed struct it is given and reads
    // nothing else; fd 2 may be closed, which it reports as an error.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::fstat(2, &mut st) };
    #[allow(clippy::unnecessary_cast)] // the field types vary by target
    (rc == 0).then_some((st.st_dev as u64, st.st_ino as u64))
}

/// True when this process logs to the journal through stderr.
pub fn under_journal() -> bool {
    is_journal_stream(
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
        stderr_identity(),
    )
}

/// `text` (one event, possibly of several lines) with `<priority>` in
/// front of each line, each line ended by a newline; the first line's
/// leading blanks (tracing pads ` WARN`) are dropped.
pub fn prefix_lines(priority: u8, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for (i, line) in text.lines().enumerate() {
        let line = if i == 0 { line.trim_start() } else { line };
        let _ = writeln!(out, "<{priority}>{line}");
    }
    out
}

/// tracing's plain format (target, spans, fields; no time, no colours),
/// each line with the event's priority prefix.
pub struct JournalFormat {
    inner: Format<Full, ()>,
}

impl Default for JournalFormat {
    fn default() -> Self {
        JournalFormat {
            inner: tracing_subscriber::fmt::format()
                .without_time()
                .with_ansi(false),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JournalFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut text = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut text), event)?;
        writer.write_str(&prefix_lines(priority(*event.metadata().level()), &text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::DEBUG), 7);
        assert_eq!(priority(Level::TRACE), 7);
    }

    #[test]
    fn the_journal_is_recognised_only_by_stderrs_device_and_inode() {
        assert!(is_journal_stream(Some("8:12345"), Some((8, 12345))));
        assert!(!is_journal_stream(Some("8:12345"), Some((8, 12346))));
        assert!(!is_journal_stream(Some("9:12345"), Some((8, 12345))));
        assert!(!is_journal_stream(None, Some((8, 12345))));
        assert!(!is_journal_stream(Some("8:12345"), None));
        assert!(!is_journal_stream(Some("garbage"), Some((8, 12345))));
        assert!(!is_journal_stream(Some(""), Some((0, 0))));
    }

    #[test]
    fn every_line_of_an_event_carries_the_prefix() {
        assert_eq!(prefix_lines(4, "one\ntwo\n"), "<4>one\n<4>two\n");
        assert_eq!(prefix_lines(3, "alone"), "<3>alone\n");
        assert_eq!(prefix_lines(4, " WARN x\n  more"), "<4>WARN x\n<4>  more\n");
    }

    /// A writer the subscriber formats into, for reading back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_formatter_writes_priority_prefixed_plain_lines() {
        let out = Captured::default();
        let sink = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JournalFormat::default())
            .with_max_level(Level::TRACE)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(dataset = "tank/a", "receive failed");
            tracing::warn!("refused by policy");
            tracing::info!("listening");
            tracing::debug!("detail");
        });
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("<3>ERROR "), "{text}");
        assert!(lines[0].contains("receive failed") && lines[0].contains("dataset=\"tank/a\""));
        assert!(lines[1].starts_with("<4>WARN ") && lines[1].contains("refused by policy"));
        assert!(lines[2].starts_with("<6>") && lines[2].contains("listening"));
        assert!(lines[3].starts_with("<7>") && lines[3].contains("detail"));
        // No colour escapes and no timestamp (journald adds its own).
        assert!(!text.contains('\u{1b}'), "{text:?}");
        assert!(!text.contains("Z "), "{text}");
    }
}
