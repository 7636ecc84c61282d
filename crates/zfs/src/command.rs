//! What to run: pure argv builders for every `zfs` operation fjord uses,
//! the send and receive specifications, and [`Zfs`], the executor that runs
//! them with `tokio::process`.
//!
//! Builders return the arguments after the binary (`["snapshot",
//! "tank/fs@x"]`). They do not validate; the executor validates every name
//! and argument before running anything, so nothing a config file or a
//! client sent can turn into an option (`-r`) or a snapshot range (`a%b`).

use crate::error::{display_argv, says_does_not_exist, ZfsError};
use crate::names::{validate_dataset, validate_full_snapshot, validate_snapshot_short_name};
use crate::snapshot::{
    parse_dataset_names, parse_holds, parse_property_u64, parse_property_value, parse_send_size,
    parse_snapshot_list, SnapshotInfo,
};
use std::ffi::OsString;
use std::path::PathBuf;

/// What `zfs send` should send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendKind {
    /// A full stream of one snapshot (`zfs send SNAP`).
    Full {
        /// Full snapshot name, `dataset@snap`.
        snap: String,
    },
    /// The changes between two snapshots (`zfs send -i|-I FROM TO`).
    Incremental {
        /// The base: a full snapshot name (`dataset@a`) or a bookmark
        /// (`dataset#a`). `zfs send -I` does not accept a bookmark.
        from: String,
        /// Full snapshot name, `dataset@b`.
        to: String,
        /// `-I` (every snapshot in between too) rather than `-i`.
        intermediates: bool,
    },
    /// The rest of an interrupted stream (`zfs send -t TOKEN`).
    Resume {
        /// The target's `receive_resume_token`.
        token: String,
    },
}

/// A `zfs send` to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendSpec {
    /// What to send.
    pub kind: SendKind,
    /// `-w`: send encrypted blocks as they are on disk.
    pub raw: bool,
    /// `-c`: send compressed blocks as they are on disk.
    pub compressed: bool,
    /// `-L`: allow blocks larger than 128 KiB.
    pub large_blocks: bool,
    /// `-e`: send embedded (tiny, inline) blocks as such.
    pub embedded: bool,
    /// `-p`: the dataset's properties and its snapshots' user properties
    /// (e.g. `fjord:wal_lsn`) travel with the stream.
    pub properties: bool,
}

impl SendSpec {
    /// Checks every name and the token so that the argv cannot carry an
    /// option or anything but what was meant.
    pub fn validate(&self) -> Result<(), ZfsError> {
        match &self.kind {
            SendKind::Full { snap } => {
                validate_full_snapshot(snap)?;
            }
            SendKind::Incremental {
                from,
                to,
                intermediates,
            } => {
                validate_full_snapshot(to)?;
                validate_incremental_base(from)?;
                if *intermediates && from.contains('#') {
                    return Err(ZfsError::InvalidArgument(format!(
                        "zfs send -I cannot start from the bookmark {from}: use -i (intermediates = false) or a snapshot"
                    )));
                }
            }
            SendKind::Resume { token } => validate_token(token)?,
        }
        Ok(())
    }
}

fn validate_incremental_base(from: &str) -> Result<(), ZfsError> {
    if let Some((dataset, bookmark)) = from.split_once('#') {
        validate_dataset(dataset)?;
        validate_snapshot_short_name(bookmark)?;
        Ok(())
    } else {
        validate_full_snapshot(from)?;
        Ok(())
    }
}

/// A resume token is `<version>-<hex>-<hex>-<hex>`: refuse anything else
/// before it reaches an argv (fjord-stream's token module decodes it).
fn validate_token(token: &str) -> Result<(), ZfsError> {
    let well_formed = token.starts_with(|c: char| c.is_ascii_digit())
        && token.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if well_formed {
        Ok(())
    } else {
        Err(ZfsError::InvalidArgument(
            "the resume token is not of the form N-HEX-HEX-HEX; read it again with zfs get receive_resume_token".into(),
        ))
    }
}

/// A `zfs recv` to run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecvSpec {
    /// The dataset to receive into.
    pub target: String,
    /// `-F`: roll the target back to its newest snapshot first, and destroy
    /// snapshots that the stream does not have.
    pub force: bool,
    /// `-s`: keep a partial receive so that `zfs send -t` can resume it.
    pub resumable: bool,
    /// `-u`: do not mount what was received.
    pub unmounted: bool,
    /// `-x PROP`: properties not to take from the stream.
    pub exclude_props: Vec<String>,
    /// `-o PROP=VALUE`: properties to set on the received dataset.
    pub set_props: Vec<(String, String)>,
}

