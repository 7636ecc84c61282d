//! The 312-byte `dmu_replay_record_t` and its eleven record types.
//!
//! Field offsets are those of the C structure in OpenZFS
//! `include/sys/zfs_ioctl.h`: `drr_type` (u32) at 0, `drr_payloadlen` (u32)
//! at 4, the type-specific union from 8, and for every type but BEGIN the
//! running Fletcher-4 checksum (the "trailer") in the last 32 bytes.

use crate::{ByteOrder, Checksum};

/// Size of one record header on the wire.
pub const RECORD_SIZE: usize = 312;
/// Offset of the trailer checksum within a record.
pub const TRAILER_OFFSET: usize = RECORD_SIZE - 32;
/// Length of `drr_toname` (`MAXNAMELEN`).
pub const TONAME_LEN: usize = 256;

// The layout of the C structure: BEGIN runs to the very end (its toname
// overlaps the trailer); the widest other bodies end before the trailer.
const _: () = assert!(56 + TONAME_LEN == RECORD_SIZE);
const _: () = assert!(124 + 16 <= TRAILER_OFFSET); // WRITE's mac
const _: () = assert!(84 + 4 <= TRAILER_OFFSET); // SPILL's type

/// The record types, `drr_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordType {
    /// Opens a stream (or a compound package).
    Begin = 0,
    /// An object (dnode) and its bonus buffer.
    Object = 1,
    /// A range of objects to free.
    FreeObjects = 2,
    /// A block of data.
    Write = 3,
    /// A range of an object to free.
    Free = 4,
    /// Closes a stream, carrying its checksum.
    End = 5,
    /// A block that repeats an earlier one (legacy dedup streams).
    WriteByref = 6,
    /// A spill block.
    Spill = 7,
    /// A block small enough to live in its block pointer.
    WriteEmbedded = 8,
    /// Encryption parameters for a range of objects (raw streams).
    ObjectRange = 9,
    /// A redacted range.
    Redact = 10,
}

impl RecordType {
    /// Every type, in `drr_type` order.
    pub const ALL: [RecordType; 11] = [
        RecordType::Begin,
        RecordType::Object,
        RecordType::FreeObjects,
        RecordType::Write,
        RecordType::Free,
        RecordType::End,
        RecordType::WriteByref,
        RecordType::Spill,
        RecordType::WriteEmbedded,
        RecordType::ObjectRange,
        RecordType::Redact,
    ];

    /// The type for a `drr_type` value, if it is one.
    pub fn from_code(code: u32) -> Option<RecordType> {
        RecordType::ALL.get(code as usize).copied()
    }

    /// The `drr_type` value.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// OpenZFS's name, as `zstream dump` prints it (`DRR_WRITE`).
    pub fn name(self) -> &'static str {
        match self {
            RecordType::Begin => "DRR_BEGIN",
            RecordType::Object => "DRR_OBJECT",
            RecordType::FreeObjects => "DRR_FREEOBJECTS",
            RecordType::Write => "DRR_WRITE",
            RecordType::Free => "DRR_FREE",
            RecordType::End => "DRR_END",
            RecordType::WriteByref => "DRR_WRITE_BYREF",
            RecordType::Spill => "DRR_SPILL",
            RecordType::WriteEmbedded => "DRR_WRITE_EMBEDDED",
            RecordType::ObjectRange => "DRR_OBJECT_RANGE",
            RecordType::Redact => "DRR_REDACT",
        }
    }
}

impl std::fmt::Display for RecordType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A fixed-size field of a record, read and written in the stream's order.
trait Field: Sized {
    fn get(raw: &[u8], o: ByteOrder) -> Self;
    fn put(&self, raw: &mut [u8], o: ByteOrder);
}

impl Field for u8 {
    fn get(raw: &[u8], _: ByteOrder) -> Self {
        raw[0]
    }
    fn put(&self, raw: &mut [u8], _: ByteOrder) {
        raw[0] = *self;
    }
}

