//! What can be wrong with a send stream, said so that an operator can act.

use crate::nvlist::NvError;
use crate::{Checksum, RecordType};
use thiserror::Error;

/// Where in a record a stream was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// Inside the 312-byte header.
    Header,
    /// Inside the payload that follows the header.
    Payload,
}

/// An invalid or incomplete send stream. Every variant names the record
/// (its index from 0, its type where known, its byte offset).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StreamError {
    /// The input ended before the stream did.
    #[error("truncated at byte {at} inside the {} of record #{index}{}", part_name(.part), type_suffix(.record_type))]
    Truncated {
        /// Bytes received in all.
        at: u64,
        /// The record that was cut.
        index: u64,
        /// Its type, if the header was complete.
        record_type: Option<RecordType>,
        /// Header or payload.
        part: Part,
    },
    /// The input ended on a record boundary before the END record.
    #[error("truncated at byte {at}: the stream stops after record #{last_index} ({last_type}) without its DRR_END record")]
    MissingEnd {
        /// Bytes received in all.
        at: u64,
        /// The last complete record.
        last_index: u64,
        /// Its type.
        last_type: RecordType,
    },
    /// No bytes at all.
    #[error("empty input: no send stream")]
    Empty,
    /// The first record is not a BEGIN with `DMU_BACKUP_MAGIC`.
    #[error("not a ZFS send stream: record #{index} at byte {offset} has no BEGIN magic (found {found:#x})")]
    BadMagic {
        /// Index of the record.
        index: u64,
        /// Its offset.
        offset: u64,
        /// The eight bytes where the magic should be, read little-endian.
        found: u64,
    },
    /// `drr_type` is not one of the eleven types.
    #[error("record #{index} at byte {offset} has unknown type {code}")]
    UnknownType {
        /// Index of the record.
        index: u64,
        /// Its offset.
        offset: u64,
        /// The value found.
        code: u32,
    },
    /// The BEGIN header type is neither substream nor compound.
    #[error("record #{index} (DRR_BEGIN) at byte {offset} has unknown header type {code}")]
    UnknownHeaderType {
        /// Index of the record.
        index: u64,
        /// Its offset.
        offset: u64,
        /// The two-bit value found.
        code: u64,
    },
    /// The BEGIN sets feature bits no OpenZFS release defines.
    #[error("record #{index} (DRR_BEGIN) at byte {offset} sets unknown feature flag bit{} {}: this stream needs a newer OpenZFS than fjord knows", if .bits.len() > 1 { "s" } else { "" }, bits_list(.bits))]
    UnknownFeatures {
        /// Index of the record.
        index: u64,
        /// Its offset.
        offset: u64,
        /// The unknown bit numbers.
        bits: Vec<u32>,
    },
    /// A record's trailer checksum differs from the running checksum.
    #[error("checksum mismatch in record #{index} ({record_type}) at byte {offset}: trailer says {found}, stream gives {expected}")]
    RecordChecksum {
        /// Index of the record.
        index: u64,
        /// Its type.
        record_type: RecordType,
        /// Its offset.
        offset: u64,
        /// The running checksum up to the trailer.
        expected: Checksum,
        /// The trailer as written.
        found: Checksum,
    },
    /// An END record's checksum differs from the (sub)stream's.
    #[error("checksum mismatch in record #{index} (DRR_END) at byte {offset}: END says {found}, stream gives {expected}")]
    EndChecksum {
        /// Index of the record.
        index: u64,
        /// Its offset.
        offset: u64,
        /// The running checksum of the (sub)stream.
        expected: Checksum,
        /// The checksum the END carries.
        found: Checksum,
    },
    /// A record that OpenZFS would reject, with OpenZFS's reason.
    #[error("invalid record #{index} ({record_type}) at byte {offset}: {reason}")]
    InvalidRecord {
        /// Index of the record.
        index: u64,
        /// Its type.
        record_type: RecordType,
        /// Its offset.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A record in a place the stream grammar does not allow.
    #[error("unexpected record #{index} ({record_type}) at byte {offset}: expected {expected}")]
    Unexpected {
        /// Index of the record.
        index: u64,
        /// Its type.
        record_type: RecordType,
        /// Its offset.
        offset: u64,
        /// What was allowed there.
        expected: &'static str,
    },
    /// Bytes after the stream's final END.
    #[error("{len} byte(s) of trailing data at byte {offset}, after the stream's final DRR_END")]
    TrailingData {
        /// Where they start.
        offset: u64,
        /// How many there are so far.
        len: u64,
    },
    /// A BEGIN payload that is not a readable nvlist.
    #[error("record #{index} (DRR_BEGIN) at byte {offset} carries an unreadable nvlist: {source}")]
    BeginNvlist {
        /// Index of the record.
        index: u64,
        /// Its offset.
        offset: u64,
        /// The nvlist error.
        source: NvError,
    },
}

fn part_name(p: &Part) -> &'static str {
    match p {
        Part::Header => "header",
        Part::Payload => "payload",
    }
}

fn type_suffix(t: &Option<RecordType>) -> String {
    match t {
        Some(t) => format!(" ({t})"),
        None => String::new(),
    }
}

fn bits_list(bits: &[u32]) -> String {
    bits.iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl StreamError {
    /// The byte offset at which the problem was found, when one applies.
    pub fn offset(&self) -> Option<u64> {
        use StreamError::*;
        match self {
            Truncated { at, .. } | MissingEnd { at, .. } => Some(*at),
            Empty => Some(0),
            BadMagic { offset, .. }
            | UnknownType { offset, .. }
            | UnknownHeaderType { offset, .. }
            | UnknownFeatures { offset, .. }
            | RecordChecksum { offset, .. }
            | EndChecksum { offset, .. }
            | InvalidRecord { offset, .. }
            | Unexpected { offset, .. }
            | TrailingData { offset, .. }
            | BeginNvlist { offset, .. } => Some(*offset),
        }
    }
}
