//! # fjord-transport
//!
//! fjord's QUIC layer: the tokio + quinn driver of the session protocol
//! in `fjord-proto`, with pinned keys. The receiver's side below the
//! network (sinks, the chunk caches) is `fjord-sink`.
//!
//! - [`identity`]: Ed25519 keys, self-signed certificates, and the rustls
//!   verifiers that pin the peer's public key.
//! - [`config`]: QUIC tuning for long fat links.
//! - [`client`] and [`server`]: the thin drivers.
//! - [`control`]: how a receiver answers control requests (target
//!   state, abort a resumable receive, prune snapshots).
//! - [`source`]: what a transfer sends, raw or packed frame by frame.
//!
//! A sender keeps one connection per receiver ([`client::Link`]): each
//! transfer and each batch of control requests is a bidirectional stream
//! of it, starting with its own hello, so a job's parallel transfers and
//! its requests cost one TLS handshake; a lost connection is
//! re-established once for all of them.
//!
//! A receiver shares itself fairly: sessions, connections and control
//! requests are limited per client key, the streams open on one
//! connection are bounded, a stream must send its offer within a deadline
//! (and a connection open a stream), and a memory budget bounds what all
//! sessions and connections hold.
//! A `Busy` answer is retried by the sender with backoff within its
//! grace; a sender that gives up tells the receiver, which ends the
//! session at once; and a new session of a key into a dataset replaces
//! that key's detached one, so a killed sender's slot is free again once
//! its connection timed out.
#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod control;
pub mod identity;
pub mod server;
pub mod source;
pub mod udp;

pub use config::{Congestion, LinkConfig};
pub use identity::{Identity, IdentityError};
