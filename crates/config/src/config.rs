//! The sender's and the receiver's config files ([`SendConfig`],
//! [`RecvConfig`]), loaded and checked as a whole so that a bad file fails
//! at start-up with the file, the key and what to do, not halfway through
//! a job.
//!
//! Unknown keys are refused: a misspelt `snapshot_prefx` silently falling
//! back to its default would be worse than an error.

use crate::retention::Retention;
use crate::units::{parse_bwlimit, parse_duration, parse_size};
use fjord_zfs::command::{RecvSpec, SendKind, SendSpec};
use fjord_zfs::names::{is_within_prefix, validate_dataset, validate_snapshot_short_name};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use thiserror::Error;

/// Why a config file was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or a key has the wrong type or is unknown or missing.
    #[error("config file {}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML parser's message (with line, column and key).
        message: String,
    },
    /// A value is well-formed TOML but not acceptable.
    #[error("config file {}: {key}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, such as `job[2].target_dataset` (jobs counted from 1).
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
}

fn default_true() -> bool {
    true
}
fn default_prefix() -> String {
    "fjord".into()
}
fn default_parallelism() -> usize {
    2
}
fn default_max_concurrent() -> usize {
    4
}

/// `fjord-send push`'s config (`/etc/fjord/send.toml`). See the crate docs
/// for a full example.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendConfig {
    /// This sender's private key file.
    pub key: PathBuf,
    /// Where job locks and status files live.
    pub state_dir: PathBuf,
    /// Where to write Prometheus metrics (node-exporter's textfile
    /// collector), if anywhere.
    #[serde(default)]
    pub metrics_file: Option<PathBuf>,
    /// The jobs, in file order (`[[job]]`).
    #[serde(rename = "job", default)]
    pub jobs: Vec<Job>,
}

/// Snapshot retention on both ends; a side without a table never prunes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// `[job.retention.source]`: prune fjord's snapshots on the source.
    #[serde(default)]
    pub source: Option<Retention>,
    /// `[job.retention.target]`: prune fjord's snapshots on the target.
    #[serde(default)]
    pub target: Option<Retention>,
}

/// A job's congestion controller (see `fjord_transport::Congestion`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CongestionChoice {
    /// CUBIC: backs off on every loss, like TCP.
    Cubic,
    /// BBR, the default: keeps a lossy long link full (measured in the
    /// lab's WAN matrix; README "The WAN matrix").
    #[default]
    Bbr,
}

/// One `[[job]]`: snapshot `source` (and, if `recursive`, its
/// descendants) and replicate it to each of its targets ([`Job::targets`]):
/// `target_dataset` on `target_host`, or each `[[job.target]]` table; a
/// job with neither is snapshot-only.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// The job's name (`[A-Za-z0-9_-]+`): names its lock, status and
    /// metrics.
    pub name: String,
    /// The dataset to replicate.
    pub source: String,
    /// Also replicate the descendants of `source`.
    #[serde(default)]
    pub recursive: bool,
    /// The one-target shorthand: the receiver, `host:port` (empty when not
    /// given; see [`Job::targets`]).
    #[serde(default)]
    pub target_host: String,
    /// The shorthand's receiver's public key (the transport parses it).
    #[serde(default)]
    pub target_key: String,
    /// The shorthand's target: where `source` lands; its descendants land
    /// below it.
    #[serde(default)]
    pub target_dataset: String,
    /// `[[job.target]]`: several DR nodes (fan-out). Not with the
    /// shorthand; use [`Job::targets`], which gives either form.
    #[serde(rename = "target", default)]
    pub target_tables: Vec<crate::targets::Target>,
    /// fjord's snapshots are `{snapshot_prefix}_{UTC time}` (default `fjord`).
    #[serde(default = "default_prefix")]
    pub snapshot_prefix: String,
    /// Send with `-I` (every snapshot in between, the default) or `-i`.
    #[serde(default = "default_true")]
    pub intermediates: bool,
    /// Datasets replicated at once (default 2).
    #[serde(default = "default_parallelism")]
    pub parallelism: usize,
    /// Bandwidth limit, bytes per second, from `"50M"` (K, M, G and T are
    /// powers of 1024); `None` for no limit.
    #[serde(default, deserialize_with = "de_bwlimit")]
    pub bwlimit: Option<u64>,
    /// `zfs send -w` (default false).
    #[serde(default)]
    pub raw: bool,
    /// `zfs send -c` (default true).
    #[serde(default = "default_true")]
    pub compressed: bool,
    /// `zfs send -L` (default true).
    #[serde(default = "default_true")]
    pub large_blocks: bool,
    /// Congestion controller for the transfer: `"bbr"` (default: keeps a
    /// lossy long link full) or `"cubic"` (like TCP, yields to other
    /// traffic on a shared link).
    #[serde(default)]
    pub congestion: CongestionChoice,
    /// Pack the stream on the wire (fjord-pack: BLAKE3 dedup within the
    /// stream, adaptive zstd); default true.
    #[serde(default = "default_true")]
    pub pack: bool,
    /// How long a broken link may stay down before the transfer is given
    /// up, from `"5m"` (s, m, h, d); `None` for the transport's default.
    #[serde(default, deserialize_with = "de_duration")]
    pub grace: Option<Duration>,
    /// How long the link may be silent before it counts as broken, from
    /// `"30s"`; `None` for the transport's default.
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_timeout: Option<Duration>,
    /// `zfs send -p` (default false): the source's properties and its
    /// snapshots' user properties (what the hooks recorded, such as
    /// `fjord:wal_lsn`) reach the DR node, which still forces its inert
    /// set; `fjord-recv promote` then restores the primary's mountpoint.
    #[serde(default)]
    pub properties: bool,
    /// Snapshot retention.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Commands and database hooks around the snapshot (`[job.hooks]`).
    #[serde(default)]
    pub hooks: crate::hooks::HooksConfig,
    /// The ransomware tripwire (`[job.tripwire]`).
    #[serde(default)]
    pub tripwire: crate::tripwire::TripwireConfig,
}

