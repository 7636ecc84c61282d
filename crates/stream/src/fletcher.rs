//! The Fletcher-4 checksum that OpenZFS runs over every send stream.
//!
//! Fletcher-4 reads the data as 32-bit words and keeps four 64-bit sums
//! (`a += w; b += a; c += b; d += c`, all wrapping). A send stream is summed in
//! its own byte order: OpenZFS uses `fletcher_4_incremental_native` on a stream
//! of its own byte order and `fletcher_4_incremental_byteswap` on a foreign one,
//! which is the same as reading the words in the stream's byte order.
//!
//! The hot loop runs four independent lanes (word `i` goes to lane `i % 4`) so
//! that the compiler can vectorise it, and folds the lanes back into one sum
//! with the same algebra OpenZFS uses for its SIMD implementations. On x86_64
//! an AVX2 build of the same loop is picked at run time when the CPU has it.

use crate::ByteOrder;

/// A Fletcher-4 checksum: the four running sums, as OpenZFS's `zio_cksum_t`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Checksum(pub [u64; 4]);

impl Checksum {
    /// The all-zero checksum. A record trailer of zero means "not checked".
    pub const ZERO: Checksum = Checksum([0; 4]);

    /// True when all four words are zero.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; 4]
    }

    /// Reads a checksum stored as four 64-bit words in `order`.
    ///
    /// # Panics
    /// If `bytes` is shorter than 32 bytes (callers pass fixed-size slices).
    pub fn from_bytes(bytes: &[u8], order: ByteOrder) -> Checksum {
        let mut words = [0u64; 4];
        for (i, w) in words.iter_mut().enumerate() {
            *w = order.u64(&bytes[i * 8..i * 8 + 8]);
        }
        Checksum(words)
    }

    /// Writes the checksum as four 64-bit words in `order`.
    pub fn write_bytes(&self, out: &mut [u8], order: ByteOrder) {
        for (i, w) in self.0.iter().enumerate() {
            order.put_u64(&mut out[i * 8..i * 8 + 8], *w);
        }
    }
}

impl std::fmt::Display for Checksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:x}/{:x}/{:x}/{:x}",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// A running Fletcher-4 sum, fed incrementally.
///
/// Each `update` must be given a whole number of 32-bit words; trailing bytes
/// of a length that is not a multiple of four are ignored, as OpenZFS does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fletcher4 {
    sum: Checksum,
}

impl Fletcher4 {
    /// A sum starting from zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// The sum so far.
    pub fn value(&self) -> Checksum {
        self.sum
    }

    /// Restarts from zero.
    pub fn reset(&mut self) {
        self.sum = Checksum::ZERO;
    }

    /// Adds `data`, read as 32-bit words in `order`.
    pub fn update(&mut self, data: &[u8], order: ByteOrder) {
        let words = data.len() / 4;
        if words == 0 {
            return;
        }
        // Short inputs (record headers) are cheaper done in place.
        if words < 64 {
            self.sum = scalar(self.sum, &data[..words * 4], order);
            return;
        }
        let block = lanes(&data[..words * 4], order);
        self.sum = combine(self.sum, words as u64, block);
    }
}

/// One pass of the reference algorithm, continuing from `start`.
fn scalar(start: Checksum, data: &[u8], order: ByteOrder) -> Checksum {
    let [mut a, mut b, mut c, mut d] = start.0;
    for chunk in data.chunks_exact(4) {
        let w = order.u32(chunk) as u64;
        a = a.wrapping_add(w);
        b = b.wrapping_add(a);
        c = c.wrapping_add(b);
        d = d.wrapping_add(c);
    }
    Checksum([a, b, c, d])
}

/// Folds a block summed from zero (`block`, over `n` words) into `running`.
///
/// This is OpenZFS's `fletcher_4_incremental_combine`; the coefficients are
/// computed in 128 bits so that no block size can make them overflow.
fn combine(running: Checksum, n: u64, block: Checksum) -> Checksum {
    let [a, b, c, d] = running.0;
    let [na, nb, nc, nd] = block.0;
    let n128 = n as u128;
    let c1 = n;
    let c2 = (n128 * (n128 + 1) / 2) as u64;
    let c3 = (n128 * (n128 + 1) * (n128 + 2) / 6) as u64;
    Checksum([
        a.wrapping_add(na),
        b.wrapping_add(nb).wrapping_add(c1.wrapping_mul(a)),
        c.wrapping_add(nc)
            .wrapping_add(c1.wrapping_mul(b))
            .wrapping_add(c2.wrapping_mul(a)),
        d.wrapping_add(nd)
            .wrapping_add(c1.wrapping_mul(c))
            .wrapping_add(c2.wrapping_mul(b))
            .wrapping_add(c3.wrapping_mul(a)),
    ])
}

/// The Fletcher-4 of `data` (a whole number of words) summed from zero.
fn lanes(data: &[u8], order: ByteOrder) -> Checksum {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { lanes_avx2(data, order) };
        }
    }
    lanes_portable(data, order)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lanes_avx2(data: &[u8], order: ByteOrder) -> Checksum {
    lanes_body(data, order)
}

