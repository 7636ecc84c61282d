//! A stream's summary, in the spirit of `zstream dump`: what kind of stream
//! it is and how many records and bytes of each type it carries.

use crate::decoder::Record;
use crate::features::{split_versioninfo, FeatureFlags, HeaderType};
use crate::record::{Body, RecordType, RECORD_SIZE};
use crate::ByteOrder;
use serde::Serialize;

/// Counts for one record type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TypeCount {
    /// OpenZFS's name for the type (`DRR_WRITE`).
    #[serde(rename = "type")]
    pub type_name: &'static str,
    /// Records of this type.
    pub records: u64,
    /// Their payload bytes.
    pub payload_bytes: u64,
}

/// One substream's BEGIN, as far as an operator needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SubstreamInfo {
    /// `pool/dataset@snapshot`.
    pub toname: String,
    /// GUID of the snapshot sent.
    pub toguid: u64,
    /// GUID of the incremental source; 0 for a full stream.
    pub fromguid: u64,
    /// Feature flags.
    pub features: FeatureFlags,
    /// For a resumed stream (`zfs send -t`): where it resumes.
    pub resume_object: Option<u64>,
    /// Offset within `resume_object`.
    pub resume_offset: Option<u64>,
    /// Snapshot creation time (seconds since the epoch).
    pub creation_time: u64,
}

/// The kind of stream, as an operator would name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StreamKind {
    /// One dataset, from scratch.
    Full,
    /// One dataset, from a base snapshot (`-i`).
    Incremental,
    /// A resumed stream (`zfs send -t`).
    Resumed,
    /// A package of substreams (`-R`, `-I`).
    Package,
}

/// The whole summary. Feed it every record with [`Summary::add`].
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// What kind of stream.
    pub kind: Option<StreamKind>,
    /// Its byte order.
    pub byte_order: Option<ByteOrder>,
    /// The package header's `toname` (packages only).
    pub package_toname: Option<String>,
    /// The package header's `fromsnap` (packages only, when incremental).
    pub package_fromsnap: Option<String>,
    /// The substreams, in order.
    pub substreams: Vec<SubstreamInfo>,
    /// Per record type, in `drr_type` order, named as OpenZFS names them.
    pub records: Vec<TypeCount>,
    /// All records.
    pub total_records: u64,
    /// Stream length in bytes.
    pub total_bytes: u64,
    /// Logical bytes of file data carried (WRITE, WRITE_EMBEDDED and SPILL
    /// logical sizes).
    pub data_bytes: u64,
    /// Payload bytes of blocks sent as stored on disk, compressed or
    /// encrypted (`-c`, `-w`), which recompression cannot shrink.
    pub compressed_block_bytes: u64,
    /// The stream ended without END (`zfs send -S`).
    pub ended_without_end: bool,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            kind: None,
            byte_order: None,
            package_toname: None,
            package_fromsnap: None,
            substreams: Vec::new(),
            records: RecordType::ALL
                .iter()
                .map(|t| TypeCount {
                    type_name: t.name(),
                    ..TypeCount::default()
                })
                .collect(),
            total_records: 0,
            total_bytes: 0,
            data_bytes: 0,
            compressed_block_bytes: 0,
            ended_without_end: false,
        }
    }
}

impl Summary {
    /// Counts one record.
    pub fn add(&mut self, r: &Record, order: ByteOrder) {
        self.byte_order.get_or_insert(order);
        let t = r.record_type();
        let count = &mut self.records[t.code() as usize];
        count.records += 1;
        count.payload_bytes += r.payload.len() as u64;
        self.total_records += 1;
        self.total_bytes += RECORD_SIZE as u64 + r.payload.len() as u64;
        match &r.header.body {
            Body::Begin(b) => {
                let (hdrtype, features) = split_versioninfo(b.versioninfo);
                if hdrtype == HeaderType::Compound.code() {
                    self.kind = Some(StreamKind::Package);
                    self.package_toname = Some(b.toname.as_string());
                    self.package_fromsnap = r
                        .nvlist
                        .as_ref()
                        .and_then(|nv| nv.get_str("fromsnap"))
                        .map(str::to_string);
                    return;
                }
                let nv = r.nvlist.as_deref();
                let info = SubstreamInfo {
                    toname: b.toname.as_string(),
                    toguid: b.toguid,
                    fromguid: b.fromguid,
                    features,
                    resume_object: nv.and_then(|n| n.get_u64("resume_object")),
                    resume_offset: nv.and_then(|n| n.get_u64("resume_offset")),
                    creation_time: b.creation_time,
                };
                if self.kind.is_none() {
                    self.kind = Some(if features.contains(FeatureFlags::RESUMING) {
                        StreamKind::Resumed
                    } else if b.fromguid != 0 {
                        StreamKind::Incremental
                    } else {
                        StreamKind::Full
                    });
                }
                self.substreams.push(info);
            }
            Body::Write(w) => {
                self.data_bytes += w.logical_size;
                if w.compressiontype != 0 {
                    self.compressed_block_bytes += r.payload.len() as u64;
                }
            }
            Body::WriteEmbedded(e) => self.data_bytes += e.length,
            Body::Spill(s) => {
                self.data_bytes += s.length;
                if s.compressed_size != 0 {
                    self.compressed_block_bytes += r.payload.len() as u64;
                }
            }
            _ => {}
        }
    }

    /// Counts for one record type.
    pub fn count(&self, t: RecordType) -> TypeCount {
        self.records[t.code() as usize]
    }
}
