//! Structural checks on record headers, before their payload is read.
//!
//! These mirror the pool-independent checks of OpenZFS's `recv_check_drr_*`
//! (`module/zfs/dmu_recv.c`), with the largest block size any pool allows
//! (`SPA_MAXBLOCKSIZE`) standing in for the receiving pool's own limit. A
//! stream that fails them would be refused by `zfs recv`, so we refuse it
//! before forwarding a byte of it, with OpenZFS's wording.

use crate::features::FeatureFlags;
use crate::record::{Body, Object, Spill, Write, WriteEmbedded};

/// `SPA_MINBLOCKSIZE`.
pub const MIN_BLOCK_SIZE: u64 = 512;
/// `SPA_OLD_MAXBLOCKSIZE`: blocks above it need the LARGE_BLOCKS feature.
pub const OLD_MAX_BLOCK_SIZE: u64 = 128 * 1024;
/// `SPA_MAXBLOCKSIZE`: no record payload other than BEGIN's may exceed it.
pub const MAX_BLOCK_SIZE: u64 = 16 * 1024 * 1024;
/// libzfs's default `ZFS_SENDRECV_MAX_NVLIST` (4 × `SPA_MAXBLOCKSIZE`): the
/// largest BEGIN nvlist payload `zfs recv` accepts.
pub const MAX_BEGIN_PAYLOAD: u64 = 4 * MAX_BLOCK_SIZE;
/// `DN_MAX_OBJECT`.
pub const MAX_OBJECT: u64 = 1 << 48;
/// `BPE_PAYLOAD_SIZE`: the most data a block pointer can embed.
pub const MAX_EMBEDDED_PAYLOAD: u64 = 112;
/// `DNODES_PER_BLOCK`.
pub const DNODES_PER_BLOCK: u64 = 32;

/// Why a record is malformed, in OpenZFS's words.
pub type Reason = String;

/// Checks a non-BEGIN, non-END record body against the stream's features.
pub fn check_body(body: &Body, features: FeatureFlags) -> Result<(), Reason> {
    let raw = features.contains(FeatureFlags::RAW);
    match body {
        Body::Object(o) => check_object(o, features),
        Body::FreeObjects(f) => {
            if f.firstobj.checked_add(f.numobjs).is_none() {
                return Err(format!(
                    "DRR_FREEOBJECTS first object {} + count {} overflows",
                    f.firstobj, f.numobjs
                ));
            }
            Ok(())
        }
        Body::Write(w) => check_write(w, features, raw),
        Body::Free(f) => {
            check_object_id(f.object)?;
            if f.length != u64::MAX && f.offset.checked_add(f.length).is_none() {
                return Err(format!(
                    "DRR_FREE offset {} + length {} overflows",
                    f.offset, f.length
                ));
            }
            Ok(())
        }
        Body::Redact(r) => {
            // OpenZFS reads REDACT through the same check as FREE.
            check_object_id(r.object)?;
            if r.length != u64::MAX && r.offset.checked_add(r.length).is_none() {
                return Err(format!(
                    "DRR_REDACT offset {} + length {} overflows",
                    r.offset, r.length
                ));
            }
            Ok(())
        }
        Body::Spill(s) => check_spill(s, raw),
        Body::WriteEmbedded(e) => check_write_embedded(e, features, raw),
        Body::ObjectRange(r) => {
            if !raw {
                return Err("DRR_OBJECT_RANGE is only valid on raw streams".into());
            }
            if r.numslots != DNODES_PER_BLOCK {
                return Err(format!(
                    "DRR_OBJECT_RANGE numslots {} != {}",
                    r.numslots, DNODES_PER_BLOCK
                ));
            }
            if r.firstobj % DNODES_PER_BLOCK != 0 {
                return Err(format!(
                    "DRR_OBJECT_RANGE first object {} is not dnode-block aligned",
                    r.firstobj
                ));
            }
            match r.firstobj.checked_add(r.numslots) {
                None => Err(format!(
                    "DRR_OBJECT_RANGE first object {} + numslots {} overflows",
                    r.firstobj, r.numslots
                )),
                Some(end) if end > MAX_OBJECT => {
                    Err("DRR_OBJECT_RANGE extends past DN_MAX_OBJECT".into())
                }
                Some(_) => Ok(()),
            }
        }
        // WRITE_BYREF is checked against the records it refers to by
        // `zfs recv`; structurally it has nothing to bound.
        Body::WriteByref(w) => check_object_id(w.object),
        Body::Begin(_) | Body::End(_) => Ok(()),
    }
}

