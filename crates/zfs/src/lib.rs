//! # fjord-zfs
//!
//! The `zfs` command line, typed. fjord drives the `zfs` binary rather than
//! linking `libzfs` (whose ABI changes between releases), so this crate is
//! the one place that knows its argv and its output formats:
//!
//! - [`names`]: OpenZFS's dataset and snapshot name rules (from
//!   `module/zcommon/zfs_namecheck.c`), and the prefix check a receiver uses
//!   to confine a client to its own part of the pool.
//! - [`snapshot`]: [`SnapshotInfo`] and the parsers for `zfs list`,
//!   `zfs get`, `zfs holds` and `zfs send -n -P` output.
//! - [`snapname`]: fjord's snapshot names, `{prefix}_2026-01-31T120000Z`.
//! - [`command`]: argv builders, [`SendSpec`] / [`RecvSpec`], and [`Zfs`],
//!   the async executor for the short commands.
//! - [`process`]: `zfs send` / `zfs recv` as blocking `Read` / `Write`
//!   streams ([`SendProcess`], [`RecvProcess`]).
//! - [`error`]: [`ZfsError`], whose messages quote the command line and
//!   `zfs`'s stderr.
//!
//! Everything that decides is a pure function; only the executor runs `zfs`.
#![warn(missing_docs)]

pub mod clone;
pub mod command;
pub mod create;
pub mod error;
pub mod lineage;
pub mod names;
pub mod process;
pub mod props;
pub mod snapname;
pub mod snapshot;

pub use command::{RecvSpec, SendKind, SendSpec, Zfs};
pub use error::ZfsError;
pub use names::NameError;
pub use process::{RecvProcess, RecvResult, SendProcess};
pub use snapshot::SnapshotInfo;