impl Field for u32 {
    fn get(raw: &[u8], o: ByteOrder) -> Self {
        o.u32(raw)
    }
    fn put(&self, raw: &mut [u8], o: ByteOrder) {
        o.put_u32(raw, *self)
    }
}

impl Field for u64 {
    fn get(raw: &[u8], o: ByteOrder) -> Self {
        o.u64(raw)
    }
    fn put(&self, raw: &mut [u8], o: ByteOrder) {
        o.put_u64(raw, *self)
    }
}

impl<const N: usize> Field for [u8; N] {
    fn get(raw: &[u8], _: ByteOrder) -> Self {
        let mut a = [0u8; N];
        a.copy_from_slice(&raw[..N]);
        a
    }
    fn put(&self, raw: &mut [u8], _: ByteOrder) {
        raw[..N].copy_from_slice(self)
    }
}

impl Field for Checksum {
    fn get(raw: &[u8], o: ByteOrder) -> Self {
        Checksum::from_bytes(raw, o)
    }
    fn put(&self, raw: &mut [u8], o: ByteOrder) {
        self.write_bytes(raw, o)
    }
}

/// Declares a record body: its fields with their byte offsets in the record.
macro_rules! record_body {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty = $off:expr),* $(,)? }) => {
        $(#[$m])*
        ///
        /// Fields are those of the C structure without the `drr_` prefix.
        #[allow(missing_docs)]
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct $name { $($(#[$fm])* pub $field: $ty),* }

        impl $name {
            fn read(raw: &[u8; RECORD_SIZE], o: ByteOrder) -> Self {
                Self { $($field: <$ty as Field>::get(&raw[$off..], o)),* }
            }
            fn write(&self, raw: &mut [u8; RECORD_SIZE], o: ByteOrder) {
                $(Field::put(&self.$field, &mut raw[$off..], o);)*
            }
        }
    };
}

/// The deduplication key of WRITE and WRITE_BYREF (`ddt_key_t`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DedupKey {
    /// The block's checksum.
    pub cksum: Checksum,
    /// Packed block properties (`ddk_prop`).
    pub prop: u64,
}

impl Field for DedupKey {
    fn get(raw: &[u8], o: ByteOrder) -> Self {
        DedupKey {
            cksum: Checksum::from_bytes(raw, o),
            prop: o.u64(&raw[32..]),
        }
    }
    fn put(&self, raw: &mut [u8], o: ByteOrder) {
        self.cksum.write_bytes(raw, o);
        o.put_u64(&mut raw[32..], self.prop);
    }
}

/// BEGIN's `drr_toname`, 256 bytes, NUL-padded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ToName(pub [u8; TONAME_LEN]);

impl Default for ToName {
    fn default() -> Self {
        ToName([0; TONAME_LEN])
    }
}

impl ToName {
    /// A name from a string; longer than 255 bytes is cut.
    pub fn new(name: &str) -> ToName {
        let mut a = [0u8; TONAME_LEN];
        let n = name.len().min(TONAME_LEN - 1);
        a[..n].copy_from_slice(&name.as_bytes()[..n]);
        ToName(a)
    }

    /// The name up to its first NUL, lossily decoded.
    pub fn as_string(&self) -> String {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(TONAME_LEN);
        String::from_utf8_lossy(&self.0[..end]).into_owned()
    }
}

impl std::fmt::Debug for ToName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_string())
    }
}

impl Field for ToName {
    fn get(raw: &[u8], o: ByteOrder) -> Self {
        ToName(<[u8; TONAME_LEN]>::get(raw, o))
    }
    fn put(&self, raw: &mut [u8], o: ByteOrder) {
        self.0.put(raw, o)
    }
}