fn check_object_id(object: u64) -> Result<(), Reason> {
    if object == 0 || object >= MAX_OBJECT {
        return Err(format!(
            "object number {} outside valid range 1-{}",
            object,
            MAX_OBJECT - 1
        ));
    }
    Ok(())
}

fn check_min(size: u64, min: u64, what: &str) -> Result<(), Reason> {
    if size < min {
        return Err(format!("{what} {size} below minimum {min}"));
    }
    Ok(())
}

fn check_max(size: u64, max: u64, what: &str) -> Result<(), Reason> {
    if size > max {
        return Err(format!("{what} {size} exceeds maximum {max}"));
    }
    Ok(())
}

fn check_object(o: &Object, features: FeatureFlags) -> Result<(), Reason> {
    check_object_id(o.object)?;
    if o.blksz as u64 > OLD_MAX_BLOCK_SIZE && !features.contains(FeatureFlags::LARGE_BLOCKS) {
        return Err(format!(
            "DRR_OBJECT block size {} requires DMU_BACKUP_FEATURE_LARGE_BLOCKS",
            o.blksz
        ));
    }
    if !(o.blksz as u64).is_multiple_of(MIN_BLOCK_SIZE) {
        return Err(format!(
            "DRR_OBJECT block size {} is not a multiple of {}",
            o.blksz, MIN_BLOCK_SIZE
        ));
    }
    check_min(o.blksz as u64, MIN_BLOCK_SIZE, "DRR_OBJECT block size")?;
    check_max(o.blksz as u64, MAX_BLOCK_SIZE, "DRR_OBJECT block size")?;
    check_max(
        Body::Object(o.clone()).payload_len(0),
        MAX_BLOCK_SIZE,
        "DRR_OBJECT bonus payload size",
    )
}

fn check_write(w: &Write, features: FeatureFlags, raw: bool) -> Result<(), Reason> {
    check_object_id(w.object)?;
    check_min(w.logical_size, MIN_BLOCK_SIZE, "DRR_WRITE logical size")?;
    check_max(w.logical_size, MAX_BLOCK_SIZE, "DRR_WRITE logical size")?;
    if w.logical_size > OLD_MAX_BLOCK_SIZE && !features.contains(FeatureFlags::LARGE_BLOCKS) {
        return Err(format!(
            "DRR_WRITE logical size {} requires DMU_BACKUP_FEATURE_LARGE_BLOCKS",
            w.logical_size
        ));
    }
    let payload = if w.compressiontype != 0 {
        w.compressed_size
    } else {
        w.logical_size
    };
    check_max(payload, MAX_BLOCK_SIZE, "DRR_WRITE payload size")?;
    if raw {
        if w.compressed_size == 0 {
            return Err("DRR_WRITE compressed size must be non-zero on raw streams".into());
        }
        if w.logical_size < w.compressed_size {
            return Err(format!(
                "DRR_WRITE logical size {} < compressed size {}",
                w.logical_size, w.compressed_size
            ));
        }
    } else if w.compressiontype != 0 {
        if !features.contains(FeatureFlags::COMPRESSED) {
            return Err(
                "DRR_WRITE compressed payload requires DMU_BACKUP_FEATURE_COMPRESSED".into(),
            );
        }
        if w.compressed_size == 0 {
            return Err("DRR_WRITE compressed size must be non-zero".into());
        }
        if w.logical_size < w.compressed_size {
            return Err(format!(
                "DRR_WRITE logical size {} < compressed size {}",
                w.logical_size, w.compressed_size
            ));
        }
    } else if w.compressed_size != 0 {
        return Err("DRR_WRITE compressed size must be zero when uncompressed".into());
    }
    if w.offset.checked_add(w.logical_size).is_none() {
        return Err(format!(
            "DRR_WRITE offset {} + logical size {} overflows",
            w.offset, w.logical_size
        ));
    }
    Ok(())
}

