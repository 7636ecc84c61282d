//! # fjord-config
//!
//! The config files of both nodes, loaded and checked as a whole, and what
//! they are written in:
//!
//! - [`config`]: [`SendConfig`] (the primary's push jobs) and [`RecvConfig`]
//!   (the DR node's clients, grants, limits and retention).
//! - [`units`]: durations, sizes and byte rates, shared with the command lines.
//! - [`retention`]: the retention rule both sides configure: which of
//!   fjord's snapshots to keep ([`retention::plan_pruning`], pure).
//! - [`textfile`]: what both nodes write for others to read (atomic
//!   files, Prometheus label values).
//!
//! Both binaries and the libraries that act on these settings depend on this
//! crate; it depends on nothing of fjord's but `fjord-zfs` (name rules).
//!
//! ## The sender's config
//!
//! Unknown keys are errors. Omitted keys take the defaults shown.
//!
//! ```toml
//! key = "/etc/fjord/send.key"             # this sender's private key file
//! state_dir = "/var/lib/fjord"            # job locks and status files
//! metrics_file = "/var/lib/prometheus/node-exporter/fjord.prom"  # optional
//!
//! [[job]]
//! name = "home"                           # letters, digits, '_' and '-'
//! source = "tank/home"
//! recursive = true                        # also the child datasets (default false)
//! target_host = "10.10.0.2:7450"
//! target_key = "BASE64PUBKEY="            # the receiver's public key
//! target_dataset = "backup/oslo/home"     # children land below it
//! snapshot_prefix = "fjord"               # fjord_2026-01-31T120000Z (default "fjord")
//! intermediates = true                    # zfs send -I (default) rather than -i
//! parallelism = 2                         # datasets at once (default 2)
//! bwlimit = "50M"                         # optional: bytes/s, K/M/G/T = powers of 1024
//! raw = false                             # zfs send -w (default false)
//! compressed = true                       # zfs send -c (default true)
//! large_blocks = true                     # zfs send -L (default true)
//! pack = true                             # dedup + zstd on the wire (default true)
//! congestion = "bbr"                      # or "cubic" to yield like TCP on a shared link (default bbr)
//! grace = "5m"                            # optional: s, m, h or d
//! idle_timeout = "30s"                    # optional: silence = broken link
//!
//! # Keep the newest of fjord's snapshots in each of the N most recent
//! # hours / days / weeks that have one; 0 = none of that class. Leave a
//! # table out to never prune on that side.
//! [job.retention.source]
//! hourly = 24
//! daily = 14
//! weekly = 8
//!
//! [job.retention.target]
//! hourly = 48
//! daily = 30
//! weekly = 12
//!
//! [job.tripwire]                          # the ransomware tripwire (defaults shown)
//! factor = 3.0                            # trips at 3 x the dataset's median share ...
//! floor = 0.5                             # ... and at least this share
//! min_history = 5                         # pushes kept before it can trip
//! min_bytes = "4M"                        # smaller pushes are not judged
//! pause_pruning = false                   # stop source pruning until `tripwire ack`
//! ```
//!
//! ## The receiver's config
//!
//! ```toml
//! listen = "0.0.0.0:7450"
//! key = "/etc/fjord/recv.key"
//! max_concurrent = 4                      # transfers at once (default 4)
//! grace = "5m"                            # optional
//! idle_timeout = "30s"                    # optional
//!
//! [recv]                                  # zfs recv flags
//! resumable = true                        # -s (default true)
//! unmounted = true                        # -u (default true)
//! exclude_props = ["mountpoint"]          # -x each
//! set_props = { readonly = "on" }         # -o k=v each
//!
//! [chunk_cache]                           # optional: dedup across transfers
//! dir = "/var/cache/fjord/chunks"         # one subdirectory per client key
//! size = "4G"                             # per client; least recently used go first
//!
//! [[client]]
//! name = "oslo-primary"
//! key = "BASE64PUBKEY="
//! prefixes = ["backup/oslo"]              # may only write at or below these
//! ```
//!
//! Both examples are in `examples/send.toml` and `examples/recv.toml`, and
//! the tests load them.
#![warn(missing_docs)]

/// The user property `fjord-recv demote` sets on a former primary's
/// dataset (`TIME @BASE`): it receives from the promoted copy now, and
/// `fjord-send push` refuses to snapshot or send it. Here because both
/// sides read it.
pub const DEMOTED_PROP: &str = "fjord:demoted";

pub mod config;
pub mod drill;
pub mod hooks;
pub mod retention;
pub mod targets;
pub mod textfile;
pub mod tripwire;
pub mod units;

pub use config::{ConfigError, Job, RecvConfig, SendConfig};
pub use retention::Retention;
pub use targets::Target;
pub use units::{parse_bwlimit, parse_duration, parse_size};