fn lanes_portable(data: &[u8], order: ByteOrder) -> Checksum {
    lanes_body(data, order)
}

#[inline(always)]
fn lanes_body(data: &[u8], order: ByteOrder) -> Checksum {
    let mut a = [0u64; 4];
    let mut b = [0u64; 4];
    let mut c = [0u64; 4];
    let mut d = [0u64; 4];
    let blocks = data.chunks_exact(16);
    let tail = blocks.remainder();
    match order {
        ByteOrder::Little => {
            for block in blocks {
                for j in 0..4 {
                    let w = u32::from_le_bytes([
                        block[4 * j],
                        block[4 * j + 1],
                        block[4 * j + 2],
                        block[4 * j + 3],
                    ]) as u64;
                    a[j] = a[j].wrapping_add(w);
                    b[j] = b[j].wrapping_add(a[j]);
                    c[j] = c[j].wrapping_add(b[j]);
                    d[j] = d[j].wrapping_add(c[j]);
                }
            }
        }
        ByteOrder::Big => {
            for block in blocks {
                for j in 0..4 {
                    let w = u32::from_be_bytes([
                        block[4 * j],
                        block[4 * j + 1],
                        block[4 * j + 2],
                        block[4 * j + 3],
                    ]) as u64;
                    a[j] = a[j].wrapping_add(w);
                    b[j] = b[j].wrapping_add(a[j]);
                    c[j] = c[j].wrapping_add(b[j]);
                    d[j] = d[j].wrapping_add(c[j]);
                }
            }
        }
    }
    let folded = fold_lanes(&a, &b, &c, &d);
    scalar(folded, tail, order)
}

/// Combines four interleaved lanes into the sum of the words in order.
/// The coefficients are those of OpenZFS's `fletcher_4_avx2_fini`.
fn fold_lanes(a: &[u64; 4], b: &[u64; 4], c: &[u64; 4], d: &[u64; 4]) -> Checksum {
    let m = |k: u64, v: u64| k.wrapping_mul(v);
    let sum4 = |v: &[u64; 4]| {
        v[0].wrapping_add(v[1])
            .wrapping_add(v[2])
            .wrapping_add(v[3])
    };
    let big_a = sum4(a);
    let big_b = m(4, sum4(b))
        .wrapping_sub(a[1])
        .wrapping_sub(m(2, a[2]))
        .wrapping_sub(m(3, a[3]));
    let big_c = a[2]
        .wrapping_add(m(3, a[3]))
        .wrapping_sub(m(6, b[0]))
        .wrapping_sub(m(10, b[1]))
        .wrapping_sub(m(14, b[2]))
        .wrapping_sub(m(18, b[3]))
        .wrapping_add(m(16, sum4(c)));
    let big_d = m(4, b[0])
        .wrapping_sub(a[3])
        .wrapping_add(m(10, b[1]))
        .wrapping_add(m(20, b[2]))
        .wrapping_add(m(34, b[3]))
        .wrapping_sub(m(48, c[0]))
        .wrapping_sub(m(64, c[1]))
        .wrapping_sub(m(80, c[2]))
        .wrapping_sub(m(96, c[3]))
        .wrapping_add(m(64, sum4(d)));
    Checksum([big_a, big_b, big_c, big_d])
}

/// Fletcher-4 of `data` from zero, trailing bytes ignored (OpenZFS's
/// `fletcher_4_native_varsize` when `order` is the host's).
pub fn fletcher4(data: &[u8], order: ByteOrder) -> Checksum {
    let mut f = Fletcher4::new();
    f.update(data, order);
    f.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn vectorised_matches_reference_for_every_length_and_split() {
        for order in [ByteOrder::Little, ByteOrder::Big] {
            let data = pseudo_random(4096 + 12, 7);
            for len in (0..data.len()).step_by(4) {
                let reference = scalar(Checksum::ZERO, &data[..len], order);
                assert_eq!(fletcher4(&data[..len], order), reference, "len {len}");
                // Incremental in two uneven parts gives the same.
                let cut = (len / 3) & !3;
                let mut f = Fletcher4::new();
                f.update(&data[..cut], order);
                f.update(&data[cut..len], order);
                assert_eq!(f.value(), reference, "len {len} cut {cut}");
            }
        }
    }

    #[test]
    fn portable_and_dispatched_paths_agree() {
        let data = pseudo_random(1 << 16, 99);
        for order in [ByteOrder::Little, ByteOrder::Big] {
            assert_eq!(lanes_portable(&data, order), lanes(&data, order));
        }
    }

    #[test]
    fn known_value() {
        // Words 1, 2, 3: a = 6, b = 1+3+6 = 10, c = 1+4+10 = 15, d = 1+5+15 = 21.
        let data = [1u8, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0];
        assert_eq!(
            fletcher4(&data, ByteOrder::Little),
            Checksum([6, 10, 15, 21])
        );
        let be = [0u8, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        assert_eq!(fletcher4(&be, ByteOrder::Big), Checksum([6, 10, 15, 21]));
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        let data = pseudo_random(403, 3);
        assert_eq!(
            fletcher4(&data, ByteOrder::Little),
            fletcher4(&data[..400], ByteOrder::Little)
        );
    }
}