fn check_spill(s: &Spill, raw: bool) -> Result<(), Reason> {
    check_object_id(s.object)?;
    check_min(s.length, MIN_BLOCK_SIZE, "DRR_SPILL logical size")?;
    check_max(s.length, MAX_BLOCK_SIZE, "DRR_SPILL logical size")?;
    let payload = if s.compressed_size != 0 {
        s.compressed_size
    } else {
        s.length
    };
    check_max(payload, MAX_BLOCK_SIZE, "DRR_SPILL payload size")?;
    if raw && s.compressed_size == 0 {
        return Err("DRR_SPILL payload size must be non-zero on raw streams".into());
    }
    if !raw && s.compressed_size != 0 {
        return Err("DRR_SPILL compressed payload size must be zero on non-raw streams".into());
    }
    if s.compressed_size != 0 && s.length < s.compressed_size {
        return Err(format!(
            "DRR_SPILL logical size {} < compressed size {}",
            s.length, s.compressed_size
        ));
    }
    Ok(())
}

fn check_write_embedded(
    e: &WriteEmbedded,
    features: FeatureFlags,
    raw: bool,
) -> Result<(), Reason> {
    if raw {
        return Err("DRR_WRITE_EMBEDDED is invalid on raw streams".into());
    }
    if !features.contains(FeatureFlags::EMBED_DATA) {
        return Err("DRR_WRITE_EMBEDDED requires DMU_BACKUP_FEATURE_EMBED_DATA".into());
    }
    check_object_id(e.object)?;
    check_max(e.length, MAX_BLOCK_SIZE, "DRR_WRITE_EMBEDDED length")?;
    if e.length > OLD_MAX_BLOCK_SIZE && !features.contains(FeatureFlags::LARGE_BLOCKS) {
        return Err(format!(
            "DRR_WRITE_EMBEDDED length {} requires DMU_BACKUP_FEATURE_LARGE_BLOCKS",
            e.length
        ));
    }
    check_max(
        e.lsize as u64,
        MAX_BLOCK_SIZE,
        "DRR_WRITE_EMBEDDED logical size",
    )?;
    check_max(
        e.psize as u64,
        MAX_EMBEDDED_PAYLOAD,
        "DRR_WRITE_EMBEDDED payload size",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undersized_write_is_refused_with_openzfs_wording() {
        let w = Body::Write(Write {
            object: 2,
            logical_size: 256,
            ..Default::default()
        });
        let err = check_body(&w, FeatureFlags::default()).unwrap_err();
        assert_eq!(err, "DRR_WRITE logical size 256 below minimum 512");
    }

    #[test]
    fn large_block_needs_its_feature() {
        let w = Body::Write(Write {
            object: 2,
            logical_size: 1 << 20,
            ..Default::default()
        });
        assert!(check_body(&w, FeatureFlags::default())
            .unwrap_err()
            .contains("LARGE_BLOCKS"));
        assert!(check_body(&w, FeatureFlags(FeatureFlags::LARGE_BLOCKS)).is_ok());
    }

    #[test]
    fn oversized_payload_is_refused() {
        let w = Body::Write(Write {
            object: 2,
            logical_size: 32 << 20,
            ..Default::default()
        });
        let err = check_body(&w, FeatureFlags(FeatureFlags::LARGE_BLOCKS)).unwrap_err();
        assert!(err.contains("exceeds maximum 16777216"), "{err}");
    }

    #[test]
    fn embedded_payload_bounded() {
        let e = Body::WriteEmbedded(WriteEmbedded {
            object: 1,
            length: 512,
            psize: 113,
            ..Default::default()
        });
        let err = check_body(&e, FeatureFlags(FeatureFlags::EMBED_DATA)).unwrap_err();
        assert!(
            err.contains("payload size 113 exceeds maximum 112"),
            "{err}"
        );
    }
}
