//! Packed nvlists, as OpenZFS's `nvlist_pack` writes them: the payload of
//! BEGIN records and the content of resume tokens.
//!
//! Both encodings are read and written: NATIVE (the packing host's byte order
//! and alignment, as the kernel packs BEGIN payloads and resume tokens) and
//! XDR (big-endian, four-byte units, as libzfs packs `-R` package headers).
//! The layouts follow `module/nvpair/nvpair.c`. Decoding never trusts a
//! length: every read is bounds-checked and nesting is limited.

use crate::ByteOrder;
use thiserror::Error;

/// Deepest nesting accepted (OpenZFS's `nvpair_max_recursion` is 20).
pub const MAX_DEPTH: usize = 20;

/// How an nvlist was packed (`nvh_encoding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `NV_ENCODE_NATIVE`, in the given byte order.
    Native(ByteOrder),
    /// `NV_ENCODE_XDR`.
    Xdr,
}

/// An nvpair data type (`data_type_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum DataType {
    Boolean = 1,
    Byte = 2,
    Int16 = 3,
    Uint16 = 4,
    Int32 = 5,
    Uint32 = 6,
    Int64 = 7,
    Uint64 = 8,
    String = 9,
    ByteArray = 10,
    Int16Array = 11,
    Uint16Array = 12,
    Int32Array = 13,
    Uint32Array = 14,
    Int64Array = 15,
    Uint64Array = 16,
    StringArray = 17,
    Hrtime = 18,
    NvList = 19,
    NvListArray = 20,
    BooleanValue = 21,
    Int8 = 22,
    Uint8 = 23,
    BooleanArray = 24,
    Int8Array = 25,
    Uint8Array = 26,
    Double = 27,
}

impl DataType {
    fn from_code(code: i32) -> Option<DataType> {
        use DataType::*;
        const ALL: [DataType; 27] = [
            Boolean,
            Byte,
            Int16,
            Uint16,
            Int32,
            Uint32,
            Int64,
            Uint64,
            String,
            ByteArray,
            Int16Array,
            Uint16Array,
            Int32Array,
            Uint32Array,
            Int64Array,
            Uint64Array,
            StringArray,
            Hrtime,
            NvList,
            NvListArray,
            BooleanValue,
            Int8,
            Uint8,
            BooleanArray,
            Int8Array,
            Uint8Array,
            Double,
        ];
        ALL.get(usize::try_from(code.checked_sub(1)?).ok()?)
            .copied()
    }

    /// Width in bytes of one number in the NATIVE layout, for numeric types
    /// and numeric arrays.
    fn width(self) -> Option<usize> {
        use DataType::*;
        match self {
            Byte | Int8 | Uint8 | ByteArray | Int8Array | Uint8Array => Some(1),
            Int16 | Uint16 | Int16Array | Uint16Array => Some(2),
            BooleanValue | Int32 | Uint32 | BooleanArray | Int32Array | Uint32Array => Some(4),
            Int64 | Uint64 | Hrtime | Double | Int64Array | Uint64Array => Some(8),
            _ => None,
        }
    }

    fn is_array(self) -> bool {
        use DataType::*;
        matches!(
            self,
            ByteArray
                | Int16Array
                | Uint16Array
                | Int32Array
                | Uint32Array
                | Int64Array
                | Uint64Array
                | BooleanArray
                | Int8Array
                | Uint8Array
        )
    }

    fn is_signed(self) -> bool {
        use DataType::*;
        matches!(
            self,
            Int8 | Int16
                | Int32
                | Int64
                | Hrtime
                | Int8Array
                | Int16Array
                | Int32Array
                | Int64Array
                | BooleanValue
                | BooleanArray
        )
    }
}

/// A value in an nvlist.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `DATA_TYPE_BOOLEAN`: a flag, present or absent, with no value.
    Flag,
    /// Any numeric scalar (including `boolean_value`, `hrtime`, `double`),
    /// as its bits: signed values are sign-extended, doubles are `to_bits`.
    Number(DataType, u64),
    /// Any numeric array, elements as in [`Value::Number`].
    Numbers(DataType, Vec<u64>),
    /// A string.
    String(String),
    /// An array of strings.
    Strings(Vec<String>),
    /// A nested nvlist.
    List(NvList),
    /// An array of nested nvlists.
    Lists(Vec<NvList>),
}