impl Job {
    /// Where the source dataset `source_child` (`source` itself or one of
    /// its descendants) lands on the job's first target: `tank/home/a/b` →
    /// `backup/oslo/home/a/b`. `None` if `source_child` is not within
    /// `source`, the mapped name is not a valid dataset name (too long,
    /// say), or the job has no target.
    pub fn target_for(&self, source_child: &str) -> Option<String> {
        target_for(self, source_child)
    }

    /// The DR nodes this job replicates to, in config order; empty for a
    /// snapshot-only job. See [`crate::targets`].
    pub fn targets(&self) -> Vec<crate::targets::Target> {
        crate::targets::targets(self)
    }

    /// The `zfs send` flags of this job applied to `kind`.
    pub fn send_spec(&self, kind: SendKind) -> SendSpec {
        SendSpec {
            kind,
            raw: self.raw,
            compressed: self.compressed,
            large_blocks: self.large_blocks,
            // Not configurable: without -e, embedded blocks travel as
            // ordinary writes, which every receiving pool accepts.
            embedded: false,
            properties: self.properties,
        }
    }
}

/// See [`Job::target_for`].
pub fn target_for(job: &Job, source_child: &str) -> Option<String> {
    job.targets().first()?.target_for(&job.source, source_child)
}

/// `[recv]` of the receiver's config: the `zfs recv` flags.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecvOptions {
    /// `-s` (default true): keep partial receives so that they resume.
    #[serde(default = "default_true")]
    pub resumable: bool,
    /// `-u`: always on (nothing received is mounted by the receive);
    /// `false` is refused.
    #[serde(default = "default_true")]
    pub unmounted: bool,
    /// `-x PROP` for each, added to the forced set ([`EXCLUDED_PROPS`]).
    #[serde(default)]
    pub exclude_props: Vec<String>,
    /// `-o PROP=VALUE` for each, added to the forced set ([`INERT_PROPS`]).
    #[serde(default)]
    pub set_props: BTreeMap<String, String>,
    /// Where received datasets would mount: each gets
    /// `mountpoint=ROOT/<dataset>`. Without it the stream's mountpoint is
    /// excluded and the dataset inherits its DR parent's.
    #[serde(default)]
    pub mountpoint_root: Option<PathBuf>,
    /// Properties taken out of the forced inert set, so that the stream's
    /// value (or `set_props`) applies: loosening the DR node's defaults,
    /// one property at a time, on purpose.
    #[serde(default)]
    pub unforce: Vec<String>,
}

/// Properties every receive sets, whatever the stream carries, so that a
/// received dataset is inert: never mounted by itself, no setuid or device
/// files, not shared, not writable.
pub const INERT_PROPS: &[(&str, &str)] = &[
    ("canmount", "noauto"),
    ("setuid", "off"),
    ("devices", "off"),
    ("sharenfs", "off"),
    ("sharesmb", "off"),
    ("readonly", "on"),
];

/// What a stream creates, from its BEGIN record's `drr_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// A file system (`DMU_OST_ZFS`), and anything not a volume.
    Filesystem,
    /// A volume, a zvol (`DMU_OST_ZVOL`).
    Volume,
}

impl StreamKind {
    /// The kind for a BEGIN record's `drr_type` (3 is `DMU_OST_ZVOL`).
    pub fn from_objset_type(objset_type: u32) -> StreamKind {
        if objset_type == 3 {
            StreamKind::Volume
        } else {
            StreamKind::Filesystem
        }
    }
}

/// What a received volume gets besides `readonly=on`: no device node
/// (`/dev/zvol/...`), so that nothing on the DR node (udev, blkid, an
/// auto-activated LVM or RAID) reads what a sender wrote into it until the
/// copy is promoted.
pub const VOLUME_INERT_PROPS: &[(&str, &str)] = &[("volmode", "none")];

/// Properties that do not apply to volumes, left out of a volume's
/// `zfs recv` (which refuses `-o` and `-x` of them, "property does not
/// apply to datasets of this type").
pub const FILESYSTEM_ONLY_PROPS: &[&str] = &[
    "aclinherit",
    "aclmode",
    "acltype",
    "atime",
    "canmount",
    "casesensitivity",
    "devices",
    "dnodesize",
    "exec",
    "mountpoint",
    "nbmand",
    "normalization",
    "overlay",
    "quota",
    "recordsize",
    "refquota",
    "relatime",
    "setuid",
    "sharenfs",
    "sharesmb",
    "snapdir",
    "utf8only",
    "vscan",
    "xattr",
    "zoned",
];

/// Properties never taken from a stream: the DR node's space is the DR
/// node's to reserve and limit. (`mountpoint` is excluded too unless
/// `mountpoint_root` confines it.)
pub const EXCLUDED_PROPS: &[&str] = &["reservation", "refreservation", "quota", "refquota"];

/// fjord's role markers, never taken from a stream whatever the config
/// says: they record what the operator did on *this* node (a promotion
/// fences a copy, a demotion stops its pushes), and a sender that could
/// carry them (`zfs send -p` of a dataset promoted or demoted on its own
/// side) would fence or demote the DR node's copy.
pub const ROLE_PROPS: &[&str] = &["fjord:promoted", crate::DEMOTED_PROP, "fjord:kept_from"];

impl RecvOptions {
    /// The `zfs recv` to run for `target`, a file system, with these flags
    /// and the forced inert set; `force` adds `-F` (a rollback the policy
    /// allowed). See [`spec_for`](Self::spec_for).
    pub fn spec(&self, target: &str, force: bool) -> RecvSpec {
        self.spec_for(target, force, StreamKind::Filesystem)
    }

