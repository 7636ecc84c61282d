//! Writing records back out.
//!
//! [`Encoder::write`] writes a header exactly as given; [`Encoder::write_sealed`]
//! fills in the checksums the way `zfs send` (`dump_record`) does. Both keep
//! the running Fletcher-4 so that a stream can be re-emitted, or built from
//! scratch, with checksums `zfs recv` accepts.

use crate::decoder::Record;
use crate::fletcher::Fletcher4;
use crate::record::{Body, Header, RECORD_SIZE, TRAILER_OFFSET};
use crate::{ByteOrder, Checksum};

/// How an END record is sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndKind {
    /// Closes a substream: checksum and trailer both set (`dump_record`).
    Substream,
    /// Closes a package header: checksum set, trailer left zero (libzfs
    /// writes it with a plain `write`).
    PackageHeader,
    /// The package's final END: all zero (`send_conclusion_record`).
    Conclusion,
}

/// Serialises records in one byte order, tracking the running checksum.
#[derive(Clone, Debug)]
pub struct Encoder {
    order: ByteOrder,
    cksum: Fletcher4,
}

impl Encoder {
    /// An encoder for a stream in `order`.
    pub fn new(order: ByteOrder) -> Encoder {
        Encoder {
            order,
            cksum: Fletcher4::new(),
        }
    }

    /// The stream's byte order.
    pub fn order(&self) -> ByteOrder {
        self.order
    }

    /// The checksum of the current substream so far.
    pub fn running_checksum(&self) -> Checksum {
        self.cksum.value()
    }

    /// Writes a decoded record back byte for byte.
    pub fn write_record(&mut self, record: &Record, out: &mut Vec<u8>) {
        self.account(&record.header.body, &record.raw_header, &record.payload);
        out.extend_from_slice(&record.raw_header);
        out.extend_from_slice(&record.payload);
    }

    /// Writes `header` exactly as given (its trailer and END checksum are not
    /// touched) followed by `payload`.
    pub fn write(&mut self, header: &Header, payload: &[u8], out: &mut Vec<u8>) {
        let raw = header.to_bytes(self.order);
        self.account(&header.body, &raw, payload);
        out.extend_from_slice(&raw);
        out.extend_from_slice(payload);
    }

    /// Writes `body` and `payload` with checksums filled in as `zfs send`
    /// does; `end` says how an END is sealed (ignored for other types).
    /// Returns the header as written.
    pub fn write_sealed(
        &mut self,
        body: Body,
        payload: &[u8],
        end: EndKind,
        out: &mut Vec<u8>,
    ) -> Header {
        let mut header = Header::new(body, payload.len() as u32);
        if let Body::End(e) = &mut header.body {
            e.checksum = match end {
                EndKind::Conclusion => Checksum::ZERO,
                _ => self.cksum.value(),
            };
        }
        let seal_trailer = match header.body {
            Body::Begin(_) => false,
            Body::End(_) => end == EndKind::Substream,
            _ => true,
        };
        if seal_trailer {
            let raw = header.to_bytes(self.order);
            let mut upto = self.cksum;
            upto.update(&raw[..TRAILER_OFFSET], self.order);
            header.trailer = upto.value();
        }
        self.write(&header, payload, out);
        header
    }

    /// Advances the running checksum over one record, as the decoder does.
    fn account(&mut self, body: &Body, raw: &[u8; RECORD_SIZE], payload: &[u8]) {
        match body {
            Body::Begin(_) => {
                self.cksum.reset();
                self.cksum.update(raw, self.order);
            }
            Body::End(_) => {
                self.cksum.reset();
                return;
            }
            _ => self.cksum.update(raw, self.order),
        }
        self.cksum.update(payload, self.order);
    }
}
