//! Synthetic send streams with correct checksums, for tests and benchmarks.
//!
//! ```
//! use fjord_stream::{builder::StreamBuilder, ByteOrder, Decoder};
//! let mut b = StreamBuilder::full(ByteOrder::Little, "tank/fs@a", 0x1234);
//! b.object(2, 131072, &[0u8; 168]);
//! b.write(2, 0, &vec![7u8; 131072]);
//! let stream = b.finish();
//! let mut d = Decoder::default();
//! d.feed(&stream);
//! while let Some(_) = d.next_record().unwrap() {}
//! d.finish().unwrap();
//! ```

use crate::encoder::{Encoder, EndKind};
use crate::features::{join_versioninfo, FeatureFlags, HeaderType, BACKUP_MAGIC};
use crate::nvlist::{self, Encoding, NvList};
use crate::record::{
    Begin, Body, End, Free, FreeObjects, Object, Spill, ToName, Write, WriteEmbedded,
};
use crate::ByteOrder;

/// Builds one substream (optionally inside a [`PackageBuilder`]).
pub struct StreamBuilder {
    enc: Encoder,
    out: Vec<u8>,
    toguid: u64,
    features: FeatureFlags,
}

impl StreamBuilder {
    /// A full stream of `toname` with snapshot guid `toguid`.
    pub fn full(order: ByteOrder, toname: &str, toguid: u64) -> StreamBuilder {
        StreamBuilder::with(order, toname, toguid, 0, FeatureFlags::default(), None)
    }

    /// A full stream of the volume (zvol) `toname`.
    pub fn volume(order: ByteOrder, toname: &str, toguid: u64) -> StreamBuilder {
        StreamBuilder::begin(order, toname, toguid, 0, FeatureFlags::default(), None, 3)
    }

    /// A stream with every BEGIN field chosen: `fromguid` non-zero makes it
    /// incremental, `nvlist` is packed NATIVE as the BEGIN payload.
    pub fn with(
        order: ByteOrder,
        toname: &str,
        toguid: u64,
        fromguid: u64,
        features: FeatureFlags,
        nvlist: Option<&NvList>,
    ) -> StreamBuilder {
        StreamBuilder::begin(order, toname, toguid, fromguid, features, nvlist, 2)
    }

    /// The BEGIN record, of a file system (`objset_type` 2) or a volume (3).
    fn begin(
        order: ByteOrder,
        toname: &str,
        toguid: u64,
        fromguid: u64,
        features: FeatureFlags,
        nvlist: Option<&NvList>,
        objset_type: u32,
    ) -> StreamBuilder {
        let mut b = StreamBuilder {
            enc: Encoder::new(order),
            out: Vec::new(),
            toguid,
            features,
        };
        let payload = nvlist
            .map(|l| nvlist::encode(l, Encoding::Native(order)))
            .unwrap_or_default();
        let begin = Body::Begin(Begin {
            magic: BACKUP_MAGIC,
            versioninfo: join_versioninfo(HeaderType::Substream, features),
            creation_time: 1_764_000_000,
            objset_type,
            flags: 4, // DRR_FLAG_FREERECORDS, as modern zfs send sets
            toguid,
            fromguid,
            toname: ToName::new(toname),
        });
        b.enc
            .write_sealed(begin, &payload, EndKind::Substream, &mut b.out);
        b
    }

    /// The stream's feature flags.
    pub fn features(&self) -> FeatureFlags {
        self.features
    }

    /// An OBJECT record with `bonus` as its bonus buffer (padded to 8).
    pub fn object(&mut self, object: u64, blksz: u32, bonus: &[u8]) -> &mut Self {
        let mut payload = bonus.to_vec();
        payload.resize(bonus.len().div_ceil(8) * 8, 0);
        let body = Body::Object(Object {
            object,
            object_type: 19, // DMU_OT_PLAIN_FILE_CONTENTS
            bonustype: 44,   // DMU_OT_SA
            blksz,
            bonuslen: bonus.len() as u32,
            checksumtype: 7,
            compress: 15,
            dn_slots: 1,
            toguid: self.toguid,
            ..Default::default()
        });
        self.enc
            .write_sealed(body, &payload, EndKind::Substream, &mut self.out);
        self
    }

    /// A WRITE of `data` (its length is the logical size) at `offset`.
    pub fn write(&mut self, object: u64, offset: u64, data: &[u8]) -> &mut Self {
        let body = Body::Write(Write {
            object,
            object_type: 19,
            offset,
            logical_size: data.len() as u64,
            toguid: self.toguid,
            checksumtype: 7,
            ..Default::default()
        });
        self.enc
            .write_sealed(body, data, EndKind::Substream, &mut self.out);
        self
    }