record_body!(
    /// `struct drr_begin`. Its `toname` runs into the trailer's place, which
    /// is why BEGIN carries no trailer checksum.
    Begin {
        /// `DMU_BACKUP_MAGIC` in the sender's byte order.
        magic: u64 = 8,
        /// Header type (bits 0-1) and feature flags (bits 2+).
        versioninfo: u64 = 16,
        /// Snapshot creation time, seconds since the epoch.
        creation_time: u64 = 24,
        /// `dmu_objset_type_t` (2 = ZFS file system, 3 = zvol).
        objset_type: u32 = 32,
        /// `DRR_FLAG_*`.
        flags: u32 = 36,
        /// GUID of the snapshot sent.
        toguid: u64 = 40,
        /// GUID of the incremental source, 0 for a full stream.
        fromguid: u64 = 48,
        /// `pool/dataset@snapshot`.
        toname: ToName = 56,
    }
);

record_body!(
    /// `struct drr_end`.
    End {
        /// Checksum of the stream up to this record.
        checksum: Checksum = 8,
        /// GUID of the snapshot sent; 0 on package END records.
        toguid: u64 = 40,
    }
);

record_body!(
    /// `struct drr_object`.
    Object {
        object: u64 = 8,
        object_type: u32 = 16,
        bonustype: u32 = 20,
        blksz: u32 = 24,
        bonuslen: u32 = 28,
        checksumtype: u8 = 32,
        compress: u8 = 33,
        dn_slots: u8 = 34,
        flags: u8 = 35,
        raw_bonuslen: u32 = 36,
        toguid: u64 = 40,
        indblkshift: u8 = 48,
        nlevels: u8 = 49,
        nblkptr: u8 = 50,
        maxblkid: u64 = 56,
    }
);

record_body!(
    /// `struct drr_freeobjects`.
    FreeObjects {
        firstobj: u64 = 8,
        numobjs: u64 = 16,
        toguid: u64 = 24,
    }
);

record_body!(
    /// `struct drr_write`.
    Write {
        object: u64 = 8,
        object_type: u32 = 16,
        offset: u64 = 24,
        logical_size: u64 = 32,
        toguid: u64 = 40,
        checksumtype: u8 = 48,
        flags: u8 = 49,
        /// Non-zero when the payload is the block as compressed on disk.
        compressiontype: u8 = 50,
        key: DedupKey = 56,
        compressed_size: u64 = 96,
        salt: [u8; 8] = 104,
        iv: [u8; 12] = 112,
        mac: [u8; 16] = 124,
    }
);

record_body!(
    /// `struct drr_free`.
    Free {
        object: u64 = 8,
        offset: u64 = 16,
        /// `u64::MAX` means "to the end of the object".
        length: u64 = 24,
        toguid: u64 = 32,
    }
);

record_body!(
    /// `struct drr_write_byref`.
    WriteByref {
        object: u64 = 8,
        offset: u64 = 16,
        length: u64 = 24,
        toguid: u64 = 32,
        refguid: u64 = 40,
        refobject: u64 = 48,
        refoffset: u64 = 56,
        checksumtype: u8 = 64,
        flags: u8 = 65,
        key: DedupKey = 72,
    }
);

record_body!(
    /// `struct drr_spill`.
    Spill {
        object: u64 = 8,
        length: u64 = 16,
        toguid: u64 = 24,
        flags: u8 = 32,
        compressiontype: u8 = 33,
        compressed_size: u64 = 40,
        salt: [u8; 8] = 48,
        iv: [u8; 12] = 56,
        mac: [u8; 16] = 68,
        object_type: u32 = 84,
    }
);

record_body!(
    /// `struct drr_write_embedded`.
    WriteEmbedded {
        object: u64 = 8,
        offset: u64 = 16,
        length: u64 = 24,
        toguid: u64 = 32,
        compression: u8 = 40,
        etype: u8 = 41,
        lsize: u32 = 48,
        psize: u32 = 52,
    }
);

record_body!(
    /// `struct drr_object_range`.
    ObjectRange {
        firstobj: u64 = 8,
        numslots: u64 = 16,
        toguid: u64 = 24,
        salt: [u8; 8] = 32,
        iv: [u8; 12] = 40,
        mac: [u8; 16] = 52,
        flags: u8 = 68,
    }
);

