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
        "cannot run {binary}: not found; install zfsutils-linux (the zfs command must be on the PATH)"
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

    /// Whether `zfs hold` failed because the snapshot already carries a
    /// hold with this tag (`EZFS_REFTAG_HOLD`). With several snapshots
    /// (`zfs hold TAG A B`) nothing was held: the hold is atomic.
    pub fn is_hold_exists(&self) -> bool {
        self.says(HOLD_EXISTS)
    }

    /// Whether `zfs release` failed because the snapshot carries no hold
    /// with this tag (`EZFS_REFTAG_RELE`).
    pub fn is_no_such_hold(&self) -> bool {
        self.says(NO_SUCH_HOLD)
    }

    /// Whether `zfs` said the dataset (or pool) is busy (`EBUSY`): in
    /// use by a mount, a running receive, a clone being promoted. Asking
    /// again later may succeed.
    pub fn is_dataset_busy(&self) -> bool {
        self.says(DATASET_BUSY) || self.says(POOL_OR_DATASET_BUSY)
    }

    /// Whether `zfs destroy` refused a snapshot because it is held (by
    /// any tag); `zfs holds` names the holders.
    pub fn is_snapshot_held(&self) -> bool {
        self.says(SNAPSHOT_HELD)
    }

    /// Whether this is a failed command whose stderr contains `words`.
    fn says(&self, words: &str) -> bool {
        self.stderr().is_some_and(|e| e.contains(words))
    }
}

// What OpenZFS prints, in its own words. The `zfs` CLI reports errors only
// as text, so this is the one place that reads them; the executor runs
// `zfs` with `LC_ALL=C` so that these English texts are what it prints.
// libzfs prints "ACTION: DESCRIPTION", the description from
// `libzfs_error_description` (lib/libzfs/libzfs_util.c) or an aux text.

/// `EZFS_REFTAG_HOLD`: "cannot hold snapshot 'tank/fs@a': tag already
/// exists on this dataset".
const HOLD_EXISTS: &str = "tag already exists on this dataset";
/// `EZFS_REFTAG_RELE`: "cannot release hold from snapshot 'tank/fs@a': no
/// such tag on this dataset".
const NO_SUCH_HOLD: &str = "no such tag on this dataset";
/// `zfs_standard_error` for `EBUSY`: "cannot destroy 'tank/fs': dataset
/// is busy".
const DATASET_BUSY: &str = "dataset is busy";
/// `EZFS_BUSY` without an aux text: "...: pool or dataset is busy".
const POOL_OR_DATASET_BUSY: &str = "pool or dataset is busy";
/// `zfs_destroy_snaps_nvl` for `EBUSY` with holds: "cannot destroy
/// snapshot tank/fs@a: it's being held. Run 'zfs holds -r tank/fs@a' to
/// see holders."
const SNAPSHOT_HELD: &str = "it's being held";

/// Whether a `zfs` stderr says "dataset does not exist" (see above).
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
            .contains("install zfsutils-linux (the zfs command must be on the PATH)"));
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

    fn failed(argv: &str, stderr: &str) -> ZfsError {
        ZfsError::Command {
            argv: argv.into(),
            status: Some(1),
            stderr: stderr.into(),
        }
    }

    /// Each predicate against OpenZFS's own messages (libzfs_dataset.c's
    /// actions, libzfs_util.c's descriptions), and against the others'.
    #[test]
    fn predicates_recognise_real_openzfs_stderr_and_nothing_else() {
        let hold_exists = failed(
            "zfs hold fjord tank/fs@a",
            "cannot hold snapshot 'tank/fs@a': tag already exists on this dataset\n",
        );
        // `zfs hold TAG A B` reports each snapshot that failed.
        let hold_many_exists = failed(
            "zfs hold fjord tank/fs@a tank/fs@b",
            "cannot hold snapshot 'tank/fs@b': tag already exists on this dataset\n",
        );
        let no_such_hold = failed(
            "zfs release fjord tank/fs@a",
            "cannot release hold from snapshot 'tank/fs@a': no such tag on this dataset\n",
        );
        let busy = failed(
            "zfs destroy tank/fs@a",
            "cannot destroy snapshot tank/fs@a: dataset is busy\n",
        );
        let pool_busy = failed(
            "zfs rollback -r tank/fs@a",
            "cannot rollback 'tank/fs': pool or dataset is busy\n",
        );
        let held = failed(
            "zfs destroy tank/fs@a",
            "cannot destroy snapshot tank/fs@a: it's being held. Run 'zfs holds -r tank/fs@a' to see holders.\n",
        );
        let missing = failed(
            "zfs hold fjord tank/fs@nope",
            "cannot hold snapshot 'tank/fs@nope': dataset does not exist\n",
        );
        let exists = failed(
            "zfs snapshot tank/fs@a",
            "cannot create snapshot 'tank/fs@a': dataset already exists\n",
        );
        type Pred = fn(&ZfsError) -> bool;
        let preds: [(&str, Pred); 5] = [
            ("hold_exists", ZfsError::is_hold_exists),
            ("no_such_hold", ZfsError::is_no_such_hold),
            ("dataset_busy", ZfsError::is_dataset_busy),
            ("snapshot_held", ZfsError::is_snapshot_held),
            ("does_not_exist", ZfsError::is_does_not_exist),
        ];
        let cases: [(&ZfsError, &[&str]); 8] = [
            (&hold_exists, &["hold_exists"]),
            (&hold_many_exists, &["hold_exists"]),
            (&no_such_hold, &["no_such_hold"]),
            (&busy, &["dataset_busy"]),
            (&pool_busy, &["dataset_busy"]),
            (&held, &["snapshot_held"]),
            (&missing, &["does_not_exist"]),
            (&exists, &[]),
        ];
        for (e, expected) in cases {
            for (name, pred) in preds {
                assert_eq!(pred(e), expected.contains(&name), "{name} on {e}");
            }
        }
        // Only a failed command has words to read.
        let not_found = ZfsError::NotFound {
            binary: "zfs".into(),
        };
        assert!(!not_found.is_hold_exists() && !not_found.is_dataset_busy());
    }

    #[test]
    fn argv_display_quotes_only_what_needs_it() {
        let args = vec!["set".to_string(), "a b".into(), "it's".into(), "".into()];
        assert_eq!(display_argv("zfs", &args), r"zfs set 'a b' 'it'\''s' ''");
    }
}
