//! What a send stream says about the data it carries, measured on the
//! way through: the share of new block bytes that are incompressible and
//! the share that rewrites files which existed at the base snapshot.
//!
//! [`Meter`] is sans-IO (fed bytes in pieces of any size); [`MeteredStream`]
//! is the thin edge that feeds it from the stream a transfer reads. The
//! meter only walks record headers; it never judges a stream's validity
//! (the transfer's own decoder does). A stream it cannot follow stops the
//! measuring, never the transfer.
//!
//! - **Incompressible**: each WRITE's logical bytes. A block ZFS stored
//!   compressed (`zfs send -c`, `compressiontype` set) was compressible;
//!   any other payload gets the pack stage's entropy probe
//!   ([`fjord_pack::probe::looks_compressible`]); encrypted blocks of a raw
//!   stream (`zfs send -w`) cannot be judged and are left out.
//! - **Rewritten**: WRITE bytes landing on a ZPL object whose generation
//!   (the txg that created the file, from the system attributes in its
//!   OBJECT record's bonus buffer) is at or before the base snapshot's
//!   creation txg: a file that existed at the base is being rewritten.
//!   Bytes of new files, and of objects whose generation cannot be read
//!   (zvols, encrypted bonus buffers, non-ZPL objects), are not counted
//!   in either side of this share.

use fjord_stream::features::{split_versioninfo, BACKUP_MAGIC};
use fjord_stream::{Body, ByteOrder, FeatureFlags, Header, RecordType, RECORD_SIZE};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};

/// `DMU_OT_SA`: a bonus buffer of system attributes (ZPL files since v5).
const BONUS_SA: u32 = 44;
/// `DMU_OT_ZNODE`: the legacy `znode_phys_t` bonus buffer.
const BONUS_ZNODE: u32 = 17;
/// `SA_MAGIC`, the first word of a system-attribute bonus buffer.
const SA_MAGIC: u32 = 0x2F505A;
/// Bonus bytes worth capturing (a bonus buffer is at most 320 bytes).
const MAX_BONUS: u64 = 512;
/// Objects whose age the meter remembers within one stream; beyond this
/// (a stream touching millions of files) later objects count as unknown.
const MAX_OBJECTS: usize = 1 << 20;

/// The figures of one or more streams (they add up).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamFigures {
    /// Logical bytes of every WRITE record.
    pub write_bytes: u64,
    /// WRITE bytes whose compressibility was judged.
    pub probed_bytes: u64,
    /// Of those, the incompressible ones.
    pub incompressible_bytes: u64,
    /// WRITE bytes on objects whose age (new, or existing at the base) is known.
    pub aged_bytes: u64,
    /// Of those, bytes on objects that existed at the base snapshot.
    pub rewritten_bytes: u64,
}

impl StreamFigures {
    /// Adds `other` to these figures.
    pub fn add(&mut self, other: &StreamFigures) {
        self.write_bytes += other.write_bytes;
        self.probed_bytes += other.probed_bytes;
        self.incompressible_bytes += other.incompressible_bytes;
        self.aged_bytes += other.aged_bytes;
        self.rewritten_bytes += other.rewritten_bytes;
    }

    /// Incompressible share of the judged WRITE bytes, if any were judged.
    pub fn incompressible_share(&self) -> Option<f64> {
        share(self.incompressible_bytes, self.probed_bytes)
    }

    /// Rewritten share of the WRITE bytes of known age, if any.
    pub fn rewritten_share(&self) -> Option<f64> {
        share(self.rewritten_bytes, self.aged_bytes)
    }
}

