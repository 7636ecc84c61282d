//! Feature flags and header type packed in the BEGIN record's `drr_versioninfo`.
//!
//! Values from OpenZFS `include/sys/zfs_ioctl.h` (`DMU_BACKUP_FEATURE_*`).

use serde::Serialize;

/// `DMU_BACKUP_MAGIC`, the first field of every BEGIN record.
pub const BACKUP_MAGIC: u64 = 0x2f5bacbac;

/// Whether a BEGIN opens a single stream or a compound package (`-R`, `-I`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeaderType {
    /// `DMU_SUBSTREAM`: one dataset's stream (or one member of a package).
    Substream,
    /// `DMU_COMPOUNDSTREAM`: a package header; substreams follow.
    Compound,
}

impl HeaderType {
    /// The two-bit value stored in `drr_versioninfo`.
    pub fn code(self) -> u64 {
        match self {
            HeaderType::Substream => 1,
            HeaderType::Compound => 2,
        }
    }
}

/// One known feature flag: its bit and OpenZFS's name for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// Bit number within the feature field.
    pub bit: u32,
    /// Name without the `DMU_BACKUP_FEATURE_` prefix.
    pub name: &'static str,
}

/// Every feature flag OpenZFS 2.3+ knows, in bit order.
///
/// DEDUP (bit 0) and DEDUPPROPS (bit 1) are listed because old streams carry
/// them (`zfs send -D`), but OpenZFS no longer accepts them: see
/// [`FeatureFlags::check_supported`].
pub const FEATURES: &[Feature] = &[
    Feature {
        bit: 0,
        name: "DEDUP",
    },
    Feature {
        bit: 1,
        name: "DEDUPPROPS",
    },
    Feature {
        bit: 2,
        name: "SA_SPILL",
    },
    Feature {
        bit: 16,
        name: "EMBED_DATA",
    },
    Feature {
        bit: 17,
        name: "LZ4",
    },
    Feature {
        bit: 19,
        name: "LARGE_BLOCKS",
    },
    Feature {
        bit: 20,
        name: "RESUMING",
    },
    Feature {
        bit: 21,
        name: "REDACTED",
    },
    Feature {
        bit: 22,
        name: "COMPRESSED",
    },
    Feature {
        bit: 23,
        name: "LARGE_DNODE",
    },
    Feature {
        bit: 24,
        name: "RAW",
    },
    Feature {
        bit: 25,
        name: "ZSTD",
    },
    Feature {
        bit: 26,
        name: "HOLDS",
    },
    Feature {
        bit: 27,
        name: "SWITCH_TO_LARGE_BLOCKS",
    },
    Feature {
        bit: 28,
        name: "LONGNAME",
    },
    Feature {
        bit: 29,
        name: "LARGE_MICROZAP",
    },
];

/// The feature field of `drr_versioninfo` (bits 2 and up, shifted down).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FeatureFlags(pub u64);

impl FeatureFlags {
    /// `DMU_BACKUP_FEATURE_DEDUP`: a legacy deduplicated stream.
    pub const DEDUP: u64 = 1 << 0;
    /// `DMU_BACKUP_FEATURE_SA_SPILL`.
    pub const SA_SPILL: u64 = 1 << 2;
    /// `DMU_BACKUP_FEATURE_EMBED_DATA`: WRITE_EMBEDDED records may appear.
    pub const EMBED_DATA: u64 = 1 << 16;
    /// `DMU_BACKUP_FEATURE_LZ4`.
    pub const LZ4: u64 = 1 << 17;
    /// `DMU_BACKUP_FEATURE_LARGE_BLOCKS`: blocks above 128 KiB may appear.
    pub const LARGE_BLOCKS: u64 = 1 << 19;
    /// `DMU_BACKUP_FEATURE_RESUMING`: a stream resumed with `zfs send -t`.
    pub const RESUMING: u64 = 1 << 20;
    /// `DMU_BACKUP_FEATURE_REDACTED`.
    pub const REDACTED: u64 = 1 << 21;
    /// `DMU_BACKUP_FEATURE_COMPRESSED`: WRITE payloads as stored (`-c`).
    pub const COMPRESSED: u64 = 1 << 22;
    /// `DMU_BACKUP_FEATURE_LARGE_DNODE`.
    pub const LARGE_DNODE: u64 = 1 << 23;
    /// `DMU_BACKUP_FEATURE_RAW`: encrypted blocks sent as stored (`-w`).
    pub const RAW: u64 = 1 << 24;
    /// `DMU_BACKUP_FEATURE_ZSTD`.
    pub const ZSTD: u64 = 1 << 25;

    /// Bits OpenZFS receives (`DMU_BACKUP_FEATURE_MASK`). DEDUP and
    /// DEDUPPROPS are not in it: `zfs recv` refuses dedup streams and points
    /// at `zstream redup`.
    pub const SUPPORTED_MASK: u64 = (1 << 2)
        | (1 << 16)
        | (1 << 17)
        | (1 << 19)
        | (1 << 20)
        | (1 << 21)
        | (1 << 22)
        | (1 << 23)
        | (1 << 24)
        | (1 << 25)
        | (1 << 26)
        | (1 << 27)
        | (1 << 28)
        | (1 << 29);

    /// True when every bit of `mask` is set.
    pub fn contains(self, mask: u64) -> bool {
        self.0 & mask == mask
    }

    /// Names of the set bits, in bit order; unknown bits as `bit N`.
    pub fn names(self) -> Vec<String> {
        (0..64)
            .filter(|bit| self.0 & (1u64 << bit) != 0)
            .map(|bit| match FEATURES.iter().find(|f| f.bit == bit) {
                Some(f) => f.name.to_string(),
                None => format!("bit {bit}"),
            })
            .collect()
    }

    /// Bits that no OpenZFS release defines.
    pub fn unknown_bits(self) -> Vec<u32> {
        (0..64u32)
            .filter(|bit| self.0 & (1u64 << bit) != 0)
            .filter(|bit| !FEATURES.iter().any(|f| f.bit == *bit))
            .collect()
    }
}

impl Serialize for FeatureFlags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// Splits `drr_versioninfo` into header type code and feature flags.
pub fn split_versioninfo(versioninfo: u64) -> (u64, FeatureFlags) {
    (versioninfo & 0x3, FeatureFlags(versioninfo >> 2))
}

/// Packs a header type and feature flags into `drr_versioninfo`.
pub fn join_versioninfo(header: HeaderType, features: FeatureFlags) -> u64 {
    header.code() | (features.0 << 2)
}
