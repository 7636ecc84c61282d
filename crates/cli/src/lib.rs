//! What the two fjord binaries share, so that they behave alike: exit
//! codes and the typed [`Failure`] every subcommand returns, [`finish`]
//! (the one place an outcome becomes an exit code), `keygen`, logging set-up, reading a `FILE` argument where `-` means
//! standard input, and the link options of `send` and `serve`.
#![warn(missing_docs)]

use fjord_transport::LinkConfig;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// Exit codes of every fjord command: the one table, also in README.md
/// ("Exit codes"), which a unit test keeps in step with this module.
///
/// Code 2 is clap's: a bad command line, before any subcommand runs.
pub mod exit {
    /// Success: the stream was valid, stored or written; every job
    /// succeeded or had nothing to do; the key was written.
    pub const OK: u8 = 0;
    /// The stream (or pack) is invalid or truncated, or the receiver
    /// refused or rejected it.
    pub const INVALID_STREAM: u8 = 1;
    /// Reading the input or writing the output failed, a key could not be
    /// read or written, the peer stayed unreachable for the whole grace
    /// period, or a daemon could not start.
    pub const IO_ERROR: u8 = 3;
    /// At least one job failed or found its target diverged (`push`), or a
    /// job's last push did not succeed (`status`); the other jobs still ran.
    pub const JOB_FAILED: u8 = 4;
    /// The config file is missing or invalid, or names no such job; nothing
    /// was run.
    pub const CONFIG_ERROR: u8 = 5;
    /// Another run holds the job's lock; this run skipped it. Only this.
    pub const LOCKED: u8 = 6;
    /// Local state (`state_dir`, the job lock file, the status file, the
    /// metrics file) could not be written.
    pub const STATE_ERROR: u8 = 7;
    /// The DR node refused a push because its target was promoted there
    /// (failover): this primary is fenced off until the operator fails
    /// back.
    pub const PROMOTED: u8 = 8;

    /// The codes of a monitoring check (`fjord-recv status --check`), by the
    /// Nagios plugin convention that monitoring systems expect; 0 is
    /// [`OK`]. Only check mode uses them.
    pub mod check {
        /// Something needs a look soon.
        pub const WARNING: u8 = 1;
        /// Something needs a look now.
        pub const CRITICAL: u8 = 2;
        /// The check itself could not run.
        pub const UNKNOWN: u8 = 3;
    }

    /// Every code above, in order: the rows of README.md's table.
    pub const ALL: [u8; 8] = [
        OK,
        INVALID_STREAM,
        IO_ERROR,
        JOB_FAILED,
        CONFIG_ERROR,
        LOCKED,
        STATE_ERROR,
        PROMOTED,
    ];
}

/// Why a fjord command failed: each variant is one exit code of [`exit`].
/// Every subcommand returns `Result<(), Failure>`; `main` hands it to
/// [`finish`], which prints the error once and picks the code.
#[derive(Debug)]
pub enum Failure {
    /// The stream or pack is invalid or truncated, or the receiver refused
    /// it: [`exit::INVALID_STREAM`].
    InvalidStream(anyhow::Error),
    /// Input, output, key or network failure: [`exit::IO_ERROR`].
    Io(anyhow::Error),
    /// A job failed: [`exit::JOB_FAILED`].
    JobFailed(anyhow::Error),
    /// The config is invalid: [`exit::CONFIG_ERROR`].
    Config(anyhow::Error),
    /// Another run holds the lock: [`exit::LOCKED`].
    Locked(anyhow::Error),
    /// Local state could not be written: [`exit::STATE_ERROR`].
    State(anyhow::Error),
    /// The target was promoted on the DR node: [`exit::PROMOTED`].
    Promoted(anyhow::Error),
    /// A monitoring check found a problem, or could not run: one of
    /// [`exit::check`]'s codes.
    Check(CheckLevel, anyhow::Error),
}

/// How bad a failed monitoring check is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckLevel {
    /// [`exit::check::WARNING`].
    Warning,
    /// [`exit::check::CRITICAL`].
    Critical,
    /// [`exit::check::UNKNOWN`].
    Unknown,
}