impl RecvSpec {
    /// Checks the target and property names.
    pub fn validate(&self) -> Result<(), ZfsError> {
        validate_dataset(&self.target)?;
        for prop in self
            .exclude_props
            .iter()
            .chain(self.set_props.iter().map(|(k, _)| k))
        {
            validate_property_name(prop)?;
        }
        for (prop, value) in &self.set_props {
            if value.chars().any(char::is_control) {
                return Err(ZfsError::InvalidArgument(format!(
                    "the value of property {prop} contains a control character: remove it"
                )));
            }
        }
        Ok(())
    }
}

/// Property names: native ones are lower-case words, user properties have a
/// ':' (`com.example:tag`).
pub(crate) fn validate_property_name(prop: &str) -> Result<(), ZfsError> {
    let ok = prop.starts_with(|c: char| c.is_ascii_alphabetic())
        && prop
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(ZfsError::InvalidArgument(format!(
            "{prop:?} is not a ZFS property name: use names such as readonly or com.example:tag"
        )))
    }
}

/// Hold tags are free text to ZFS; fjord refuses the ones that could be
/// read as options or break log lines.
fn validate_hold_tag(tag: &str) -> Result<(), ZfsError> {
    let ok = !tag.is_empty()
        && tag.len() <= crate::names::MAX_NAME_LEN
        && !tag.starts_with('-')
        && !tag.chars().any(|c| c.is_control() || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(ZfsError::InvalidArgument(format!(
            "hold tag {tag:?} must be non-empty, at most 255 bytes, not start with '-' and have no spaces or control characters"
        )))
    }
}