record_body!(
    /// `struct drr_redact`.
    Redact {
        object: u64 = 8,
        offset: u64 = 16,
        length: u64 = 24,
        toguid: u64 = 32,
    }
);

/// The type-specific part of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Body {
    Begin(Begin),
    End(End),
    Object(Object),
    FreeObjects(FreeObjects),
    Write(Write),
    Free(Free),
    WriteByref(WriteByref),
    Spill(Spill),
    WriteEmbedded(WriteEmbedded),
    ObjectRange(ObjectRange),
    Redact(Redact),
}

fn round_up_8(n: u64) -> u64 {
    n.div_ceil(8) * 8
}

impl Body {
    /// The record type of this body.
    pub fn record_type(&self) -> RecordType {
        match self {
            Body::Begin(_) => RecordType::Begin,
            Body::End(_) => RecordType::End,
            Body::Object(_) => RecordType::Object,
            Body::FreeObjects(_) => RecordType::FreeObjects,
            Body::Write(_) => RecordType::Write,
            Body::Free(_) => RecordType::Free,
            Body::WriteByref(_) => RecordType::WriteByref,
            Body::Spill(_) => RecordType::Spill,
            Body::WriteEmbedded(_) => RecordType::WriteEmbedded,
            Body::ObjectRange(_) => RecordType::ObjectRange,
            Body::Redact(_) => RecordType::Redact,
        }
    }

    /// Parses the body of a record of type `t`.
    pub fn read(t: RecordType, raw: &[u8; RECORD_SIZE], o: ByteOrder) -> Body {
        match t {
            RecordType::Begin => Body::Begin(Begin::read(raw, o)),
            RecordType::End => Body::End(End::read(raw, o)),
            RecordType::Object => Body::Object(Object::read(raw, o)),
            RecordType::FreeObjects => Body::FreeObjects(FreeObjects::read(raw, o)),
            RecordType::Write => Body::Write(Write::read(raw, o)),
            RecordType::Free => Body::Free(Free::read(raw, o)),
            RecordType::WriteByref => Body::WriteByref(WriteByref::read(raw, o)),
            RecordType::Spill => Body::Spill(Spill::read(raw, o)),
            RecordType::WriteEmbedded => Body::WriteEmbedded(WriteEmbedded::read(raw, o)),
            RecordType::ObjectRange => Body::ObjectRange(ObjectRange::read(raw, o)),
            RecordType::Redact => Body::Redact(Redact::read(raw, o)),
        }
    }

    fn write(&self, raw: &mut [u8; RECORD_SIZE], o: ByteOrder) {
        match self {
            Body::Begin(b) => b.write(raw, o),
            Body::End(b) => b.write(raw, o),
            Body::Object(b) => b.write(raw, o),
            Body::FreeObjects(b) => b.write(raw, o),
            Body::Write(b) => b.write(raw, o),
            Body::Free(b) => b.write(raw, o),
            Body::WriteByref(b) => b.write(raw, o),
            Body::Spill(b) => b.write(raw, o),
            Body::WriteEmbedded(b) => b.write(raw, o),
            Body::ObjectRange(b) => b.write(raw, o),
            Body::Redact(b) => b.write(raw, o),
        }
    }

    /// The length of the payload that follows the header, by OpenZFS's rules
    /// (`DRR_WRITE_PAYLOAD_SIZE`, `DRR_SPILL_PAYLOAD_SIZE`,
    /// `DRR_OBJECT_PAYLOAD_SIZE`, `P2ROUNDUP(drr_psize, 8)`); BEGIN uses
    /// `drr_payloadlen`, all other types have none.
    pub fn payload_len(&self, payloadlen_field: u32) -> u64 {
        match self {
            Body::Begin(_) => payloadlen_field as u64,
            Body::Object(o) if o.raw_bonuslen != 0 => o.raw_bonuslen as u64,
            Body::Object(o) => round_up_8(o.bonuslen as u64),
            Body::Write(w) if w.compressiontype != 0 => w.compressed_size,
            Body::Write(w) => w.logical_size,
            Body::Spill(s) if s.compressed_size != 0 => s.compressed_size,
            Body::Spill(s) => s.length,
            Body::WriteEmbedded(e) => round_up_8(e.psize as u64),
            _ => 0,
        }
    }
}