fn share(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// What the meter is collecting the payload for.
enum Capture {
    /// Nothing: skip the payload.
    Skip,
    /// An OBJECT's bonus buffer, to read its generation.
    Bonus { object: u64, legacy: bool },
    /// A WRITE's payload, for the entropy probe.
    Probe { logical: u64 },
}

/// The sans-IO meter: feed it a stream's bytes in order.
pub struct Meter {
    base_txg: Option<u64>,
    order: Option<ByteOrder>,
    head: Vec<u8>,
    payload_left: u64,
    capture: Capture,
    buf: Vec<u8>,
    raw: bool,
    /// Object → it existed at the base snapshot.
    existed: HashMap<u64, bool>,
    figures: StreamFigures,
    lost: bool,
}

impl Meter {
    /// A meter for a stream whose incremental base was created in
    /// `base_txg` (`None`: a full or resumed stream, where "rewritten"
    /// has no meaning).
    pub fn new(base_txg: Option<u64>) -> Meter {
        Meter {
            base_txg,
            order: None,
            head: Vec::with_capacity(RECORD_SIZE),
            payload_left: 0,
            capture: Capture::Skip,
            buf: Vec::new(),
            raw: false,
            existed: HashMap::new(),
            figures: StreamFigures::default(),
            lost: false,
        }
    }

    /// The figures so far; `None` if the stream could not be followed.
    pub fn figures(&self) -> Option<StreamFigures> {
        (!self.lost && self.order.is_some()).then_some(self.figures)
    }

    /// Feeds the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.lost {
            if self.payload_left > 0 {
                let n = (self.payload_left.min(data.len() as u64)) as usize;
                if !matches!(self.capture, Capture::Skip) {
                    self.buf.extend_from_slice(&data[..n]);
                }
                self.payload_left -= n as u64;
                data = &data[n..];
                if self.payload_left == 0 {
                    self.end_payload();
                }
                continue;
            }
            let n = (RECORD_SIZE - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.head.len() == RECORD_SIZE {
                self.on_header();
                self.head.clear();
            }
        }
    }

    fn on_header(&mut self) {
        let mut raw = [0u8; RECORD_SIZE];
        raw.copy_from_slice(&self.head);
        let order = match self.order {
            Some(o) => o,
            None => {
                let o = if ByteOrder::Little.u64(&raw[8..]) == BACKUP_MAGIC {
                    ByteOrder::Little
                } else if ByteOrder::Big.u64(&raw[8..]) == BACKUP_MAGIC {
                    ByteOrder::Big
                } else {
                    self.lost = true;
                    return;
                };
                self.order = Some(o);
                o
            }
        };
        let Some(t) = RecordType::from_code(order.u32(&raw[..])) else {
            self.lost = true;
            return;
        };
        let header = Header::parse(t, &raw, order);
        self.payload_left = header.payload_len();
        self.capture = self.classify(&header.body);
        self.buf.clear();
        if self.payload_left == 0 {
            self.end_payload();
        }
    }

    fn classify(&mut self, body: &Body) -> Capture {
        match body {
            Body::Begin(b) => {
                let (_, features) = split_versioninfo(b.versioninfo);
                self.raw = features.contains(FeatureFlags::RAW);
                Capture::Skip
            }
            Body::Object(o) if o.raw_bonuslen == 0 && self.base_txg.is_some() => {
                match o.bonustype {
                    BONUS_SA | BONUS_ZNODE if self.payload_left <= MAX_BONUS => Capture::Bonus {
                        object: o.object,
                        legacy: o.bonustype == BONUS_ZNODE,
                    },
                    _ => Capture::Skip,
                }
            }
            Body::Write(w) => {
                let logical = w.logical_size;
                self.figures.write_bytes += logical;
                if let Some(&existed) = self.existed.get(&w.object) {
                    self.figures.aged_bytes += logical;
                    if existed {
                        self.figures.rewritten_bytes += logical;
                    }
                }
                let encrypted = self.raw && w.mac != [0; 16];
                if encrypted {
                    Capture::Skip
                } else if w.compressiontype != 0 {
                    // ZFS keeps a block compressed only when that saved space.
                    self.figures.probed_bytes += logical;
                    Capture::Skip
                } else {
                    Capture::Probe { logical }
                }
            }
            _ => Capture::Skip,
        }
    }

    fn end_payload(&mut self) {
        match std::mem::replace(&mut self.capture, Capture::Skip) {
            Capture::Skip => {}
            Capture::Bonus { object, legacy } => {
                let (Some(base), Some(order)) = (self.base_txg, self.order) else {
                    return;
                };
                let gen = if legacy {
                    znode_generation(&self.buf, order)
                } else {
                    sa_generation(&self.buf)
                };
                if let Some(gen) = gen {
                    if self.existed.len() < MAX_OBJECTS || self.existed.contains_key(&object) {
                        self.existed.insert(object, gen <= base);
                    }
                }
            }
            Capture::Probe { logical } => {
                self.figures.probed_bytes += logical;
                if !fjord_pack::probe::looks_compressible(&self.buf) {
                    self.figures.incompressible_bytes += logical;
                }
            }
        }
        self.buf.clear();
    }
}