impl Value {
    fn data_type(&self) -> DataType {
        match self {
            Value::Flag => DataType::Boolean,
            Value::Number(t, _) | Value::Numbers(t, _) => *t,
            Value::String(_) => DataType::String,
            Value::Strings(_) => DataType::StringArray,
            Value::List(_) => DataType::NvList,
            Value::Lists(_) => DataType::NvListArray,
        }
    }

    fn nelem(&self) -> usize {
        match self {
            Value::Flag => 0,
            Value::Numbers(_, v) => v.len(),
            Value::Strings(v) => v.len(),
            Value::Lists(v) => v.len(),
            _ => 1,
        }
    }
}

/// An nvlist: name/value pairs in packing order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NvList {
    /// `nvl_nvflag` (1 = `NV_UNIQUE_NAME`).
    pub nvflag: u32,
    /// The pairs, in the order they were packed.
    pub pairs: Vec<(String, Value)>,
}

impl NvList {
    /// An empty list with `NV_UNIQUE_NAME`, as `fnvlist_alloc` makes.
    pub fn new() -> NvList {
        NvList {
            nvflag: 1,
            pairs: Vec::new(),
        }
    }

    /// Appends a pair (builder style).
    pub fn with(mut self, name: &str, value: Value) -> NvList {
        self.pairs.push((name.to_string(), value));
        self
    }

    /// The first value named `name`.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// A `uint64` (or any integer) value named `name`.
    pub fn get_u64(&self, name: &str) -> Option<u64> {
        match self.get(name)? {
            Value::Number(t, v) if *t != DataType::Double => Some(*v),
            _ => None,
        }
    }

    /// A string value named `name`.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        match self.get(name)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// A nested nvlist named `name`.
    pub fn get_list(&self, name: &str) -> Option<&NvList> {
        match self.get(name)? {
            Value::List(l) => Some(l),
            _ => None,
        }
    }