/// A parsed record header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The type-specific fields.
    pub body: Body,
    /// `drr_payloadlen` as stored. Only BEGIN gives it meaning; OpenZFS
    /// leaves it zero elsewhere and we keep whatever was there.
    pub payloadlen_field: u32,
    /// The trailer checksum (zero on BEGIN, where those bytes are `toname`).
    pub trailer: Checksum,
}

impl Header {
    /// A header for `body` with a zero trailer and `payloadlen_field` set
    /// from the body (BEGIN) or zero.
    pub fn new(body: Body, begin_payload_len: u32) -> Header {
        let payloadlen_field = match body {
            Body::Begin(_) => begin_payload_len,
            _ => 0,
        };
        Header {
            body,
            payloadlen_field,
            trailer: Checksum::ZERO,
        }
    }

    /// The record type.
    pub fn record_type(&self) -> RecordType {
        self.body.record_type()
    }

    /// Length of the payload following this header.
    pub fn payload_len(&self) -> u64 {
        self.body.payload_len(self.payloadlen_field)
    }

    /// Parses a header whose type code has been checked.
    pub fn parse(t: RecordType, raw: &[u8; RECORD_SIZE], o: ByteOrder) -> Header {
        let body = Body::read(t, raw, o);
        let trailer = match t {
            RecordType::Begin => Checksum::ZERO,
            _ => Checksum::from_bytes(&raw[TRAILER_OFFSET..], o),
        };
        Header {
            body,
            payloadlen_field: o.u32(&raw[4..]),
            trailer,
        }
    }

    /// Serialises the header in byte order `o`.
    pub fn to_bytes(&self, o: ByteOrder) -> [u8; RECORD_SIZE] {
        let mut raw = [0u8; RECORD_SIZE];
        o.put_u32(&mut raw[0..], self.record_type().code());
        o.put_u32(&mut raw[4..], self.payloadlen_field);
        if !matches!(self.body, Body::Begin(_)) {
            self.trailer.write_bytes(&mut raw[TRAILER_OFFSET..], o);
        }
        self.body.write(&mut raw, o);
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_in_both_orders() {
        let body = Body::Write(Write {
            object: 7,
            object_type: 19,
            offset: 131072,
            logical_size: 131072,
            toguid: 0xdead_beef,
            checksumtype: 7,
            flags: 1,
            compressiontype: 0,
            key: DedupKey {
                cksum: Checksum([1, 2, 3, 4]),
                prop: 5,
            },
            compressed_size: 0,
            salt: [1; 8],
            iv: [2; 12],
            mac: [3; 16],
        });
        let mut h = Header::new(body, 0);
        h.trailer = Checksum([9, 8, 7, 6]);
        for o in [ByteOrder::Little, ByteOrder::Big] {
            let raw = h.to_bytes(o);
            assert_eq!(Header::parse(RecordType::Write, &raw, o), h);
        }
    }

    #[test]
    fn payload_length_rules() {
        let obj = Body::Object(Object {
            bonuslen: 13,
            ..Default::default()
        });
        assert_eq!(obj.payload_len(0), 16);
        let raw_obj = Body::Object(Object {
            bonuslen: 13,
            raw_bonuslen: 320,
            ..Default::default()
        });
        assert_eq!(raw_obj.payload_len(0), 320);
        let cw = Body::Write(Write {
            logical_size: 4096,
            compressiontype: 15,
            compressed_size: 512,
            ..Default::default()
        });
        assert_eq!(cw.payload_len(0), 512);
        let we = Body::WriteEmbedded(WriteEmbedded {
            psize: 41,
            ..Default::default()
        });
        assert_eq!(we.payload_len(0), 48);
        assert_eq!(Body::Free(Free::default()).payload_len(99), 0);
        assert_eq!(Body::Begin(Begin::default()).payload_len(99), 99);
    }
}