impl Failure {
    /// The process exit code for this failure, from [`exit`].
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::InvalidStream(_) => exit::INVALID_STREAM,
            Failure::Io(_) => exit::IO_ERROR,
            Failure::JobFailed(_) => exit::JOB_FAILED,
            Failure::Config(_) => exit::CONFIG_ERROR,
            Failure::Locked(_) => exit::LOCKED,
            Failure::State(_) => exit::STATE_ERROR,
            Failure::Promoted(_) => exit::PROMOTED,
            Failure::Check(CheckLevel::Warning, _) => exit::check::WARNING,
            Failure::Check(CheckLevel::Critical, _) => exit::check::CRITICAL,
            Failure::Check(CheckLevel::Unknown, _) => exit::check::UNKNOWN,
        }
    }

    /// The error this failure carries.
    pub fn error(&self) -> &anyhow::Error {
        match self {
            Failure::InvalidStream(e)
            | Failure::Io(e)
            | Failure::JobFailed(e)
            | Failure::Config(e)
            | Failure::Locked(e)
            | Failure::State(e)
            | Failure::Promoted(e)
            | Failure::Check(_, e) => e,
        }
    }

    /// [`Failure::InvalidStream`] from any error.
    pub fn invalid_stream(e: impl Into<anyhow::Error>) -> Self {
        Failure::InvalidStream(e.into())
    }
    /// [`Failure::Io`] from any error.
    pub fn io(e: impl Into<anyhow::Error>) -> Self {
        Failure::Io(e.into())
    }
    /// [`Failure::JobFailed`] from any error.
    pub fn job_failed(e: impl Into<anyhow::Error>) -> Self {
        Failure::JobFailed(e.into())
    }
    /// [`Failure::Config`] from any error.
    pub fn config(e: impl Into<anyhow::Error>) -> Self {
        Failure::Config(e.into())
    }
    /// [`Failure::Locked`] from any error.
    pub fn locked(e: impl Into<anyhow::Error>) -> Self {
        Failure::Locked(e.into())
    }
    /// [`Failure::State`] from any error.
    pub fn state(e: impl Into<anyhow::Error>) -> Self {
        Failure::State(e.into())
    }
    /// [`Failure::Promoted`] from any error.
    pub fn promoted(e: impl Into<anyhow::Error>) -> Self {
        Failure::Promoted(e.into())
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if f.alternate() {
            write!(f, "{:#}", self.error())
        } else {
            write!(f, "{}", self.error())
        }
    }
}

/// The one place a subcommand's outcome becomes the process's: on error
/// prints `"{binary}: error: {err:#}"` once to stderr (see [`render`]);
/// returns the exit code.
pub fn finish(binary: &str, result: Result<(), Failure>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::from(exit::OK),
        Err(failure) => {
            eprintln!("{binary}: error: {}", render(failure.error()));
            std::process::ExitCode::from(failure.exit_code())
        }
    }
}

/// An error and its causes as one line, like `{err:#}`, but without a
/// cause that the message before it already shows: many error types
/// (`thiserror`'s `"{path}: {source}"`) print their source and also return
/// it from `source()`, which `{:#}` would print a second time
/// ("... (os error 2): No such file or directory (os error 2)").
pub fn render(err: &anyhow::Error) -> String {
    let mut line = String::new();
    let mut previous = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || previous.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
        previous = text;
    }
    line
}

pub mod docs;
pub mod journal;
pub mod keygen;
pub mod systemd;

/// Logs to stderr through `tracing`, filtered by `FJORD_LOG`, else the
/// usual `RUST_LOG`, else `warn`; colours only on a terminal, so log
/// files stay plain text. Under systemd with stderr going to the journal,
/// each line carries its priority and no timestamp ([`journal`]).
pub fn init_logging() {
    use std::io::IsTerminal;
    let filter = log_filter(
        std::env::var("FJORD_LOG").ok().as_deref(),
        std::env::var("RUST_LOG").ok().as_deref(),
    );
    if journal::under_journal() {
        tracing_subscriber::fmt()
            .event_format(journal::JournalFormat::default())
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
        return;
    }
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// The log filter from `FJORD_LOG`, else `RUST_LOG`, else `warn`; a
/// variable that does not parse is skipped (with a note on stderr), not
/// fatal: logging must never stop a push.
fn log_filter(fjord_log: Option<&str>, rust_log: Option<&str>) -> tracing_subscriber::EnvFilter {
    for (name, value) in [("FJORD_LOG", fjord_log), ("RUST_LOG", rust_log)] {
        let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        match tracing_subscriber::EnvFilter::try_new(value) {
            Ok(filter) => return filter,
            Err(e) => eprintln!("fjord: ignoring {name}={value:?}: {e}"),
        }
    }
    tracing_subscriber::EnvFilter::new("warn")
}

/// Keeps glibc's allocator from returning the data path's buffers to the
/// kernel after every use. Frames and block payloads are 128 KiB to 16 MiB,
/// at or above glibc's default mmap threshold, so each one would otherwise
/// be a fresh mmap: a page fault and a zeroed page per 4 KiB, every time.
/// Measured on a 114 MB stream: `fjord-send pack` 15 % faster, system time
/// halved. Call once, first thing in `main`.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only adjusts allocator parameters; it is called
        // before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
            libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        }
    }
}

/// Opens `path` for reading; `-` is standard input.
pub fn open_input(path: &Path) -> std::io::Result<Box<dyn Read>> {
    if path.as_os_str() == "-" {
        Ok(Box::new(std::io::stdin().lock()))
    } else {
        Ok(Box::new(std::fs::File::open(path)?))
    }
}