    /// A WRITE whose payload is a block compressed on disk (`zfs send -c`):
    /// `compressed` bytes standing for `logical_size` bytes.
    pub fn write_compressed(
        &mut self,
        object: u64,
        offset: u64,
        logical_size: u64,
        compressiontype: u8,
        compressed: &[u8],
    ) -> &mut Self {
        let body = Body::Write(Write {
            object,
            object_type: 19,
            offset,
            logical_size,
            toguid: self.toguid,
            checksumtype: 7,
            compressiontype,
            compressed_size: compressed.len() as u64,
            ..Default::default()
        });
        self.enc
            .write_sealed(body, compressed, EndKind::Substream, &mut self.out);
        self
    }

    /// A WRITE_EMBEDDED of `data` (at most 112 bytes) for a block of `length`.
    pub fn write_embedded(
        &mut self,
        object: u64,
        offset: u64,
        length: u64,
        data: &[u8],
    ) -> &mut Self {
        let mut payload = data.to_vec();
        payload.resize(data.len().div_ceil(8) * 8, 0);
        let body = Body::WriteEmbedded(WriteEmbedded {
            object,
            offset,
            length,
            toguid: self.toguid,
            compression: 15,
            etype: 0,
            lsize: length as u32,
            psize: data.len() as u32,
        });
        self.enc
            .write_sealed(body, &payload, EndKind::Substream, &mut self.out);
        self
    }

    /// A SPILL block.
    pub fn spill(&mut self, object: u64, data: &[u8]) -> &mut Self {
        let body = Body::Spill(Spill {
            object,
            length: data.len() as u64,
            toguid: self.toguid,
            ..Default::default()
        });
        self.enc
            .write_sealed(body, data, EndKind::Substream, &mut self.out);
        self
    }

    /// A FREE of `length` bytes of `object` from `offset`.
    pub fn free(&mut self, object: u64, offset: u64, length: u64) -> &mut Self {
        let body = Body::Free(Free {
            object,
            offset,
            length,
            toguid: self.toguid,
        });
        self.enc
            .write_sealed(body, &[], EndKind::Substream, &mut self.out);
        self
    }

    /// A FREEOBJECTS of `numobjs` objects from `firstobj`.
    pub fn free_objects(&mut self, firstobj: u64, numobjs: u64) -> &mut Self {
        let body = Body::FreeObjects(FreeObjects {
            firstobj,
            numobjs,
            toguid: self.toguid,
        });
        self.enc
            .write_sealed(body, &[], EndKind::Substream, &mut self.out);
        self
    }

    /// Any record body, sealed with the running checksum; `payload` must
    /// have the length the body's payload rule gives.
    pub fn record(&mut self, body: Body, payload: &[u8]) -> &mut Self {
        self.enc
            .write_sealed(body, payload, EndKind::Substream, &mut self.out);
        self
    }

    /// The guid records of this stream carry (`toguid`).
    pub fn toguid(&self) -> u64 {
        self.toguid
    }

    /// Closes the substream with its END and returns the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let end = Body::End(End {
            toguid: self.toguid,
            ..Default::default()
        });
        self.enc
            .write_sealed(end, &[], EndKind::Substream, &mut self.out);
        self.out
    }

    /// Returns the bytes without an END, as `zfs send -S` leaves a stream.
    pub fn finish_without_end(self) -> Vec<u8> {
        self.out
    }
}

/// Builds a compound package (`zfs send -R` / `-I`): a header, substreams,
/// and the final all-zero END.
pub struct PackageBuilder {
    order: ByteOrder,
    out: Vec<u8>,
}

impl PackageBuilder {
    /// A package whose header names `toname` and carries `header_nvlist`
    /// (packed XDR, as libzfs does).
    pub fn new(order: ByteOrder, toname: &str, header_nvlist: &NvList) -> PackageBuilder {
        let mut enc = Encoder::new(order);
        let mut out = Vec::new();
        let payload = nvlist::encode(header_nvlist, Encoding::Xdr);
        let begin = Body::Begin(Begin {
            magic: BACKUP_MAGIC,
            versioninfo: join_versioninfo(HeaderType::Compound, FeatureFlags::default()),
            toname: ToName::new(toname),
            ..Default::default()
        });
        enc.write_sealed(begin, &payload, EndKind::Substream, &mut out);
        enc.write_sealed(
            Body::End(End::default()),
            &[],
            EndKind::PackageHeader,
            &mut out,
        );
        PackageBuilder { order, out }
    }

    /// The byte order substreams must use.
    pub fn order(&self) -> ByteOrder {
        self.order
    }

    /// Appends a finished substream (from [`StreamBuilder::finish`]).
    pub fn substream(&mut self, stream: &[u8]) -> &mut Self {
        self.out.extend_from_slice(stream);
        self
    }

    /// Appends the final all-zero END and returns the bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let mut enc = Encoder::new(self.order);
        enc.write_sealed(
            Body::End(End::default()),
            &[],
            EndKind::Conclusion,
            &mut self.out,
        );
        self.out
    }
}