/// The ZPL generation (creation txg) in a system-attribute bonus buffer.
///
/// ZPL lays out a file's first attributes as MODE, SIZE, GEN (`zfs_mknode`),
/// 8 bytes each, after the header; a layout change appends attributes, so
/// GEN stays third. The buffer is in the writer's byte order, which the
/// magic tells.
pub fn sa_generation(bonus: &[u8]) -> Option<u64> {
    let order = if bonus.len() < 8 {
        return None;
    } else if ByteOrder::Little.u32(bonus) == SA_MAGIC {
        ByteOrder::Little
    } else if ByteOrder::Big.u32(bonus) == SA_MAGIC {
        ByteOrder::Big
    } else {
        return None;
    };
    let layout_info = order.u16(&bonus[4..]);
    let header = ((layout_info >> 10) & 0x3f) as usize * 8;
    let at = header.checked_add(16)?;
    (header >= 8 && bonus.len() >= at + 8).then(|| order.u64(&bonus[at..]))
}

/// The generation in a legacy `znode_phys_t` (`zp_gen`, after four
/// 16-byte timestamps).
fn znode_generation(bonus: &[u8], order: ByteOrder) -> Option<u64> {
    (bonus.len() >= 72).then(|| order.u64(&bonus[64..]))
}

/// Where a [`MeteredStream`] leaves its figures.
pub type FiguresSlot = Arc<Mutex<Option<StreamFigures>>>;

/// A transfer's source stream with a [`Meter`] on it. The slot holds the
/// figures of what has been read so far.
pub struct MeteredStream<R> {
    inner: R,
    meter: Meter,
    slot: FiguresSlot,
}

impl<R: Read> MeteredStream<R> {
    /// Meters `inner`; read the figures from the returned slot.
    pub fn new(inner: R, base_txg: Option<u64>) -> (MeteredStream<R>, FiguresSlot) {
        let slot: FiguresSlot = Arc::default();
        let stream = MeteredStream {
            inner,
            meter: Meter::new(base_txg),
            slot: slot.clone(),
        };
        (stream, slot)
    }

    fn publish(&self) {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        *slot = self.meter.figures();
    }
}

