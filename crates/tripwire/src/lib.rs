//! The ransomware tripwire's parts that both ends use.
//!
//! - [`meter`]: the share of a send stream's new block bytes that are
//!   incompressible and the share that rewrites existing files, measured
//!   on the stream's way through (sans-IO, and a `Read` wrapper). The
//!   primary meters what it sends; the DR node meters what it verified
//!   and gave to `zfs recv`, so its verdict does not depend on the
//!   primary's word.
//! - [`judge`]: the decision (pure): trip past `factor` times the median
//!   of the history and at least `floor`.
//! - [`page`]: one dataset's history and alarm, and how a judged push
//!   changes them (pure). Where pages are stored is the caller's business.

pub mod judge;
pub mod meter;
pub mod page;

pub use judge::{judge, Judgement, Sample, Verdict};
pub use meter::{Meter, MeteredStream, StreamFigures};
pub use page::{Alarm, Page};