    /// True when a pair named `name` exists (flags are tested this way).
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Why a packed nvlist could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NvError {
    /// The buffer ended inside the structure.
    #[error("nvlist truncated at byte {0}")]
    Truncated(usize),
    /// The first header byte names no known encoding.
    #[error("unknown nvlist encoding {0} (expected 0 = native or 1 = XDR)")]
    UnknownEncoding(u8),
    /// The header's endian byte is neither 0 nor 1.
    #[error("unknown nvlist byte order {0}")]
    UnknownEndian(u8),
    /// A pair names a type that does not exist.
    #[error("nvpair at byte {offset} has unknown data type {code}")]
    UnknownType {
        /// Where the pair starts.
        offset: usize,
        /// The type code found.
        code: i32,
    },
    /// A size or count field is inconsistent.
    #[error("nvpair at byte {offset} is malformed: {what}")]
    Malformed {
        /// Where the pair starts.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// Nested deeper than [`MAX_DEPTH`].
    #[error("nvlist nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// Reads a packed nvlist (with its 4-byte header).
pub fn decode(buf: &[u8]) -> Result<(NvList, Encoding), NvError> {
    if buf.len() < 4 {
        return Err(NvError::Truncated(buf.len()));
    }
    let order = match buf[1] {
        0 => ByteOrder::Big,
        1 => ByteOrder::Little,
        e => return Err(NvError::UnknownEndian(e)),
    };
    match buf[0] {
        0 => {
            let mut r = Reader { buf, pos: 4, order };
            let _version = r.u32()?;
            let nvflag = r.u32()?;
            let list = native_pairs(&mut r, nvflag, 0)?;
            Ok((list, Encoding::Native(order)))
        }
        1 => {
            let mut r = Reader {
                buf,
                pos: 4,
                order: ByteOrder::Big,
            };
            let list = xdr_list(&mut r, 0)?;
            Ok((list, Encoding::Xdr))
        }
        e => Err(NvError::UnknownEncoding(e)),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    order: ByteOrder,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], NvError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(NvError::Truncated(self.buf.len())),
        }
    }
    fn u32(&mut self) -> Result<u32, NvError> {
        Ok(self.order.u32(self.take(4)?))
    }
    fn u64(&mut self) -> Result<u64, NvError> {
        Ok(self.order.u64(self.take(8)?))
    }
}

fn align8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

fn align4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

fn sign_extend(v: u64, width: usize, signed: bool) -> u64 {
    if !signed || width >= 8 {
        return v;
    }
    let shift = 64 - 8 * width as u32;
    (((v << shift) as i64) >> shift) as u64
}

/// A NUL-terminated string at the start of `bytes`, and the bytes it takes
/// (terminator included: a lossy decoding may be longer than the bytes).
fn cstr_len(bytes: &[u8], offset: usize) -> Result<(String, usize), NvError> {
    let end = bytes
        .iter()
        .position(|&b| b == 0)
        .ok_or(NvError::Malformed {
            offset,
            what: "string without terminating NUL",
        })?;
    Ok((String::from_utf8_lossy(&bytes[..end]).into_owned(), end + 1))
}

fn cstr(bytes: &[u8], offset: usize) -> Result<String, NvError> {
    Ok(cstr_len(bytes, offset)?.0)
}

/// Reads NATIVE pairs up to the zero terminator.
fn native_pairs(r: &mut Reader, nvflag: u32, depth: usize) -> Result<NvList, NvError> {
    if depth > MAX_DEPTH {
        return Err(NvError::TooDeep);
    }
    let mut list = NvList {
        nvflag,
        pairs: Vec::new(),
    };
    loop {
        let start = r.pos;
        let size = r.u32()? as usize;
        if size == 0 {
            return Ok(list);
        }
        r.pos = start;
        let pair = r.take(size).map_err(|_| NvError::Malformed {
            offset: start,
            what: "size runs past the end",
        })?;
        if size < 24 {
            return Err(NvError::Malformed {
                offset: start,
                what: "size below the minimum of 24",
            });
        }
        let o = r.order;
        let name_sz = o.u16(&pair[4..]) as usize;
        let nelem = o.u32(&pair[8..]) as usize;
        let code = o.u32(&pair[12..]) as i32;
        let t = DataType::from_code(code).ok_or(NvError::UnknownType {
            offset: start,
            code,
        })?;
        if name_sz == 0 || 16 + name_sz > size {
            return Err(NvError::Malformed {
                offset: start,
                what: "name size out of range",
            });
        }
        let name = cstr(&pair[16..16 + name_sz], start)?;
        let valoff = align8(16 + name_sz);
        if valoff > size {
            return Err(NvError::Malformed {
                offset: start,
                what: "value offset past the pair",
            });
        }
        let val = &pair[valoff..];
        let bad = |what| NvError::Malformed {
            offset: start,
            what,
        };
        let value = match t {
            DataType::Boolean => Value::Flag,
            DataType::String => Value::String(cstr(val, start)?),
            DataType::StringArray => {
                let mut at = nelem
                    .checked_mul(8)
                    .filter(|&n| n <= val.len())
                    .ok_or(bad("string array too long"))?;
                let mut v = Vec::with_capacity(nelem.min(1024));
                for _ in 0..nelem {
                    let (s, used) = cstr_len(&val[at..], start)?;
                    at += used;
                    v.push(s);
                }
                Value::Strings(v)
            }
            DataType::NvList => {
                if val.len() < 24 {
                    return Err(bad("embedded nvlist header truncated"));
                }
                let flag = o.u32(&val[4..]);
                Value::List(native_pairs(r, flag, depth + 1)?)
            }
            DataType::NvListArray => {
                let need = nelem
                    .checked_mul(32)
                    .filter(|&n| n <= val.len())
                    .ok_or(bad("nvlist array too long"))?;
                let headers = &val[nelem * 8..need];
                let mut v = Vec::with_capacity(nelem);
                for i in 0..nelem {
                    let flag = o.u32(&headers[i * 24 + 4..]);
                    v.push(native_pairs(r, flag, depth + 1)?);
                }
                Value::Lists(v)
            }
            _ => {
                let width = t.width().ok_or(bad("type has no width"))?;
                let count = if t.is_array() { nelem } else { 1 };
                let bytes = count
                    .checked_mul(width)
                    .filter(|&n| n <= val.len())
                    .ok_or(bad("value runs past the pair"))?;
                let nums: Vec<u64> = val[..bytes]
                    .chunks_exact(width)
                    .map(|c| {
                        let raw = match width {
                            1 => c[0] as u64,
                            2 => o.u16(c) as u64,
                            4 => o.u32(c) as u64,
                            _ => o.u64(c),
                        };
                        sign_extend(raw, width, t.is_signed())
                    })
                    .collect();
                if t.is_array() {
                    Value::Numbers(t, nums)
                } else {
                    Value::Number(t, nums[0])
                }
            }
        };
        list.pairs.push((name, value));
    }
}

fn xdr_string(r: &mut Reader, offset: usize) -> Result<String, NvError> {
    let len = r.u32()? as usize;
    let bytes = r.take(align4(len)).map_err(|_| NvError::Malformed {
        offset,
        what: "string runs past the end",
    })?;
    Ok(String::from_utf8_lossy(&bytes[..len]).into_owned())
}

/// Reads an XDR nvlist: version, flags, pairs, terminator.
fn xdr_list(r: &mut Reader, depth: usize) -> Result<NvList, NvError> {
    if depth > MAX_DEPTH {
        return Err(NvError::TooDeep);
    }
    let _version = r.u32()?;
    let nvflag = r.u32()?;
    let mut list = NvList {
        nvflag,
        pairs: Vec::new(),
    };
    loop {
        let start = r.pos;
        let _encoded = r.u32()?;
        let decoded = r.u32()?;
        if decoded == 0 {
            return Ok(list);
        }
        let name = xdr_string(r, start)?;
        let code = r.u32()? as i32;
        let t = DataType::from_code(code).ok_or(NvError::UnknownType {
            offset: start,
            code,
        })?;
        let nelem = r.u32()? as usize;
        // Every element takes at least four bytes: a count beyond what is
        // left is a lie, refused before anything is allocated for it.
        if nelem > r.buf.len().saturating_sub(r.pos) {
            return Err(NvError::Malformed {
                offset: start,
                what: "element count exceeds the data",
            });
        }
        let value = if nelem == 0 {
            match t {
                DataType::Boolean => Value::Flag,
                DataType::StringArray => Value::Strings(Vec::new()),
                DataType::NvListArray => Value::Lists(Vec::new()),
                _ if t.is_array() => Value::Numbers(t, Vec::new()),
                _ => {
                    return Err(NvError::Malformed {
                        offset: start,
                        what: "scalar with no element",
                    })
                }
            }
        } else {
            match t {
                DataType::Boolean => Value::Flag,
                DataType::String => Value::String(xdr_string(r, start)?),
                DataType::StringArray => Value::Strings(
                    (0..nelem)
                        .map(|_| xdr_string(r, start))
                        .collect::<Result<_, _>>()?,
                ),
                DataType::NvList => Value::List(xdr_list(r, depth + 1)?),
                DataType::NvListArray => Value::Lists(
                    (0..nelem)
                        .map(|_| xdr_list(r, depth + 1))
                        .collect::<Result<_, _>>()?,
                ),
                DataType::ByteArray => {
                    let bytes = r.take(align4(nelem))?;
                    Value::Numbers(t, bytes[..nelem].iter().map(|&b| b as u64).collect())
                }
                _ => {
                    let width = t.width().ok_or(NvError::Malformed {
                        offset: start,
                        what: "type has no width",
                    })?;
                    let read_one = |r: &mut Reader| -> Result<u64, NvError> {
                        Ok(if width == 8 {
                            r.u64()?
                        } else {
                            sign_extend(r.u32()? as u64, 4, t.is_signed())
                        })
                    };
                    if t.is_array() {
                        let count = r.u32()? as usize;
                        if count != nelem {
                            return Err(NvError::Malformed {
                                offset: start,
                                what: "array count differs from element count",
                            });
                        }
                        Value::Numbers(
                            t,
                            (0..nelem).map(|_| read_one(r)).collect::<Result<_, _>>()?,
                        )
                    } else {
                        Value::Number(t, read_one(r)?)
                    }
                }
            }
        };
        list.pairs.push((name, value));
    }
}

/// Packs an nvlist with its 4-byte header, as `nvlist_pack` would.
pub fn encode(list: &NvList, encoding: Encoding) -> Vec<u8> {
    let mut out = Vec::new();
    match encoding {
        Encoding::Native(order) => {
            out.extend_from_slice(&[0, (order == ByteOrder::Little) as u8, 0, 0]);
            push_u32(&mut out, order, 0);
            push_u32(&mut out, order, list.nvflag);
            native_write_pairs(&mut out, list, order);
        }
        Encoding::Xdr => {
            // The endian byte records the packing host's; XDR itself is big-endian.
            out.extend_from_slice(&[1, 1, 0, 0]);
            xdr_write_list(&mut out, list);
        }
    }
    out
}

fn push_u32(out: &mut Vec<u8>, o: ByteOrder, v: u32) {
    let mut b = [0u8; 4];
    o.put_u32(&mut b, v);
    out.extend_from_slice(&b);
}

fn push_u64(out: &mut Vec<u8>, o: ByteOrder, v: u64) {
    let mut b = [0u8; 8];
    o.put_u64(&mut b, v);
    out.extend_from_slice(&b);
}

/// Size of a value in the NATIVE layout (`i_get_value_size`).
fn native_value_size(v: &Value) -> usize {
    match v {
        Value::Flag => 0,
        Value::Number(t, _) => t.width().unwrap_or(8),
        Value::Numbers(t, n) => t.width().unwrap_or(8) * n.len(),
        Value::String(s) => s.len() + 1,
        Value::Strings(s) => s.len() * 8 + s.iter().map(|s| s.len() + 1).sum::<usize>(),
        Value::List(_) => 24,
        Value::Lists(l) => l.len() * 32,
    }
}

fn native_put_number(out: &mut Vec<u8>, o: ByteOrder, t: DataType, v: u64) {
    match t.width().unwrap_or(8) {
        1 => out.push(v as u8),
        2 => {
            let mut b = [0u8; 2];
            o.put_u16(&mut b, v as u16);
            out.extend_from_slice(&b);
        }
        4 => push_u32(out, o, v as u32),
        _ => push_u64(out, o, v),
    }
}

fn native_nvlist_header(out: &mut Vec<u8>, o: ByteOrder, l: &NvList) {
    push_u32(out, o, 0); // nvl_version
    push_u32(out, o, l.nvflag);
    out.extend_from_slice(&[0u8; 16]); // nvl_priv, nvl_flag, nvl_pad
}

fn native_write_pairs(out: &mut Vec<u8>, list: &NvList, o: ByteOrder) {
    for (name, value) in &list.pairs {
        let start = out.len();
        let name_sz = name.len() + 1;
        let size = align8(16 + name_sz) + align8(native_value_size(value));
        push_u32(out, o, size as u32);
        let mut b = [0u8; 2];
        o.put_u16(&mut b, name_sz as u16);
        out.extend_from_slice(&b);
        out.extend_from_slice(&[0, 0]);
        push_u32(out, o, value.nelem() as u32);
        push_u32(out, o, value.data_type() as u32);
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(start + align8(16 + name_sz), 0);
        match value {
            Value::Flag => {}
            Value::Number(t, v) => native_put_number(out, o, *t, *v),
            Value::Numbers(t, vs) => vs.iter().for_each(|v| native_put_number(out, o, *t, *v)),
            Value::String(s) => {
                out.extend_from_slice(s.as_bytes());
                out.push(0);
            }
            Value::Strings(ss) => {
                out.resize(out.len() + ss.len() * 8, 0);
                for s in ss {
                    out.extend_from_slice(s.as_bytes());
                    out.push(0);
                }
            }
            Value::List(l) => native_nvlist_header(out, o, l),
            Value::Lists(ls) => {
                out.resize(out.len() + ls.len() * 8, 0);
                ls.iter().for_each(|l| native_nvlist_header(out, o, l));
            }
        }
        out.resize(start + size, 0);
        match value {
            Value::List(l) => native_write_pairs(out, l, o),
            Value::Lists(ls) => ls.iter().for_each(|l| native_write_pairs(out, l, o)),
            _ => {}
        }
    }
    push_u32(out, o, 0);
}

fn xdr_put_string(out: &mut Vec<u8>, s: &str) {
    push_u32(out, ByteOrder::Big, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
    out.resize(out.len() + align4(s.len()) - s.len(), 0);
}

/// Size of an nvlist in XDR, as `nvs_xdr_nvp_size` counts it.
fn xdr_list_size(l: &NvList) -> usize {
    16 + l
        .pairs
        .iter()
        .map(|(n, v)| xdr_pair_size(n, v))
        .sum::<usize>()
}

fn xdr_pair_size(name: &str, v: &Value) -> usize {
    let head = 4 + 4 + 4 + align4(name.len()) + 4 + 4;
    head + match v {
        Value::Flag => 0,
        Value::Number(t, _) => {
            if t.width() == Some(8) {
                8
            } else {
                4
            }
        }
        Value::Numbers(DataType::ByteArray, n) => align4(n.len()),
        Value::Numbers(t, n) => 4 + n.len() * if t.width() == Some(8) { 8 } else { 4 },
        Value::String(s) => 4 + align4(s.len()),
        Value::Strings(ss) => ss.iter().map(|s| 4 + align4(s.len())).sum(),
        Value::List(l) => xdr_list_size(l),
        Value::Lists(ls) => ls.iter().map(xdr_list_size).sum(),
    }
}

fn xdr_write_list(out: &mut Vec<u8>, list: &NvList) {
    let be = ByteOrder::Big;
    push_u32(out, be, 0);
    push_u32(out, be, list.nvflag);
    for (name, value) in &list.pairs {
        push_u32(out, be, xdr_pair_size(name, value) as u32);
        let native = align8(16 + name.len() + 1) + align8(native_value_size(value));
        push_u32(out, be, native as u32);
        xdr_put_string(out, name);
        push_u32(out, be, value.data_type() as u32);
        push_u32(out, be, value.nelem() as u32);
        let put_num = |out: &mut Vec<u8>, t: DataType, v: u64| {
            if t.width() == Some(8) {
                push_u64(out, be, v)
            } else {
                push_u32(out, be, v as u32)
            }
        };
        match value {
            Value::Flag => {}
            Value::Number(t, v) => put_num(out, *t, *v),
            Value::Numbers(DataType::ByteArray, vs) => {
                out.extend(vs.iter().map(|&v| v as u8));
                out.resize(out.len() + align4(vs.len()) - vs.len(), 0);
            }
            Value::Numbers(t, vs) => {
                if !vs.is_empty() {
                    push_u32(out, be, vs.len() as u32);
                    vs.iter().for_each(|v| put_num(out, *t, *v));
                }
            }
            Value::String(s) => xdr_put_string(out, s),
            Value::Strings(ss) => ss.iter().for_each(|s| xdr_put_string(out, s)),
            Value::List(l) => xdr_write_list(out, l),
            Value::Lists(ls) => ls.iter().for_each(|l| xdr_write_list(out, l)),
        }
    }
    push_u32(out, be, 0);
    push_u32(out, be, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NvList {
        NvList::new()
            .with("toname", Value::String("tank/fs@snap".into()))
            .with(
                "toguid",
                Value::Number(DataType::Uint64, 0x1234_5678_9abc_def0),
            )
            .with("embedok", Value::Flag)
            .with("small", Value::Number(DataType::Int8, (-3i64) as u64))
            .with("bv", Value::Number(DataType::BooleanValue, 1))
            .with(
                "redact_snaps",
                Value::Numbers(DataType::Uint64Array, vec![1, 2, 3]),
            )
            .with(
                "bytes",
                Value::Numbers(DataType::ByteArray, vec![1, 2, 3, 4, 5]),
            )
            .with("names", Value::Strings(vec!["a".into(), "bcd".into()]))
            .with(
                "fss",
                Value::List(NvList::new().with(
                    "0x1",
                    Value::List(NvList::new().with("name", Value::String("tank/fs".into()))),
                )),
            )
            .with(
                "arr",
                Value::Lists(vec![
                    NvList::new().with("x", Value::Number(DataType::Uint32, 7)),
                    NvList::new(),
                ]),
            )
            .with("after", Value::Number(DataType::Int16, (-2i64) as u64))
    }

    #[test]
    fn round_trips_in_every_encoding() {
        let list = sample();
        for enc in [
            Encoding::Native(ByteOrder::Little),
            Encoding::Native(ByteOrder::Big),
            Encoding::Xdr,
        ] {
            let packed = encode(&list, enc);
            let (back, found) = decode(&packed).unwrap();
            assert_eq!(found, enc);
            assert_eq!(back, list, "{enc:?}");
        }
    }

    #[test]
    fn invalid_utf8_in_a_string_array_is_not_a_panic() {
        // Found by the nvlist fuzzer: lossy decoding made a string longer
        // than its bytes, and the next string's start ran off the pair.
        let list = NvList::new().with("s", Value::Strings(vec!["ab".into(), "cd".into()]));
        let mut packed = encode(&list, Encoding::Native(ByteOrder::Little));
        let at = packed.windows(2).position(|w| w == b"ab").unwrap();
        packed[at] = 0xff;
        packed[at + 1] = 0xfe;
        let (back, _) = decode(&packed).unwrap();
        assert_eq!(
            back.pairs[0].1,
            Value::Strings(vec!["\u{fffd}\u{fffd}".into(), "cd".into()])
        );
    }

    #[test]
    fn truncation_anywhere_is_an_error_not_a_panic() {
        for enc in [Encoding::Native(ByteOrder::Little), Encoding::Xdr] {
            let packed = encode(&sample(), enc);
            for cut in 0..packed.len() {
                assert!(decode(&packed[..cut]).is_err(), "{enc:?} cut at {cut}");
            }
        }
    }
}