impl<R: Read> Read for MeteredStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.meter.feed(&buf[..n]);
        // After every read: the transfer may end (the DR node commits)
        // before its reader sees the end of the stream.
        self.publish();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_stream::builder::StreamBuilder;

    /// A ZPL system-attribute bonus buffer: header, MODE, SIZE, GEN, ...
    fn sa_bonus(gen: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&SA_MAGIC.to_le_bytes());
        b.extend_from_slice(&(2u16 | (1 << 10)).to_le_bytes()); // layout 2, 8-byte header
        b.extend_from_slice(&[0, 0]);
        for v in [0o100644u64, 4096, gen, 0, 0, 34] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.resize(168, 0);
        b
    }

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn incremental() -> Vec<u8> {
        let mut b = StreamBuilder::with(
            ByteOrder::Little,
            "tank/fs@b",
            2,
            1,
            FeatureFlags::default(),
            None,
        );
        // Object 2 existed at the base (gen 5 <= 10) and is rewritten with
        // random data; object 3 is new (gen 12) and gets text; object 4's
        // bonus is not ZPL's, so its age is unknown.
        b.object(2, 131072, &sa_bonus(5));
        b.write(2, 0, &random(131072, 7));
        b.write(2, 131072, &random(131072, 9));
        b.object(3, 131072, &sa_bonus(12));
        b.write(3, 0, &b"log line 42: all is well\n".repeat(5243)[..131072]);
        b.object(4, 131072, &[0u8; 64]);
        b.write_compressed(4, 0, 131072, 15, &[1u8; 4096]);
        b.finish()
    }

    #[test]
    fn measures_both_shares_in_pieces_of_any_size() {
        let stream = incremental();
        for piece in [1, 7, 312, 4096, stream.len()] {
            let mut m = Meter::new(Some(10));
            for chunk in stream.chunks(piece) {
                m.feed(chunk);
            }
            let f = m.figures().expect("followed");
            assert_eq!(f.write_bytes, 4 * 131072);
            assert_eq!(f.probed_bytes, 4 * 131072);
            assert_eq!(f.incompressible_bytes, 2 * 131072, "piece {piece}");
            assert_eq!(f.aged_bytes, 3 * 131072);
            assert_eq!(f.rewritten_bytes, 2 * 131072);
            assert_eq!(f.incompressible_share(), Some(0.5));
            let r = f.rewritten_share().unwrap();
            assert!((r - 2.0 / 3.0).abs() < 1e-9, "{r}");
        }
    }

    #[test]
    fn without_a_base_nothing_is_aged_and_garbage_is_not_followed() {
        let mut m = Meter::new(None);
        m.feed(&incremental());
        let f = m.figures().unwrap();
        assert_eq!((f.aged_bytes, f.rewritten_share()), (0, None));
        let mut m = Meter::new(Some(10));
        m.feed(&[0x55; 4096]);
        assert_eq!(m.figures(), None);
    }

    #[test]
    fn sa_generation_reads_either_order_and_refuses_garbage() {
        assert_eq!(sa_generation(&sa_bonus(77)), Some(77));
        let mut be = Vec::new();
        be.extend_from_slice(&SA_MAGIC.to_be_bytes());
        be.extend_from_slice(&(1u16 << 10).to_be_bytes());
        be.extend_from_slice(&[0, 0]);
        for v in [1u64, 2, 99] {
            be.extend_from_slice(&v.to_be_bytes());
        }
        assert_eq!(sa_generation(&be), Some(99));
        assert_eq!(sa_generation(&[0u8; 64]), None);
        assert_eq!(sa_generation(&sa_bonus(1)[..20]), None);
    }

    #[test]
    fn metered_stream_passes_bytes_through_and_publishes_at_the_end() {
        let stream = incremental();
        let (mut r, slot) = MeteredStream::new(std::io::Cursor::new(stream.clone()), Some(10));
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, stream);
        assert_eq!(
            slot.lock().unwrap().map(|f| f.write_bytes),
            Some(4 * 131072)
        );
    }

    /// The real incremental of the OpenZFS corpus: ZPL bonus buffers with
    /// the generations OpenZFS wrote (the corpus lives beside the repo).
    #[test]
    fn corpus_incremental_has_readable_generations() {
        let dir = std::env::var_os("FJORD_CORPUS_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../../../shared/testdata/openzfs-streams")
            });
        let path = dir.join("little-endian-all-drr-types-incr-NATIVE.zsend.bz2");
        let out = std::process::Command::new("bzcat")
            .arg(&path)
            .output()
            .expect("bzcat runs");
        assert!(out.status.success(), "bzcat {}", path.display());
        // Files of this stream were created in txgs 8 to 13.
        let mut m = Meter::new(Some(10));
        m.feed(&out.stdout);
        assert!(m.figures().is_some());
        let old = m.existed.values().filter(|&&e| e).count();
        let new = m.existed.values().filter(|&&e| !e).count();
        assert!(old >= 4 && new >= 10, "old {old}, new {new}");
    }
}