    /// The `zfs recv` for a stream of `kind` (its BEGIN record says which).
    /// A volume gets `volmode=none` ([`VOLUME_INERT_PROPS`]) instead of the
    /// file-system-only part of the inert set: `zfs recv` refuses `-o` and
    /// `-x` of a property that does not apply to the stream's type.
    pub fn spec_for(&self, target: &str, force: bool, kind: StreamKind) -> RecvSpec {
        let unforced = |p: &str| self.unforce.iter().any(|u| u == p);
        let for_kind: &[(&str, &str)] = match kind {
            StreamKind::Filesystem => &[],
            StreamKind::Volume => VOLUME_INERT_PROPS,
        };
        let mut set_props: Vec<(String, String)> = INERT_PROPS
            .iter()
            .chain(for_kind)
            .filter(|(p, _)| !unforced(p) && !self.set_props.contains_key(*p))
            .map(|(p, v)| (p.to_string(), v.to_string()))
            .collect();
        set_props.extend(self.set_props.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut exclude_props: Vec<String> = EXCLUDED_PROPS
            .iter()
            .filter(|p| !unforced(p) && !self.set_props.contains_key(**p))
            .map(|p| p.to_string())
            .collect();
        exclude_props.extend(ROLE_PROPS.iter().map(|p| p.to_string()));
        match &self.mountpoint_root {
            Some(root) if !self.set_props.contains_key("mountpoint") => set_props.push((
                "mountpoint".into(),
                root.join(target).to_string_lossy().into_owned(),
            )),
            Some(_) => {}
            None if unforced("mountpoint") || self.set_props.contains_key("mountpoint") => {}
            None => exclude_props.push("mountpoint".into()),
        }
        for p in &self.exclude_props {
            if !exclude_props.contains(p) {
                exclude_props.push(p.clone());
            }
        }
        if kind == StreamKind::Volume {
            set_props.retain(|(p, _)| !FILESYSTEM_ONLY_PROPS.contains(&p.as_str()));
            exclude_props.retain(|p| !FILESYSTEM_ONLY_PROPS.contains(&p.as_str()));
        }
        RecvSpec {
            target: target.into(),
            force,
            resumable: self.resumable,
            unmounted: true,
            exclude_props,
            set_props,
        }
    }

    /// Checks that the operator's settings only add to the forced set;
    /// loosening goes through `unforce`. Returns the offending key and why.
    fn check_forced(&self) -> Result<(), (String, String)> {
        if !self.unmounted {
            return Err((
                "recv.unmounted".into(),
                "false is not allowed: a received dataset is never mounted by the receive (mount it yourself, or at failover)".into(),
            ));
        }
        for (prop, forced) in INERT_PROPS.iter().chain(VOLUME_INERT_PROPS) {
            if self.unforce.iter().any(|u| u == prop) {
                continue;
            }
            if let Some(v) = self.set_props.get(*prop) {
                if v != forced {
                    return Err((
                        format!("recv.set_props.{prop}"),
                        format!("{prop} is forced to {forced} on received datasets; to change it, also list \"{prop}\" in recv.unforce (see the README's security model)"),
                    ));
                }
            }
        }
        for prop in self.exclude_props.iter() {
            let forced = INERT_PROPS
                .iter()
                .chain(VOLUME_INERT_PROPS)
                .any(|(p, _)| p == prop);
            if forced && !self.unforce.contains(prop) {
                return Err((
                    "recv.exclude_props".into(),
                    format!("{prop} is forced on received datasets and cannot be excluded; list it in recv.unforce to take the stream's value"),
                ));
            }
        }
        if let Some(root) = &self.mountpoint_root {
            if !root.is_absolute() {
                return Err((
                    "recv.mountpoint_root".into(),
                    "must be an absolute path, such as \"/dr\"".into(),
                ));
            }
        }
        Ok(())
    }
}

impl Default for RecvOptions {
    fn default() -> Self {
        Self {
            resumable: true,
            unmounted: true,
            exclude_props: Vec::new(),
            set_props: BTreeMap::new(),
            mountpoint_root: None,
            unforce: Vec::new(),
        }
    }
}

/// `[chunk_cache]`: where the receiver keeps the chunks of past transfers,
/// so that a sender references instead of sending them again.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkCacheConfig {
    /// Its directory (one subdirectory per client key).
    pub dir: PathBuf,
    /// Most bytes kept per client, e.g. `"4G"`; least recently used
    /// chunks go first.
    #[serde(deserialize_with = "de_size")]
    pub size: u64,
}

/// One `[[client]]`: a sender allowed to write at or below `prefixes`.
/// By default it can neither destroy snapshots nor roll a target back.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    /// Its name, for logs.
    pub name: String,
    /// Its public key (the transport parses it).
    pub key: String,
    /// The datasets it may write, with everything below them.
    pub prefixes: Vec<String>,
    /// The prefix of its snapshots' names (`{prefix}_2026-…Z`), default
    /// `fjord`: the only snapshots its pruning may name, and the ones the
    /// DR node's retention counts.
    #[serde(default = "default_prefix")]
    pub snapshot_prefix: String,
    /// Let its pushes prune the DR copies: only its own snapshots, under
    /// its prefixes, never younger than `min_age`, never the newest, never
    /// one the operator holds. Default false.
    #[serde(default)]
    pub allow_prune: bool,
    /// Let `push --force` roll its targets back: only when every snapshot
    /// the rollback destroys could be pruned (see `allow_prune`'s limits).
    /// Default false.
    #[serde(default)]
    pub allow_rollback: bool,
    /// Let its `fjord-send switchover` promote its targets (a planned
    /// switchover: the primary stops writing, pushes a final snapshot and
    /// asks this node to take over). Default false: a stolen key must not
    /// be able to fence the real primary off.
    #[serde(default)]
    pub allow_promote: bool,
    /// Let its recursive pushes destroy a copy whose source child was
    /// destroyed on the primary (recursively, with the DR node's holds
    /// released): only when pruning could take every snapshot in it (its
    /// own, older than `min_age`, held by no one else), never a prefix
    /// itself, never a promoted copy. Default false: the copy is kept and
    /// the push reports it. A grant of its own, not `allow_prune`'s: that
    /// thins history, this erases whole datasets on the sender's word.
    #[serde(default)]
    pub allow_destroy_removed: bool,
    /// Let its recursive pushes rename a copy whose source child was
    /// renamed on the primary (found by snapshot guid), within its
    /// prefixes and never onto an existing dataset, so that it goes on
    /// incrementally instead of arriving again in full. Default false: a
    /// rename can move a copy under another `[[prefix_retention]]`.
    #[serde(default)]
    pub allow_rename: bool,
    /// The DR node's retention for this client's datasets, instead of the
    /// top-level `[retention]`.
    #[serde(default)]
    pub retention: Option<Retention>,
}

