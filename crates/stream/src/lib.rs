//! # fjord-stream
//!
//! A sans-IO codec for the OpenZFS send-stream format: the bytes that
//! `zfs send` writes and `zfs recv` reads.
//!
//! - [`Decoder`]: fed bytes in pieces of any size, yields verified
//!   [`Record`]s (structure, OpenZFS's limits, running Fletcher-4 trailer
//!   checksums, END checksums; single streams, `-R`/`-I` packages, resumed
//!   `-t` streams, `-S` streams without END; both byte orders).
//! - [`Encoder`]: writes records back byte for byte, or seals new ones with
//!   the checksums `zfs send` would write; [`builder`] makes whole synthetic
//!   streams from it.
//! - [`nvlist`]: packed nvlists (NATIVE and XDR), the BEGIN payloads.
//! - [`token`]: `receive_resume_token` strings.
//! - [`Summary`]: what `fjord-send inspect` reports.
//!
//! The format reference is OpenZFS's `include/sys/zfs_ioctl.h`,
//! `module/zfs/dmu_recv.c`, `module/zfs/dmu_send.c` and `cmd/zstream/`.
#![warn(missing_docs)]

pub mod builder;
pub mod decoder;
pub mod encoder;
pub mod error;
pub mod features;
pub mod fletcher;
pub mod nvlist;
pub mod order;
pub mod read;
pub mod record;
pub mod summary;
pub mod token;
pub mod validate;

pub use decoder::{Decoder, DecoderOptions, Record, StreamState};
pub use encoder::{Encoder, EndKind};
pub use error::{Part, StreamError};
pub use features::{FeatureFlags, HeaderType};
pub use fletcher::{Checksum, Fletcher4};
pub use order::ByteOrder;
pub use record::{Body, Header, RecordType, RECORD_SIZE};
pub use summary::{StreamKind, Summary};