fn strings<const N: usize>(args: [&str; N]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// `zfs list -H -o name DATASET`: exits 0 iff the dataset exists.
pub fn list_name_argv(dataset: &str) -> Vec<String> {
    strings(["list", "-H", "-o", "name", dataset])
}

/// `zfs list -H -p -t snapshot -o name,guid,createtxg,creation -s createtxg -d 1 DATASET`:
/// the snapshots of one dataset, in the form [`parse_snapshot_list`] reads.
pub fn list_snapshots_argv(dataset: &str) -> Vec<String> {
    strings([
        "list",
        "-H",
        "-p",
        "-t",
        "snapshot",
        "-o",
        "name,guid,createtxg,creation",
        "-s",
        "createtxg",
        "-d",
        "1",
        dataset,
    ])
}

/// `zfs list -H -p -t snapshot -o name,guid,createtxg,creation -s createtxg -d 1 DATASET...`:
/// the snapshots of several datasets in one command.
pub fn list_snapshots_of_argv(datasets: &[String]) -> Vec<String> {
    let mut argv = list_snapshots_argv("");
    argv.pop();
    argv.extend(datasets.iter().cloned());
    argv
}

/// `zfs get -H -p -o name,value -t filesystem,volume [-r] PROPERTY DATASET`:
/// one property of the dataset (and, with `recursive`, of each descendant).
pub fn get_tree_argv(property: &str, dataset: &str, recursive: bool) -> Vec<String> {
    let mut argv = strings([
        "get",
        "-H",
        "-p",
        "-o",
        "name,value",
        "-t",
        "filesystem,volume",
    ]);
    if recursive {
        argv.push("-r".into());
    }
    argv.extend([property.to_string(), dataset.to_string()]);
    argv
}

/// `zfs list -H -o name -t filesystem,volume -r DATASET`: the dataset and
/// its descendants.
pub fn list_children_argv(dataset: &str) -> Vec<String> {
    strings([
        "list",
        "-H",
        "-o",
        "name",
        "-t",
        "filesystem,volume",
        "-r",
        dataset,
    ])
}

/// `zfs get -H -p -o value PROPERTY DATASET`.
pub fn get_value_argv(property: &str, dataset: &str) -> Vec<String> {
    strings(["get", "-H", "-p", "-o", "value", property, dataset])
}

/// `zfs snapshot DATASET@SHORT`.
pub fn snapshot_argv(dataset: &str, short: &str) -> Vec<String> {
    vec!["snapshot".into(), format!("{dataset}@{short}")]
}

/// `zfs snapshot [-r] DATASET@SHORT`; `-r` snapshots the descendants too,
/// atomically (one transaction group).
pub fn snapshot_recursive_argv(dataset: &str, short: &str, recursive: bool) -> Vec<String> {
    let mut argv = strings(["snapshot"]);
    if recursive {
        argv.push("-r".into());
    }
    argv.push(format!("{dataset}@{short}"));
    argv
}

/// `zfs hold TAG SNAPSHOT`.
pub fn hold_argv(tag: &str, full_snap: &str) -> Vec<String> {
    strings(["hold", tag, full_snap])
}

/// `zfs release TAG SNAPSHOT`.
pub fn release_argv(tag: &str, full_snap: &str) -> Vec<String> {
    strings(["release", tag, full_snap])
}

/// `zfs holds -H SNAPSHOT`.
pub fn holds_argv(full_snap: &str) -> Vec<String> {
    strings(["holds", "-H", full_snap])
}

/// `zfs holds -H SNAPSHOT...`.
pub fn holds_of_argv(full_snaps: &[String]) -> Vec<String> {
    let mut argv = strings(["holds", "-H"]);
    argv.extend(full_snaps.iter().cloned());
    argv
}

/// `zfs hold TAG SNAPSHOT...`: atomic, every snapshot or none.
pub fn hold_many_argv(tag: &str, full_snaps: &[String]) -> Vec<String> {
    let mut argv = strings(["hold", tag]);
    argv.extend(full_snaps.iter().cloned());
    argv
}

/// `zfs release TAG SNAPSHOT...`.
pub fn release_many_argv(tag: &str, full_snaps: &[String]) -> Vec<String> {
    let mut argv = strings(["release", tag]);
    argv.extend(full_snaps.iter().cloned());
    argv
}

/// `zfs destroy SNAPSHOT` (never `-r`/`-R`: exactly one snapshot).
pub fn destroy_snapshot_argv(full_snap: &str) -> Vec<String> {
    strings(["destroy", full_snap])
}

/// `zfs rollback [-r] SNAPSHOT`; `-r` destroys the snapshots newer than
/// `SNAPSHOT`, without which ZFS refuses to roll back past them.
pub fn rollback_argv(full_snap: &str, destroy_later: bool) -> Vec<String> {
    let mut argv = strings(["rollback"]);
    if destroy_later {
        argv.push("-r".into());
    }
    argv.push(full_snap.into());
    argv
}

/// `zfs recv -A DATASET`: discard a partial resumable receive.
pub fn recv_abort_argv(dataset: &str) -> Vec<String> {
    strings(["recv", "-A", dataset])
}

/// `zfs send [-w] [-c] [-L] [-e] [-i|-I FROM] TO`, or `zfs send -t TOKEN`.
/// A resumed send takes no flags: the token records the original ones
/// (`largeblockok`, `compressok`, `rawok`, `embedok`) and `zfs send -t`
/// reuses them.
pub fn send_argv(spec: &SendSpec) -> Vec<String> {
    let mut argv = strings(["send"]);
    push_send_args(&mut argv, spec);
    argv
}

/// `zfs send -n -P ...`: the dry run whose `size` line estimates the
/// stream's length.
pub fn send_estimate_argv(spec: &SendSpec) -> Vec<String> {
    let mut argv = strings(["send", "-n", "-P"]);
    push_send_args(&mut argv, spec);
    argv
}

fn push_send_args(argv: &mut Vec<String>, spec: &SendSpec) {
    if let SendKind::Resume { token } = &spec.kind {
        argv.extend(["-t".to_string(), token.clone()]);
        return;
    }
    for (on, flag) in [
        (spec.raw, "-w"),
        (spec.compressed, "-c"),
        (spec.large_blocks, "-L"),
        (spec.embedded, "-e"),
        (spec.properties, "-p"),
    ] {
        if on {
            argv.push(flag.into());
        }
    }
    match &spec.kind {
        SendKind::Full { snap } => argv.push(snap.clone()),
        SendKind::Incremental {
            from,
            to,
            intermediates,
        } => {
            argv.push(if *intermediates { "-I" } else { "-i" }.into());
            argv.push(from.clone());
            argv.push(to.clone());
        }
        SendKind::Resume { .. } => {}
    }
}

/// `zfs recv [-F] [-s] [-u] [-x PROP]... [-o PROP=VALUE]... TARGET`.
pub fn recv_argv(spec: &RecvSpec) -> Vec<String> {
    let mut argv = strings(["recv"]);
    for (on, flag) in [
        (spec.force, "-F"),
        (spec.resumable, "-s"),
        (spec.unmounted, "-u"),
    ] {
        if on {
            argv.push(flag.into());
        }
    }
    for prop in &spec.exclude_props {
        argv.extend(["-x".to_string(), prop.clone()]);
    }
    for (prop, value) in &spec.set_props {
        argv.extend(["-o".to_string(), format!("{prop}={value}")]);
    }
    argv.push(spec.target.clone());
    argv
}

/// Runs `zfs`. Every method validates its arguments first, runs one
/// command with `LC_ALL=C` (so that stderr is the English that the
/// "does not exist" checks look for) and stdin closed, and turns a failure
/// into [`ZfsError::Command`] carrying `zfs`'s stderr.
#[derive(Clone, Debug)]
pub struct Zfs {
    binary: PathBuf,
}

impl Default for Zfs {
    fn default() -> Self {
        Self::new()
    }
}

/// What a finished command printed.
pub(crate) struct Output {
    pub(crate) stdout: String,
}

impl Zfs {
    /// Uses the `zfs` found on `PATH`.
    pub fn new() -> Self {
        Self::with_binary("zfs")
    }

    /// Uses the `zfs` at `path` (cron's `PATH` often lacks `/usr/sbin`).
    pub fn with_binary(path: impl Into<PathBuf>) -> Self {
        Self {
            binary: path.into(),
        }
    }

    /// The binary this runs.
    pub fn binary(&self) -> &std::path::Path {
        &self.binary
    }

    /// Where the binary is: itself if it names a path, else the first
    /// executable of that name on `PATH`. Checked at start-up so that a
    /// missing `zfs` fails there, not at the first transfer.
    pub fn locate(&self) -> Result<PathBuf, ZfsError> {
        let not_found = || ZfsError::NotFound {
            binary: self.binary.display().to_string(),
        };
        let executable = |p: &std::path::Path| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        };
        if self.binary.components().count() > 1 {
            return executable(&self.binary)
                .then(|| self.binary.clone())
                .ok_or_else(not_found);
        }
        let path = std::env::var_os("PATH").ok_or_else(not_found)?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(&self.binary))
            .find(|p| executable(p))
            .ok_or_else(not_found)
    }

    /// The command line of `args`, for messages.
    pub(crate) fn display(&self, args: &[String]) -> String {
        display_argv(&self.binary.to_string_lossy(), args)
    }

    pub(crate) fn spawn_error(&self, args: &[String], e: std::io::Error) -> ZfsError {
        if e.kind() == std::io::ErrorKind::NotFound {
            ZfsError::NotFound {
                binary: self.binary.to_string_lossy().into_owned(),
            }
        } else {
            ZfsError::Io {
                argv: self.display(args),
                source: e,
            }
        }
    }

    pub(crate) fn locale_env() -> [(OsString, OsString); 1] {
        [("LC_ALL".into(), "C".into())]
    }

    pub(crate) async fn run(&self, args: Vec<String>) -> Result<Output, ZfsError> {
        let started = std::time::Instant::now();
        let output = tokio::process::Command::new(&self.binary)
            .args(&args)
            .envs(Self::locale_env())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| self.spawn_error(&args, e))?;
        // one event per zfs invocation: counting them (and their cost)
        // is how the fixed cost of a push is measured
        tracing::debug!(
            argv = %self.display(&args),
            status = output.status.code(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "zfs"
        );
        if !output.status.success() {
            return Err(ZfsError::Command {
                argv: self.display(&args),
                status: output.status.code(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(Output {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        })
    }

    /// Runs, mapping "dataset does not exist" to `Ok(None)`.
    pub(crate) async fn run_if_exists(
        &self,
        args: Vec<String>,
    ) -> Result<Option<Output>, ZfsError> {
        match self.run(args).await {
            Ok(out) => Ok(Some(out)),
            Err(e) if e.stderr().is_some_and(says_does_not_exist) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `dataset` exists.
    pub async fn dataset_exists(&self, dataset: &str) -> Result<bool, ZfsError> {
        validate_dataset(dataset)?;
        Ok(self.run_if_exists(list_name_argv(dataset)).await?.is_some())
    }

    /// The snapshots of `dataset` (not of its children), oldest first;
    /// empty when the dataset does not exist.
    pub async fn snapshots(&self, dataset: &str) -> Result<Vec<SnapshotInfo>, ZfsError> {
        validate_dataset(dataset)?;
        match self.run_if_exists(list_snapshots_argv(dataset)).await? {
            Some(out) => parse_snapshot_list(dataset, &out.stdout),
            None => Ok(Vec::new()),
        }
    }

    /// The snapshots of each of `datasets` (in their order), oldest first,
    /// in one `zfs list`. Fails, for all, when one of them does not exist.
    pub async fn snapshots_of(
        &self,
        datasets: &[String],
    ) -> Result<Vec<Vec<SnapshotInfo>>, ZfsError> {
        if datasets.is_empty() {
            return Ok(Vec::new());
        }
        for d in datasets {
            validate_dataset(d)?;
        }
        let out = self.run(list_snapshots_of_argv(datasets)).await?;
        datasets
            .iter()
            .map(|d| parse_snapshot_list(d, &out.stdout))
            .collect()
    }

    /// `dataset` (and, with `recursive`, its descendant filesystems and
    /// volumes), parents first, each with the value of `property` (`None`
    /// for `-`), in one `zfs get`; empty when `dataset` does not exist.
    pub async fn property_tree(
        &self,
        dataset: &str,
        recursive: bool,
        property: &str,
    ) -> Result<Vec<(String, Option<String>)>, ZfsError> {
        validate_dataset(dataset)?;
        crate::command::validate_property_name(property)?;
        match self
            .run_if_exists(get_tree_argv(property, dataset, recursive))
            .await?
        {
            Some(out) => Ok(crate::snapshot::parse_name_values(dataset, &out.stdout)),
            None => Ok(Vec::new()),
        }
    }

    /// `dataset` and its descendant filesystems and volumes, parents first.
    pub async fn children(&self, dataset: &str) -> Result<Vec<String>, ZfsError> {
        validate_dataset(dataset)?;
        let out = self.run(list_children_argv(dataset)).await?;
        Ok(parse_dataset_names(dataset, &out.stdout))
    }

    /// The `receive_resume_token` of `dataset`: `None` when there is no
    /// partial receive to resume, or no such dataset.
    pub async fn resume_token(&self, dataset: &str) -> Result<Option<String>, ZfsError> {
        validate_dataset(dataset)?;
        let argv = get_value_argv("receive_resume_token", dataset);
        Ok(self
            .run_if_exists(argv)
            .await?
            .and_then(|out| parse_property_value(&out.stdout)))
    }

    /// The `written` property of `dataset`: bytes changed since its newest
    /// snapshot (non-zero on a target means someone modified it).
    pub async fn written(&self, dataset: &str) -> Result<u64, ZfsError> {
        validate_dataset(dataset)?;
        let argv = get_value_argv("written", dataset);
        let shown = self.display(&argv);
        let out = self.run(argv).await?;
        parse_property_u64(&shown, &out.stdout)
    }

    /// Takes the snapshot `dataset@short`.
    pub async fn snapshot(&self, dataset: &str, short: &str) -> Result<(), ZfsError> {
        validate_full_snapshot(&format!("{dataset}@{short}"))?;
        self.run(snapshot_argv(dataset, short)).await.map(drop)
    }

    /// Takes `dataset@short`, and with `recursive` the same snapshot of
    /// every descendant in the same transaction group (`zfs snapshot -r`).
    pub async fn snapshot_recursive(
        &self,
        dataset: &str,
        short: &str,
        recursive: bool,
    ) -> Result<(), ZfsError> {
        validate_full_snapshot(&format!("{dataset}@{short}"))?;
        self.run(snapshot_recursive_argv(dataset, short, recursive))
            .await
            .map(drop)
    }

    /// Places the hold `tag` on `full_snap`, so that it cannot be destroyed
    /// (by retention or by hand) until released.
    pub async fn hold(&self, tag: &str, full_snap: &str) -> Result<(), ZfsError> {
        validate_hold_tag(tag)?;
        validate_full_snapshot(full_snap)?;
        self.run(hold_argv(tag, full_snap)).await.map(drop)
    }

    /// Releases the hold `tag` on `full_snap`.
    pub async fn release(&self, tag: &str, full_snap: &str) -> Result<(), ZfsError> {
        validate_hold_tag(tag)?;
        validate_full_snapshot(full_snap)?;
        self.run(release_argv(tag, full_snap)).await.map(drop)
    }

    /// The hold tags on `full_snap`.
    pub async fn holds(&self, full_snap: &str) -> Result<Vec<String>, ZfsError> {
        validate_full_snapshot(full_snap)?;
        let argv = holds_argv(full_snap);
        let shown = self.display(&argv);
        let out = self.run(argv).await?;
        parse_holds(&shown, &out.stdout)
    }

    /// The holds on several snapshots at once: (full snapshot name, tag)
    /// pairs; a snapshot without holds has none. Nothing runs for an
    /// empty list.
    pub async fn holds_of(&self, full_snaps: &[String]) -> Result<Vec<(String, String)>, ZfsError> {
        if full_snaps.is_empty() {
            return Ok(Vec::new());
        }
        for s in full_snaps {
            validate_full_snapshot(s)?;
        }
        let argv = holds_of_argv(full_snaps);
        let shown = self.display(&argv);
        let out = self.run(argv).await?;
        crate::snapshot::parse_holds_of(&shown, &out.stdout)
    }

    /// Places the hold `tag` on every snapshot of `full_snaps` in one
    /// command (ZFS applies it to all or none). Nothing runs for an empty
    /// list.
    pub async fn hold_many(&self, tag: &str, full_snaps: &[String]) -> Result<(), ZfsError> {
        if full_snaps.is_empty() {
            return Ok(());
        }
        validate_hold_tag(tag)?;
        for s in full_snaps {
            validate_full_snapshot(s)?;
        }
        self.run(hold_many_argv(tag, full_snaps)).await.map(drop)
    }

    /// Releases the hold `tag` on every snapshot of `full_snaps` in one
    /// command (fails if one of them lacks the tag or is gone). Nothing
    /// runs for an empty list.
    pub async fn release_many(&self, tag: &str, full_snaps: &[String]) -> Result<(), ZfsError> {
        if full_snaps.is_empty() {
            return Ok(());
        }
        validate_hold_tag(tag)?;
        for s in full_snaps {
            validate_full_snapshot(s)?;
        }
        self.run(release_many_argv(tag, full_snaps)).await.map(drop)
    }

    /// Destroys exactly one snapshot. A name without '@' is refused before
    /// anything runs (`zfs destroy tank/fs` would destroy the dataset), and
    /// so are the '%' ranges and ',' lists `zfs destroy` would expand.
    pub async fn destroy_snapshot(&self, full_snap: &str) -> Result<(), ZfsError> {
        validate_full_snapshot(full_snap)?;
        self.run(destroy_snapshot_argv(full_snap)).await.map(drop)
    }

    /// Rolls the dataset back to `full_snap`; with `destroy_later`, the
    /// snapshots newer than it are destroyed (`-r`).
    pub async fn rollback(&self, full_snap: &str, destroy_later: bool) -> Result<(), ZfsError> {
        validate_full_snapshot(full_snap)?;
        self.run(rollback_argv(full_snap, destroy_later))
            .await
            .map(drop)
    }

    /// Discards the partial resumable receive into `dataset` (`zfs recv -A`).
    pub async fn recv_abort(&self, dataset: &str) -> Result<(), ZfsError> {
        validate_dataset(dataset)?;
        self.run(recv_abort_argv(dataset)).await.map(drop)
    }

    /// The stream length `zfs send -n -P` estimates, `None` if it printed
    /// no `size` line.
    pub async fn send_size_estimate(&self, spec: &SendSpec) -> Result<Option<u64>, ZfsError> {
        spec.validate()?;
        let out = self.run(send_estimate_argv(spec)).await?;
        Ok(parse_send_size(&out.stdout))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn locate_finds_a_path_or_names_what_is_missing() {
        assert_eq!(
            Zfs::with_binary("/bin/sh").locate().unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert!(Zfs::with_binary("sh").locate().unwrap().ends_with("sh"));
        let missing = Zfs::with_binary("/nonexistent/zfs").locate().unwrap_err();
        assert!(matches!(missing, ZfsError::NotFound { .. }), "{missing}");
        assert!(missing.to_string().contains("/nonexistent/zfs"));
        let missing = Zfs::with_binary("no-such-zfs-binary").locate().unwrap_err();
        assert!(matches!(missing, ZfsError::NotFound { .. }));
    }

    use super::*;

    fn spec(kind: SendKind) -> SendSpec {
        SendSpec {
            kind,
            raw: false,
            compressed: true,
            large_blocks: true,
            embedded: false,
            properties: false,
        }
    }

    #[test]
    fn query_argvs() {
        assert_eq!(
            list_name_argv("tank/a"),
            ["list", "-H", "-o", "name", "tank/a"]
        );
        assert_eq!(
            list_snapshots_argv("tank/a").join(" "),
            "list -H -p -t snapshot -o name,guid,createtxg,creation -s createtxg -d 1 tank/a"
        );
        assert_eq!(
            list_children_argv("tank/a").join(" "),
            "list -H -o name -t filesystem,volume -r tank/a"
        );
        assert_eq!(
            get_value_argv("receive_resume_token", "backup/a").join(" "),
            "get -H -p -o value receive_resume_token backup/a"
        );
        assert_eq!(holds_argv("tank/a@s").join(" "), "holds -H tank/a@s");
        assert_eq!(
            list_snapshots_of_argv(&["tank/a".into(), "tank/a/b".into()]).join(" "),
            "list -H -p -t snapshot -o name,guid,createtxg,creation -s createtxg -d 1 tank/a tank/a/b"
        );
        assert_eq!(
            get_tree_argv("fjord:demoted", "tank/a", true).join(" "),
            "get -H -p -o name,value -t filesystem,volume -r fjord:demoted tank/a"
        );
        assert_eq!(
            get_tree_argv("fjord:demoted", "tank/a", false).join(" "),
            "get -H -p -o name,value -t filesystem,volume fjord:demoted tank/a"
        );
    }

    #[test]
    fn change_argvs() {
        assert_eq!(snapshot_argv("tank/a", "s1"), ["snapshot", "tank/a@s1"]);
        assert_eq!(
            snapshot_recursive_argv("tank/a", "s1", true),
            ["snapshot", "-r", "tank/a@s1"]
        );
        assert_eq!(
            snapshot_recursive_argv("tank/a", "s1", false),
            ["snapshot", "tank/a@s1"]
        );
        assert_eq!(
            hold_argv("fjord", "tank/a@s1"),
            ["hold", "fjord", "tank/a@s1"]
        );
        assert_eq!(
            release_argv("fjord", "tank/a@s1"),
            ["release", "fjord", "tank/a@s1"]
        );
        assert_eq!(
            release_many_argv("fjord", &["tank/a@s1".into(), "tank/a@s2".into()]),
            ["release", "fjord", "tank/a@s1", "tank/a@s2"]
        );
        assert_eq!(destroy_snapshot_argv("tank/a@s1"), ["destroy", "tank/a@s1"]);
        assert_eq!(rollback_argv("b/a@s1", false), ["rollback", "b/a@s1"]);
        assert_eq!(rollback_argv("b/a@s1", true), ["rollback", "-r", "b/a@s1"]);
        assert_eq!(recv_abort_argv("b/a"), ["recv", "-A", "b/a"]);
    }

    #[test]
    fn send_argv_full_with_flags() {
        let mut s = spec(SendKind::Full {
            snap: "tank/a@s1".into(),
        });
        assert_eq!(send_argv(&s).join(" "), "send -c -L tank/a@s1");
        s.raw = true;
        s.embedded = true;
        s.compressed = false;
        s.large_blocks = false;
        assert_eq!(send_argv(&s).join(" "), "send -w -e tank/a@s1");
    }

    #[test]
    fn send_argv_incremental_i_and_capital_i() {
        let mut s = spec(SendKind::Incremental {
            from: "tank/a@s1".into(),
            to: "tank/a@s2".into(),
            intermediates: true,
        });
        assert_eq!(send_argv(&s).join(" "), "send -c -L -I tank/a@s1 tank/a@s2");
        s.properties = true;
        assert_eq!(
            send_argv(&s).join(" "),
            "send -c -L -p -I tank/a@s1 tank/a@s2"
        );
        s.properties = false;
        s.kind = SendKind::Incremental {
            from: "tank/a#s1".into(),
            to: "tank/a@s2".into(),
            intermediates: false,
        };
        assert_eq!(send_argv(&s).join(" "), "send -c -L -i tank/a#s1 tank/a@s2");
        assert_eq!(
            send_estimate_argv(&s).join(" "),
            "send -n -P -c -L -i tank/a#s1 tank/a@s2"
        );
    }

    #[test]
    fn send_argv_resume_has_no_flags() {
        let s = SendSpec {
            raw: true,
            embedded: true,
            properties: false,
            ..spec(SendKind::Resume {
                token: "1-abc-d0-789c".into(),
            })
        };
        assert_eq!(send_argv(&s), ["send", "-t", "1-abc-d0-789c"]);
        assert_eq!(
            send_estimate_argv(&s),
            ["send", "-n", "-P", "-t", "1-abc-d0-789c"]
        );
    }

    #[test]
    fn send_spec_validation() {
        let ok = spec(SendKind::Incremental {
            from: "tank/a#bm".into(),
            to: "tank/a@s2".into(),
            intermediates: false,
        });
        assert!(ok.validate().is_ok());
        let bookmark_with_capital_i = spec(SendKind::Incremental {
            from: "tank/a#bm".into(),
            to: "tank/a@s2".into(),
            intermediates: true,
        });
        let err = bookmark_with_capital_i.validate().unwrap_err().to_string();
        assert!(err.contains("-I cannot start from the bookmark"), "{err}");
        assert!(spec(SendKind::Full {
            snap: "tank/a".into()
        })
        .validate()
        .is_err());
        assert!(spec(SendKind::Full { snap: "-R".into() })
            .validate()
            .is_err());
        assert!(spec(SendKind::Resume { token: "-v".into() })
            .validate()
            .is_err());
        assert!(spec(SendKind::Resume {
            token: "1-a b".into()
        })
        .validate()
        .is_err());
        assert!(spec(SendKind::Resume {
            token: "1-e604ea4bf-e0-789c63a2".into()
        })
        .validate()
        .is_ok());
    }

    #[test]
    fn recv_argv_orders_flags_then_props_then_target() {
        let s = RecvSpec {
            target: "backup/oslo/home".into(),
            force: true,
            resumable: true,
            unmounted: true,
            exclude_props: vec!["mountpoint".into(), "sharenfs".into()],
            set_props: vec![("readonly".into(), "on".into())],
        };
        assert_eq!(
            recv_argv(&s).join(" "),
            "recv -F -s -u -x mountpoint -x sharenfs -o readonly=on backup/oslo/home"
        );
        assert_eq!(
            recv_argv(&RecvSpec {
                target: "b/x".into(),
                ..Default::default()
            }),
            ["recv", "b/x"]
        );
        assert!(s.validate().is_ok());
    }

    #[test]
    fn recv_spec_validation() {
        let bad_target = RecvSpec {
            target: "backup/../x".into(),
            ..Default::default()
        };
        assert!(bad_target.validate().is_err());
        let bad_prop = RecvSpec {
            target: "b/x".into(),
            exclude_props: vec!["-F".into()],
            ..Default::default()
        };
        assert!(bad_prop.validate().is_err());
        let user_prop = RecvSpec {
            target: "b/x".into(),
            set_props: vec![("com.example:role".into(), "dr copy".into())],
            ..Default::default()
        };
        assert!(user_prop.validate().is_ok());
    }

    #[test]
    fn hold_tags() {
        assert!(validate_hold_tag("fjord-home").is_ok());
        assert!(validate_hold_tag("").is_err());
        assert!(validate_hold_tag("-r").is_err());
        assert!(validate_hold_tag("a b").is_err());
    }

    // The executor's plumbing, not ZFS: a missing binary and a refused name
    // must fail before or instead of running anything.
    #[tokio::test]
    async fn missing_binary_says_what_to_install() {
        let zfs = Zfs::with_binary("/nonexistent/fjord-test/zfs");
        let err = zfs.dataset_exists("tank/a").await.unwrap_err();
        assert!(matches!(err, ZfsError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("install zfsutils-linux"));
    }

    #[tokio::test]
    async fn destroy_refuses_a_dataset_name_before_running() {
        // The binary does not exist: reaching it would give NotFound.
        let zfs = Zfs::with_binary("/nonexistent/fjord-test/zfs");
        let err = zfs.destroy_snapshot("tank/a").await.unwrap_err();
        assert!(err.to_string().contains("is not a snapshot name"), "{err}");
        let range = zfs.destroy_snapshot("tank/a@s1%s9").await.unwrap_err();
        assert!(matches!(range, ZfsError::Name(_)), "{range}");
        let list = zfs.destroy_snapshot("tank/a@s1,s2").await.unwrap_err();
        assert!(matches!(list, ZfsError::Name(_)), "{list}");
    }

    #[tokio::test]
    async fn non_zero_exit_becomes_a_command_error_with_argv() {
        // `false` stands in for a failing program; this checks the error
        // plumbing only.
        let zfs = Zfs::with_binary("false");
        let err = zfs.snapshot("tank/a", "s1").await.unwrap_err();
        match &err {
            ZfsError::Command { argv, status, .. } => {
                assert_eq!(argv, "false snapshot tank/a@s1");
                assert_eq!(*status, Some(1));
            }
            other => panic!("expected a Command error, got {other}"),
        }
    }
}