/// `[[prefix_retention]]`: the DR node's retention for the datasets at or
/// below `prefix` (the longest matching prefix wins over a client's and
/// the top-level `[retention]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixRetention {
    /// A dataset; the policy covers it and everything below it.
    pub prefix: String,
    /// Newest snapshot of each of this many most recent hours.
    #[serde(default)]
    pub hourly: u32,
    /// … days (UTC).
    #[serde(default)]
    pub daily: u32,
    /// … weeks (UTC, from Monday).
    #[serde(default)]
    pub weekly: u32,
    /// … calendar months (UTC).
    #[serde(default)]
    pub monthly: u32,
    /// … calendar years (UTC).
    #[serde(default)]
    pub yearly: u32,
}

impl PrefixRetention {
    /// Its counts as a [`Retention`].
    pub fn keep(&self) -> Retention {
        Retention {
            hourly: self.hourly,
            daily: self.daily,
            weekly: self.weekly,
            monthly: self.monthly,
            yearly: self.yearly,
        }
    }
}

/// `[limits]`: each client's share of the receiver (absent keys keep the
/// transport's defaults: 8 sessions, 16 connections, 4 control requests
/// and 8 chunk-cache leases per client, an offer within 20 s, 8G of
/// memory for all sessions).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Transfers one client may hold at once.
    pub sessions_per_client: Option<usize>,
    /// Connections one client may hold open.
    pub connections_per_client: Option<usize>,
    /// Control requests one client may have in flight.
    pub requests_per_client: Option<usize>,
    /// Unclaimed chunk-cache inventories one client may hold.
    pub leases_per_client: Option<usize>,
    /// How long a new connection may take to make its offer, e.g. `"20s"`.
    #[serde(default, deserialize_with = "de_duration")]
    pub offer_deadline: Option<Duration>,
    /// Memory all sessions together may hold, e.g. `"8G"`.
    #[serde(default, deserialize_with = "de_opt_size")]
    pub memory_budget: Option<u64>,
}

fn de_opt_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| parse_size(&t).map_err(serde::de::Error::custom))
        .transpose()
}

fn default_min_age() -> Duration {
    Duration::from_secs(7 * 86_400)
}

fn de_min_age<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// `fjord-recv serve`'s config (`/etc/fjord/recv.toml`). See the crate
/// docs for a full example.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecvConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// This receiver's private key file.
    pub key: PathBuf,
    /// Transfers at once (default 4).
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// How long a broken link may stay down before a transfer is given up.
    #[serde(default, deserialize_with = "de_duration")]
    pub grace: Option<Duration>,
    /// How long a link may be silent before it counts as broken; `None`
    /// for the transport's default.
    #[serde(default, deserialize_with = "de_duration")]
    pub idle_timeout: Option<Duration>,
    /// The `zfs recv` flags.
    #[serde(default)]
    pub recv: RecvOptions,
    /// The persistent chunk cache for dedup across transfers; none when
    /// absent.
    #[serde(default)]
    pub chunk_cache: Option<ChunkCacheConfig>,
    /// The senders allowed in.
    #[serde(rename = "client", default)]
    pub clients: Vec<Client>,
    /// Nothing younger is ever destroyed on the DR node: not by its
    /// retention, not by a client's pruning, not by a rollback (default
    /// 7 days).
    #[serde(default = "default_min_age", deserialize_with = "de_min_age")]
    pub min_age: Duration,
    /// The DR node's own retention for every client's datasets; absent:
    /// the DR node keeps every snapshot.
    #[serde(default)]
    pub retention: Option<Retention>,
    /// Retention for parts of the tree.
    #[serde(rename = "prefix_retention", default)]
    pub prefix_retention: Vec<PrefixRetention>,
    /// Each client's share of the receiver.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Restore drills (`fjord-recv drill`); none when absent.
    #[serde(default)]
    pub drill: Option<crate::drill::DrillConfig>,
    /// Where `serve` writes its own Prometheus metrics (refusals by code
    /// and client, policy counts, the chunk cache), atomically, every 15
    /// seconds and at shutdown; none: not written.
    #[serde(default)]
    pub metrics_file: Option<PathBuf>,
    /// The DR node's own state (its tripwire pages, `state_dir/tripwire/`);
    /// none: the DR node keeps no tripwire history. The package's unit
    /// gives the receiver `/var/lib/fjord`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// The DR node's own ransomware tripwire over what it receives (needs
    /// `state_dir`); the same keys as a job's `[job.tripwire]`, except
    /// `pause_pruning`, which has no meaning here.
    #[serde(default)]
    pub tripwire: crate::tripwire::TripwireConfig,
}

impl RecvConfig {
    /// The `zfs recv` to run for `target`. `force` (`-F`) is the sender's
    /// request after a planned rollback.
    pub fn recv_spec(&self, target: &str, force: bool) -> RecvSpec {
        self.recv.spec(target, force)
    }

    /// The client whose key is `key`.
    pub fn client_by_key(&self, key: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.key == key)
    }

    /// The DR node's retention for `dataset` of `client`: the longest
    /// matching `[[prefix_retention]]`, else the client's, else the
    /// top-level one; `None` keeps everything.
    pub fn retention_for(&self, client: &Client, dataset: &str) -> Option<Retention> {
        self.prefix_retention
            .iter()
            .filter(|p| is_within_prefix(dataset, &p.prefix))
            .max_by_key(|p| p.prefix.len())
            .map(PrefixRetention::keep)
            .or(client.retention)
            .or(self.retention)
    }
}