/// The link options both ends of a transfer take (`fjord-send send`,
/// `fjord-recv serve`); flatten into a command's arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct LinkArgs {
    /// Link bandwidth the QUIC windows are sized for, Mbit/s.
    #[arg(long, value_name = "MBIT", default_value_t = 1000)]
    pub link_mbit: u64,
    /// Link round-trip time the QUIC windows are sized for, ms.
    #[arg(long, value_name = "MS", default_value_t = 50)]
    pub link_rtt_ms: u64,
    /// Declare a connection dead after this long without packets
    /// (the session survives it; see --grace).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Congestion controller for what this end sends: bbr (keeps a lossy
    /// long link full) or cubic (like TCP: backs off on every loss and
    /// yields to other traffic on a shared link).
    #[arg(long, value_name = "bbr|cubic", default_value = "bbr")]
    pub congestion: fjord_transport::Congestion,
}

impl LinkArgs {
    /// The transport's link configuration for these options, with
    /// keep-alives at a quarter of the idle timeout.
    pub fn link_config(&self) -> LinkConfig {
        LinkConfig {
            bandwidth_bps: self.link_mbit * 1_000_000,
            rtt: Duration::from_millis(self.link_rtt_ms),
            congestion: self.congestion,
            ..LinkConfig::default()
        }
        .with_idle_timeout(self.idle_timeout)
    }
}

/// Parses `300`, `90s`, `10m`, `1h`, `2d`, `500ms`: the same rules as the
/// config files.
pub use fjord_config::units::parse_duration;

#[cfg(test)]
mod log_tests {
    use super::log_filter;

    #[test]
    fn fjord_log_wins_then_rust_log_then_warn() {
        assert_eq!(log_filter(Some("debug"), Some("info")).to_string(), "debug");
        assert_eq!(log_filter(None, Some("info")).to_string(), "info");
        assert_eq!(log_filter(Some(""), Some("info")).to_string(), "info");
        assert_eq!(log_filter(None, None).to_string(), "warn");
        assert_eq!(log_filter(Some("[bad"), Some("error")).to_string(), "error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_failures() -> Vec<Failure> {
        let e = || anyhow::anyhow!("x");
        vec![
            Failure::InvalidStream(e()),
            Failure::Io(e()),
            Failure::JobFailed(e()),
            Failure::Config(e()),
            Failure::Locked(e()),
            Failure::State(e()),
            Failure::Promoted(e()),
        ]
    }

    #[test]
    fn each_failure_has_its_code() {
        let codes: Vec<u8> = all_failures().iter().map(Failure::exit_code).collect();
        assert_eq!(codes, [1, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            Failure::invalid_stream(anyhow::anyhow!("x")).exit_code(),
            exit::INVALID_STREAM
        );
        assert_eq!(
            Failure::io(std::io::Error::other("x")).exit_code(),
            exit::IO_ERROR
        );
        assert_eq!(
            Failure::job_failed(anyhow::anyhow!("x")).exit_code(),
            exit::JOB_FAILED
        );
        assert_eq!(
            Failure::config(anyhow::anyhow!("x")).exit_code(),
            exit::CONFIG_ERROR
        );
        assert_eq!(
            Failure::locked(anyhow::anyhow!("x")).exit_code(),
            exit::LOCKED
        );
        assert_eq!(
            Failure::state(anyhow::anyhow!("x")).exit_code(),
            exit::STATE_ERROR
        );
        assert_eq!(
            Failure::promoted(anyhow::anyhow!("x")).exit_code(),
            exit::PROMOTED
        );
        // Every code but OK is some failure's, and no two failures share one.
        let mut from_failures = codes.clone();
        from_failures.insert(0, exit::OK);
        assert_eq!(from_failures, exit::ALL);
    }

    /// The rows of README.md's "Exit codes" table: exactly the codes in
    /// [`exit`].
    #[test]
    fn the_readme_table_lists_every_code() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"));
        let section = readme
            .split("\n### Exit codes\n")
            .nth(1)
            .expect("README.md has a '### Exit codes' section");
        let section = section.split("\n#").next().unwrap_or(section);
        let rows: Vec<u8> = section
            .lines()
            .filter_map(|l| l.strip_prefix('|'))
            .filter_map(|l| l.split('|').next())
            .filter_map(|cell| cell.trim().parse().ok())
            .collect();
        assert_eq!(rows, exit::ALL, "README.md's exit-code rows, in order");
    }

    #[derive(Debug)]
    struct Repeats(std::io::Error);
    impl std::fmt::Display for Repeats {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "key file /k: {}", self.0)
        }
    }
    impl std::error::Error for Repeats {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_the_message_already_shows_is_printed_once() {
        let io = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(Repeats(io()));
        let shown = render(&e);
        assert_eq!(shown, format!("key file /k: {}", io()));
        let e = anyhow::Error::new(Repeats(io())).context("loading the key");
        assert_eq!(
            render(&e),
            format!("loading the key: key file /k: {}", io())
        );
        let e = anyhow::Error::new(io()).context("cannot open x");
        assert_eq!(render(&e), format!("cannot open x: {}", io()));
    }
}
