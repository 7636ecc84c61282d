//! The real implementations of [`crate::Pool`] and [`crate::DrNode`]: the
//! `zfs` CLI on the primary and fjord's QUIC transport to the DR node.
//! Thin: every decision is in [`crate::dataset`] and [`crate::job`].

mod checked_send;
mod hooks;
mod mysql;
mod quic;
mod zfs_pool;

pub use checked_send::CheckedSend;
pub use hooks::{run_command, CommandHooks};
pub use mysql::MysqlLock;
pub use quic::{QuicDrNode, WatchTransfer};
pub use zfs_pool::ZfsPool;