fn de_bwlimit<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| parse_bwlimit(&t).map_err(serde::de::Error::custom))
        .transpose()
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    parse_size(&text).map_err(serde::de::Error::custom)
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| parse_duration(&t).map_err(serde::de::Error::custom))
        .transpose()
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.into(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// Collects the first validation failure with its key.
struct Checker<'a> {
    path: &'a Path,
}

impl Checker<'_> {
    fn fail(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.into(),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A job's or a target's name: `[A-Za-z0-9_-]+`.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl SendConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<SendConfig, ConfigError> {
        let path = path.as_ref();
        Self::from_toml(path, &read(path)?)
    }

    /// Parses and checks `text`; `path` is only for messages.
    pub fn from_toml(path: &Path, text: &str) -> Result<SendConfig, ConfigError> {
        let config: SendConfig = parse(path, text)?;
        config.validate(path)?;
        Ok(config)
    }

    /// The job called `name`.
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let check = Checker { path };
        if self.jobs.is_empty() {
            return Err(check.fail("job", "no [[job]] table: add at least one job"));
        }
        let mut names = HashSet::new();
        for (i, job) in self.jobs.iter().enumerate() {
            let key = |field: &str| format!("job[{}].{field}", i + 1);
            if !valid_name(&job.name) {
                return Err(check.fail(
                    key("name"),
                    format!(
                        "{:?} is not a job name: use letters, digits, '_' and '-'",
                        job.name
                    ),
                ));
            }
            if !names.insert(job.name.as_str()) {
                return Err(check.fail(
                    key("name"),
                    format!(
                        "a job named {:?} is already defined: job names must be unique",
                        job.name
                    ),
                ));
            }
            validate_dataset(&job.source).map_err(|e| check.fail(key("source"), e.to_string()))?;
            job.hooks
                .check()
                .map_err(|(k, why)| check.fail(key(&format!("hooks.{k}")), why))?;
            job.tripwire
                .check()
                .map_err(|(k, why)| check.fail(key(&format!("tripwire.{k}")), why))?;
            let has_targets = !job.targets().is_empty();
            // Only a target needs the log position the hook records.
            if job.hooks.database.is_some() && !job.properties && has_targets {
                return Err(check.fail(
                    key("properties"),
                    "hooks.database records the log position as a property of the snapshot, which reaches the DR node only with properties = true (zfs send -p): set it",
                ));
            }
            crate::targets::check(job).map_err(|(k, why)| check.fail(key(&k), why))?;
            // The timestamp adds 19 bytes; the result must be a valid name.
            let sample = fjord_zfs::snapname::format_snapshot_name(&job.snapshot_prefix, 0);
            validate_snapshot_short_name(&job.snapshot_prefix)
                .and_then(|()| validate_snapshot_short_name(&sample))
                .map_err(|e| check.fail(key("snapshot_prefix"), e.to_string()))?;
            if job.parallelism == 0 {
                return Err(check.fail(key("parallelism"), "must be at least 1"));
            }
        }
        // The hold tag is how a target finds (and releases) its base: one
        // tag per target ("fjord-a-b" is job "a" target "b" and job "a-b").
        let mut tags = std::collections::HashMap::new();
        for (i, job) in self.jobs.iter().enumerate() {
            for t in job.targets() {
                if let Some(other) = tags.insert(t.hold_tag(&job.name), job.name.as_str()) {
                    return Err(check.fail(
                        format!("job[{}].name", i + 1),
                        format!(
                            "jobs {other:?} and {:?} would both hold their bases with the tag {}: rename a job or a target",
                            job.name,
                            t.hold_tag(&job.name)
                        ),
                    ));
                }
            }
        }
        // Two jobs writing the same target (or one inside a recursive
        // other's) would roll back and prune each other's snapshots.
        for (i, a) in self.jobs.iter().enumerate() {
            for b in &self.jobs[i + 1..] {
                if let Some((dataset, host)) = crate::targets::clash(a, b) {
                    return Err(check.fail(
                        format!("job[{}].target_dataset", i + 1),
                        format!(
                            "jobs {:?} and {:?} would both write {dataset} on {host}: give each job its own target",
                            a.name, b.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

const KEEPS_NOTHING: &str = "every count is 0, which would keep only the newest snapshot: give at least one of hourly, daily, weekly, monthly, yearly, or remove the table to keep every snapshot";

impl RecvConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<RecvConfig, ConfigError> {
        let path = path.as_ref();
        Self::from_toml(path, &read(path)?)
    }

    /// Parses and checks `text`; `path` is only for messages.
    pub fn from_toml(path: &Path, text: &str) -> Result<RecvConfig, ConfigError> {
        let config: RecvConfig = parse(path, text)?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let check = Checker { path };
        if self.max_concurrent == 0 {
            return Err(check.fail("max_concurrent", "must be at least 1"));
        }
        self.recv
            .check_forced()
            .map_err(|(key, message)| check.fail(key, message))?;
        // Reuse RecvSpec's checks for the property names and values.
        self.recv_spec("fjord/check", false)
            .validate()
            .map_err(|e| check.fail("recv", e.to_string()))?;
        if let Some(cache) = &self.chunk_cache {
            // A cache that holds less than a couple of 16 MiB blocks
            // would never keep anything.
            if cache.size < 64 << 20 {
                return Err(check.fail(
                    "chunk_cache.size",
                    "is below 64M: give a size such as \"4G\", or remove [chunk_cache]",
                ));
            }
            if !cache.dir.is_absolute() {
                return Err(check.fail(
                    "chunk_cache.dir",
                    "must be an absolute path, such as \"/var/cache/fjord/chunks\"",
                ));
            }
        }
        self.tripwire
            .check()
            .map_err(|(k, why)| check.fail(format!("tripwire.{k}"), why))?;
        if self.tripwire.pause_pruning {
            return Err(check.fail(
                "tripwire.pause_pruning",
                "is a sender's key (the DR node's retention has min_age instead): remove it here",
            ));
        }
        if let Some(dir) = &self.state_dir {
            if !dir.is_absolute() {
                return Err(check.fail(
                    "state_dir",
                    "must be an absolute path, such as \"/var/lib/fjord\"",
                ));
            }
        }
        if self.clients.is_empty() {
            return Err(check.fail(
                "client",
                "no [[client]] table: add the senders allowed to connect",
            ));
        }
        let mut keys = HashSet::new();
        let mut names = HashSet::new();
        for (i, client) in self.clients.iter().enumerate() {
            let key = |field: &str| format!("client[{}].{field}", i + 1);
            if client.name.trim().is_empty() {
                return Err(check.fail(key("name"), "is empty: name the client"));
            }
            if !names.insert(client.name.as_str()) {
                return Err(check.fail(
                    key("name"),
                    format!(
                        "a client named {:?} is already defined: client names must be unique",
                        client.name
                    ),
                ));
            }
            if client.key.trim().is_empty() {
                return Err(check.fail(key("key"), "is empty: give the client's public key"));
            }
            if !keys.insert(client.key.trim()) {
                return Err(check.fail(
                    key("key"),
                    format!("client {:?} has the same key as an earlier client: each client needs its own key", client.name),
                ));
            }
            if client.prefixes.is_empty() {
                return Err(check.fail(
                    key("prefixes"),
                    "is empty: list the datasets this client may write, such as [\"backup/oslo\"]",
                ));
            }
            for prefix in &client.prefixes {
                validate_dataset(prefix).map_err(|e| check.fail(key("prefixes"), e.to_string()))?;
            }
            validate_snapshot_short_name(&format!("{}_x", client.snapshot_prefix))
                .map_err(|e| check.fail(key("snapshot_prefix"), e.to_string()))?;
            if client.retention.is_some_and(|r| r.keeps_nothing()) {
                return Err(check.fail(key("retention"), KEEPS_NOTHING));
            }
        }
        if self.retention.is_some_and(|r| r.keeps_nothing()) {
            return Err(check.fail("retention", KEEPS_NOTHING));
        }
        for (i, p) in self.prefix_retention.iter().enumerate() {
            let key = |field: &str| format!("prefix_retention[{}].{field}", i + 1);
            validate_dataset(&p.prefix).map_err(|e| check.fail(key("prefix"), e.to_string()))?;
            if p.keep().keeps_nothing() {
                return Err(check.fail(key("prefix"), KEEPS_NOTHING));
            }
        }
        if let Some(drill) = &self.drill {
            let prefixes: Vec<&str> = self
                .clients
                .iter()
                .flat_map(|c| c.prefixes.iter().map(String::as_str))
                .collect();
            drill
                .check(&prefixes)
                .map_err(|(k, why)| check.fail(format!("drill.{k}"), why))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND: &str = include_str!("../examples/send.toml");
    const RECV: &str = include_str!("../examples/recv.toml");
    /// The example the README's Quick start copies.
    const SHIPPED_RECV: &str = include_str!("../../../examples/recv.toml");

    #[test]
    fn the_shipped_receiver_example_loads_with_safe_defaults() {
        let c = RecvConfig::from_toml(Path::new("examples/recv.toml"), SHIPPED_RECV)
            .expect("examples/recv.toml");
        assert_eq!(c.min_age, Duration::from_secs(7 * 86_400));
        assert!(!c.clients[0].allow_prune && !c.clients[0].allow_rollback);
        assert_eq!(c.retention.map(|r| r.yearly), Some(3));
        let argv = fjord_zfs::command::recv_argv(&c.recv_spec("backup/oslo/home", false)).join(" ");
        for forced in [
            "-u",
            "-o readonly=on",
            "-o setuid=off",
            "-x mountpoint",
            "-x quota",
            "-x fjord:promoted",
        ] {
            assert!(argv.contains(forced), "{argv}");
        }
    }

    #[test]
    fn a_volume_is_received_with_volmode_none_and_without_file_system_properties() {
        let c = RecvConfig::from_toml(Path::new("examples/recv.toml"), SHIPPED_RECV)
            .expect("examples/recv.toml");
        let spec = c.recv.spec_for("backup/oslo/vm", false, StreamKind::Volume);
        let argv = fjord_zfs::command::recv_argv(&spec).join(" ");
        for kept in [
            "-u",
            "-o readonly=on",
            "-o volmode=none",
            "-x fjord:promoted",
        ] {
            assert!(argv.contains(kept), "{argv}");
        }
        for gone in ["canmount", "setuid", "mountpoint", "sharenfs", "quota"] {
            assert!(
                !argv.contains(gone),
                "{gone} does not apply to a volume: {argv}"
            );
        }
        // refreservation applies to volumes: still never taken from a stream
        assert!(argv.contains("-x refreservation"), "{argv}");
        let fs = fjord_zfs::command::recv_argv(&c.recv_spec("backup/oslo/home", false)).join(" ");
        assert!(!fs.contains("volmode"), "{fs}");
        assert_eq!(StreamKind::from_objset_type(3), StreamKind::Volume);
        assert_eq!(StreamKind::from_objset_type(2), StreamKind::Filesystem);
    }

    #[test]
    fn loosening_the_inert_set_needs_unforce() {
        let text = |recv: &str| {
            format!("listen = \"127.0.0.1:1\"\nkey = \"/k\"\n{recv}\n[[client]]\nname = \"a\"\nkey = \"k\"\nprefixes = [\"b/a\"]\n")
        };
        let load = |recv: &str| RecvConfig::from_toml(Path::new("r.toml"), &text(recv));
        let e = load("[recv]\nset_props = { readonly = \"off\" }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unforce"), "{e}");
        let e = load("[recv]\nunmounted = false").unwrap_err().to_string();
        assert!(e.contains("never mounted"), "{e}");
        let c = load("[recv]\nset_props = { readonly = \"off\" }\nunforce = [\"readonly\"]")
            .expect("unforced");
        let argv = fjord_zfs::command::recv_argv(&c.recv_spec("b/a/x", false)).join(" ");
        assert!(
            argv.contains("-o readonly=off") && !argv.contains("readonly=on"),
            "{argv}"
        );
        let e = load("[recv]\nset_props = { volmode = \"dev\" }")
            .unwrap_err()
            .to_string();
        assert!(e.contains("volmode") && e.contains("unforce"), "{e}");
        let e = load("[retention]\nhourly = 0").unwrap_err().to_string();
        assert!(e.contains("keep only the newest"), "{e}");
    }

    fn send(text: &str) -> Result<SendConfig, ConfigError> {
        SendConfig::from_toml(Path::new("/etc/fjord/send.toml"), text)
    }

    fn recv(text: &str) -> Result<RecvConfig, ConfigError> {
        RecvConfig::from_toml(Path::new("/etc/fjord/recv.toml"), text)
    }

    const MINIMAL_JOB: &str = r#"
key = "/k"
state_dir = "/s"
[[job]]
name = "home"
source = "tank/home"
target_host = "10.10.0.2:7450"
target_key = "AAAA"
target_dataset = "backup/oslo/home"
"#;

    #[test]
    fn example_send_config_loads_with_every_field() {
        let c = send(SEND).unwrap();
        assert_eq!(c.key, PathBuf::from("/etc/fjord/send.key"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/fjord"));
        // commented out: its directory exists only with node-exporter installed
        assert!(c.metrics_file.is_none());
        let job = &c.jobs[0];
        assert_eq!(job.name, "home");
        assert!(job.recursive);
        assert_eq!(job.bwlimit, Some(50 << 20));
        assert_eq!(job.grace, Some(Duration::from_secs(300)));
        assert_eq!(job.idle_timeout, Some(Duration::from_secs(30)));
        assert_eq!(job.parallelism, 2);
        assert!(!job.raw && job.compressed && job.large_blocks && job.pack);
        assert_eq!(
            job.retention.source,
            Some(Retention {
                hourly: 24,
                daily: 14,
                weekly: 8,
                ..Retention::default()
            })
        );
        assert_eq!(job.retention.target.as_ref().map(|r| r.daily), Some(30));
    }

    #[test]
    fn defaults_apply_when_keys_are_omitted() {
        let c = send(MINIMAL_JOB).unwrap();
        let job = &c.jobs[0];
        assert_eq!(job.snapshot_prefix, "fjord");
        assert!(job.intermediates && job.compressed && job.large_blocks);
        assert!(!job.raw && !job.recursive);
        assert_eq!(job.parallelism, 2);
        assert_eq!(job.bwlimit, None);
        assert_eq!(job.idle_timeout, None);
        assert_eq!(job.retention, RetentionConfig::default());
        assert_eq!(c.metrics_file, None);
    }

    #[test]
    fn target_for_maps_children_below_the_target() {
        let c = send(MINIMAL_JOB).unwrap();
        let job = &c.jobs[0];
        assert_eq!(
            job.target_for("tank/home").as_deref(),
            Some("backup/oslo/home")
        );
        assert_eq!(
            job.target_for("tank/home/a/b").as_deref(),
            Some("backup/oslo/home/a/b")
        );
        assert_eq!(job.target_for("tank/homework"), None);
        assert_eq!(job.target_for("tank"), None);
    }

    fn invalid_key(err: ConfigError) -> (String, String) {
        match err {
            ConfigError::Invalid { key, message, .. } => (key, message),
            other => panic!("expected Invalid, got {other}"),
        }
    }

    #[test]
    fn send_validation_names_the_key() {
        let bad_target = MINIMAL_JOB.replace("backup/oslo/home", "backup/../home");
        let (key, msg) = invalid_key(send(&bad_target).unwrap_err());
        assert_eq!(key, "job[1].target_dataset");
        assert!(msg.contains("\"..\" component"), "{msg}");

        let zero = format!("{MINIMAL_JOB}parallelism = 0\n");
        assert_eq!(
            invalid_key(send(&zero).unwrap_err()).0,
            "job[1].parallelism"
        );

        let twice = format!(
            "{MINIMAL_JOB}{}",
            &MINIMAL_JOB[MINIMAL_JOB.find("[[job]]").unwrap()..]
        );
        let (key, msg) = invalid_key(send(&twice).unwrap_err());
        assert_eq!(key, "job[2].name");
        assert!(msg.contains("unique"), "{msg}");

        let no_jobs = "key = \"/k\"\nstate_dir = \"/s\"\n";
        assert_eq!(invalid_key(send(no_jobs).unwrap_err()).0, "job");

        let bad_name = MINIMAL_JOB.replace("name = \"home\"", "name = \"my home\"");
        assert_eq!(invalid_key(send(&bad_name).unwrap_err()).0, "job[1].name");

        let no_port = MINIMAL_JOB.replace("10.10.0.2:7450", "10.10.0.2");
        assert_eq!(
            invalid_key(send(&no_port).unwrap_err()).0,
            "job[1].target_host"
        );

        let bad_prefix = format!("{MINIMAL_JOB}snapshot_prefix = \"a@b\"\n");
        assert_eq!(
            invalid_key(send(&bad_prefix).unwrap_err()).0,
            "job[1].snapshot_prefix"
        );
    }

    #[test]
    fn overlapping_targets_are_refused() {
        let second = r#"
[[job]]
name = "mail"
source = "tank/mail"
target_host = "10.10.0.2:7450"
target_key = "AAAA"
target_dataset = "backup/oslo/home/mail"
"#;
        let nested = format!(
            "{}{second}",
            MINIMAL_JOB.replace("target_dataset", "recursive = true\ntarget_dataset")
        );
        let (key, msg) = invalid_key(send(&nested).unwrap_err());
        assert_eq!(key, "job[1].target_dataset");
        assert!(msg.contains("would both write"), "{msg}");
        // Without `recursive`, the first job never writes below its target.
        assert!(send(&format!("{MINIMAL_JOB}{second}")).is_ok());
    }

    #[test]
    fn parse_errors_name_file_and_key() {
        let bad_rate = format!("{MINIMAL_JOB}bwlimit = \"50Q\"\n");
        let msg = send(&bad_rate).unwrap_err().to_string();
        assert!(
            msg.starts_with("config file /etc/fjord/send.toml: "),
            "{msg}"
        );
        assert!(msg.contains("bwlimit"), "{msg}");
        assert!(msg.contains("is not a rate"), "{msg}");

        let unknown = format!("{MINIMAL_JOB}snapshot_prefx = \"x\"\n");
        let msg = send(&unknown).unwrap_err().to_string();
        assert!(msg.contains("snapshot_prefx"), "{msg}");

        let missing = MINIMAL_JOB.replace("target_key = \"AAAA\"\n", "");
        let msg = send(&missing).unwrap_err().to_string();
        assert!(msg.contains("target_key"), "{msg}");
    }

    #[test]
    fn load_reports_a_missing_file() {
        let err = SendConfig::load("/nonexistent/fjord/send.toml").unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("/nonexistent/fjord/send.toml"));
    }

    #[test]
    fn rates_and_durations() {
        assert_eq!(parse_bwlimit("50M"), Ok(50 * 1024 * 1024));
        assert_eq!(parse_bwlimit("1k"), Ok(1024));
        assert_eq!(parse_bwlimit("2G"), Ok(2 << 30));
        assert_eq!(parse_bwlimit("1000"), Ok(1000));
        for bad in ["", "M", "0", "5MB", "-1", "1.5M"] {
            assert!(parse_bwlimit(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        for bad in ["", "m", "5 m", "5y", "1.5h", "99999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn example_recv_config_loads() {
        let c = recv(RECV).unwrap();
        assert_eq!(c.listen, "10.10.0.2:7450".parse().unwrap());
        assert_eq!(c.max_concurrent, 4);
        assert_eq!(c.grace, Some(Duration::from_secs(300)));
        assert_eq!(c.clients[0].prefixes, vec!["backup/oslo".to_string()]);
        assert_eq!(
            c.chunk_cache,
            Some(ChunkCacheConfig {
                dir: PathBuf::from("/var/cache/fjord/chunks"),
                size: 4 << 30,
            })
        );
        let spec = c.recv_spec("backup/oslo/home", true);
        assert_eq!(
            fjord_zfs::command::recv_argv(&spec).join(" "),
            "recv -F -s -u -x reservation -x refreservation -x quota -x refquota \
             -x fjord:promoted -x fjord:demoted -x fjord:kept_from -x mountpoint \
             -o canmount=noauto -o setuid=off -o devices=off -o sharenfs=off -o sharesmb=off \
             -o readonly=on backup/oslo/home"
        );
        assert_eq!(
            c.client_by_key(&c.clients[0].key).map(|c| c.name.as_str()),
            Some("oslo-primary")
        );
    }

    #[test]
    fn a_chunk_cache_needs_a_real_size_and_an_absolute_dir() {
        let with = |cache: &str| {
            recv(&format!(
                "listen = \"0.0.0.0:7450\"\nkey = \"/k\"\n{cache}\n[[client]]\nname = \"a\"\nkey = \"K1\"\nprefixes = [\"backup/a\"]\n"
            ))
        };
        let ok = with("[chunk_cache]\ndir = \"/c\"\nsize = \"512M\"").unwrap();
        assert_eq!(ok.chunk_cache.map(|c| c.size), Some(512 << 20));
        for (table, names) in [
            ("dir = \"/c\"\nsize = \"1M\"", "chunk_cache.size"),
            ("dir = \"c\"\nsize = \"1G\"", "chunk_cache.dir"),
            ("dir = \"/c\"\nsize = \"lots\"", "not a size"),
            ("dir = \"/c\"\nsize = \"1G\"\nttl = 3", "ttl"),
        ] {
            let e = with(&format!("[chunk_cache]\n{table}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(names), "{table}: {e}");
        }
    }

    #[test]
    fn recv_validation() {
        let base = r#"
listen = "0.0.0.0:7450"
key = "/k"
[[client]]
name = "a"
key = "K1"
prefixes = ["backup/a"]
"#;
        let c = recv(base).unwrap();
        assert!(c.recv.resumable && c.recv.unmounted, "defaults");
        let dup =
            format!("{base}[[client]]\nname = \"b\"\nkey = \"K1\"\nprefixes = [\"backup/b\"]\n");
        let (key, msg) = invalid_key(recv(&dup).unwrap_err());
        assert_eq!(key, "client[2].key");
        assert!(msg.contains("same key"), "{msg}");
        let bad_prefix = base.replace("backup/a", "/backup/a");
        assert_eq!(
            invalid_key(recv(&bad_prefix).unwrap_err()).0,
            "client[1].prefixes"
        );
        let no_prefix = base.replace("[\"backup/a\"]", "[]");
        assert_eq!(
            invalid_key(recv(&no_prefix).unwrap_err()).0,
            "client[1].prefixes"
        );
        let no_client = "listen = \"0.0.0.0:7450\"\nkey = \"/k\"\n";
        assert_eq!(invalid_key(recv(no_client).unwrap_err()).0, "client");
        let bad_listen = base.replace("0.0.0.0:7450", "nowhere");
        assert!(matches!(recv(&bad_listen), Err(ConfigError::Parse { .. })));
        let bad_prop = format!("{base}[recv]\nexclude_props = [\"-F\"]\n");
        assert_eq!(invalid_key(recv(&bad_prop).unwrap_err()).0, "recv");
    }
}
