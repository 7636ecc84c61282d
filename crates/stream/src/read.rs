//! A thin blocking edge over the sans-IO [`Decoder`]: drive it from any
//! `std::io::Read` (a file, a pipe from `zfs send`, stdin).

use crate::decoder::{Decoder, DecoderOptions, Record};
use crate::error::StreamError;
use thiserror::Error;

/// How much is read from the source at a time.
pub const READ_CHUNK: usize = 1 << 20;

/// Why reading a stream stopped.
#[derive(Debug, Error)]
pub enum ReadError {
    /// The source failed.
    #[error("reading the stream failed after {at} bytes: {source}")]
    Io {
        /// Bytes read before the failure.
        at: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The stream is invalid.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The record callback refused to go on.
    #[error("{0}")]
    Consumer(String),
}

/// Decodes all of `source`, calling `on_record` for each record with the
/// decoder (for its verified offset). Returns the decoder, finished.
pub fn decode_all<R, F>(
    mut source: R,
    opts: DecoderOptions,
    mut on_record: F,
) -> Result<Decoder, ReadError>
where
    R: std::io::Read,
    F: FnMut(Record, &Decoder) -> Result<(), String>,
{
    let mut decoder = Decoder::new(opts);
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let n = loop {
            match source.read(&mut chunk) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ReadError::Io {
                        at: decoder.bytes_in(),
                        source,
                    })
                }
            }
        };
        if n == 0 {
            decoder.finish()?;
            return Ok(decoder);
        }
        decoder.feed(&chunk[..n]);
        while let Some(record) = decoder.next_record()? {
            on_record(record, &decoder).map_err(ReadError::Consumer)?;
        }
    }
}
