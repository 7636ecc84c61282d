//! [`ZfsError`]: everything that can go wrong running `zfs`.

use crate::names::NameError;
use thiserror::Error;

/// Why a `zfs` operation failed. Messages quote the command line and
/// `zfs`'s own words, so the operator can rerun or look it up.
#[derive(Debug, Error)]
pub enum ZfsError {
    /// `zfs` ran and exited non-zero (or was killed).
    #[error("{argv} failed ({}): {}", describe_status(*status), stderr.trim())]
    Command {
        /// The command line, for the message.
        argv: String,
        /// The exit code, `None` when killed by a signal.
        status: Option<i32>,
        /// What `zfs` wrote to stderr.
        stderr: String,
    },
    /// The `zfs` binary is not there.
    #[error(
        "cannot run {binary}: not found; install zfsutils-linux or set the path to the zfs binary"
    )]
    NotFound {
        /// The binary that was looked for.
        binary: String,
    },
    /// Starting `zfs`, or talking to it through its pipes, failed.
    #[error("{argv}: {source}")]
    Io {
        /// The command line, for the message.
        argv: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `zfs` printed something this crate does not understand.
    #[error("unexpected output from {argv}: {detail} (line {line:?}); is this OpenZFS 2.x?")]
    Parse {
        /// The command line whose output this was.
        argv: String,
        /// The offending line.
        line: String,
        /// What is wrong with it.
        detail: String,
    },
    /// A name or argument was refused before running anything.
    #[error(transparent)]
    Name(#[from] NameError),
    /// An argument other than a name was refused before running anything.
    #[error("refused to run zfs: {0}")]
    InvalidArgument(String),
}

fn describe_status(status: Option<i32>) -> String {
    match status {
        Some(code) => format!("exit {code}"),
        None => "killed by a signal".into(),
    }
}

impl ZfsError {
    /// The stderr of a failed command, if this is one.
    pub fn stderr(&self) -> Option<&str> {
        match self {
            ZfsError::Command { stderr, .. } => Some(stderr),
            _ => None,
        }
    }

    /// Whether `zfs` said the dataset (or snapshot) does not exist.
    pub fn is_does_not_exist(&self) -> bool {
        self.stderr().is_some_and(says_does_not_exist)
    }
}

/// Whether a `zfs` stderr says "dataset does not exist". The executor runs
/// `zfs` with `LC_ALL=C` so that this English text is what it prints.
pub(crate) fn says_does_not_exist(stderr: &str) -> bool {
    stderr.contains("dataset does not exist")
}

/// An argv as one line for messages: arguments that a shell would split or
/// expand are single-quoted.
pub fn display_argv(binary: &str, args: &[String]) -> String {
    std::iter::once(binary)
        .chain(args.iter().map(String::as_str))
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:/@#%=,+".contains(c));
            if plain {
                a.to_string()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_error_quotes_argv_exit_and_trimmed_stderr() {
        let e = ZfsError::Command {
            argv: "zfs snapshot tank/fs@x".into(),
            status: Some(1),
            stderr: "cannot create snapshot 'tank/fs@x': dataset already exists\n".into(),
        };
        assert_eq!(
            e.to_string(),
            "zfs snapshot tank/fs@x failed (exit 1): cannot create snapshot 'tank/fs@x': dataset already exists"
        );
        let killed = ZfsError::Command {
            argv: "zfs send tank/fs@x".into(),
            status: None,
            stderr: String::new(),
        };
        assert!(killed.to_string().contains("(killed by a signal)"));
    }

    #[test]
    fn not_found_tells_what_to_install() {
        let e = ZfsError::NotFound {
            binary: "zfs".into(),
        };
        assert!(e
            .to_string()
            .contains("install zfsutils-linux or set the path"));
    }

    #[test]
    fn does_not_exist_is_recognised_from_real_stderr() {
        let e = ZfsError::Command {
            argv: "zfs list -H -o name tank/nope".into(),
            status: Some(1),
            stderr: "cannot open 'tank/nope': dataset does not exist\n".into(),
        };
        assert!(e.is_does_not_exist());
        let other = ZfsError::Command {
            argv: "zfs list".into(),
            status: Some(1),
            stderr: "cannot open 'tank': pool I/O is currently suspended\n".into(),
        };
        assert!(!other.is_does_not_exist());
    }

    #[test]
    fn argv_display_quotes_only_what_needs_it() {
        let args = vec!["set".to_string(), "a b".into(), "it's".into(), "".into()];
        assert_eq!(display_argv("zfs", &args), r"zfs set 'a b' 'it'\''s' ''");
    }
}
