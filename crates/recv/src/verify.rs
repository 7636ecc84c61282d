//! `fjord-recv verify`: a filter between a send stream and `zfs recv` that
//! forwards a record only once a checksum covering all of it has matched.
//!
//! A record's trailer checksum vouches for everything before it, so a
//! record's payload is only known good when the next trailer (or the END
//! checksum) has been checked. The filter therefore holds records until the
//! decoder's verified offset passes their end; on any error it stops, and
//! nothing after the last verified record has been written.

use anyhow::anyhow;
use fjord_cli::Failure;
use fjord_stream::read::{decode_all, ReadError};
use fjord_stream::{DecoderOptions, Record};
use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;

/// Verify a ZFS send stream and copy it to standard output.
///
/// Never writes a byte that has not been checksum-verified. Use it in
/// front of `zfs recv`:
///   ssh primary zfs send -i @a tank/fs@b | fjord-recv verify - | zfs recv -s -F backup/fs
///
/// Exits 0 when the whole stream verified, 1 (with a one-line reason on
/// stderr) when it is invalid or truncated, 3 on an I/O error.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Stream file, or `-` for standard input.
    input: PathBuf,
    /// Accept a stream without DRR_END (`zfs send -S`); its last records,
    /// which no checksum covers, are then written too.
    #[arg(long)]
    allow_missing_end: bool,
    /// Held records may use at most this many MiB before the stream is
    /// refused as unverifiable with bounded memory (only streams without
    /// per-record checksums, from OpenZFS before 0.6.5, come near it).
    #[arg(long, default_value_t = 256)]
    max_held_mib: u64,
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), Failure> {
    let name = args.input.display().to_string();
    let source = fjord_cli::open_input(&args.input)
        .map_err(|e| Failure::Io(anyhow!("cannot open {name}: {e}")))?;
    let span = tracing::info_span!("verify", input = %name);
    let _enter = span.enter();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    let mut held = Held::new(args.max_held_mib << 20);
    let opts = DecoderOptions {
        verify_checksums: true,
        allow_missing_end: args.allow_missing_end,
    };
    let result = decode_all(source, opts, |record, decoder| {
        held.push(record)?;
        held.release(decoder.verified_offset(), &mut out)
            .map_err(|e| format!("writing the output: {e}"))
    });
    if let Err(e) = result {
        // Write out what was verified before the error, then stop.
        let _ = out.flush();
        let why = anyhow!(
            "{name}: {e}; {} verified bytes were written, nothing after them",
            held.written
        );
        return Err(if matches!(e, ReadError::Io { .. }) {
            Failure::Io(why)
        } else {
            Failure::InvalidStream(why)
        });
    }
    held.release(u64::MAX, &mut out)
        .and_then(|_| out.flush())
        .map_err(|e| Failure::Io(anyhow!("writing the output: {e}")))?;
    tracing::info!(bytes = held.written, "stream verified and written");
    Ok(())
}

/// Records decoded but not yet covered by a matched checksum.
struct Held {
    records: VecDeque<Record>,
    bytes: u64,
    limit: u64,
    written: u64,
}

impl Held {
    fn new(limit: u64) -> Held {
        Held {
            records: VecDeque::new(),
            bytes: 0,
            limit,
            written: 0,
        }
    }

    fn push(&mut self, r: Record) -> Result<(), String> {
        self.bytes += r.wire_len();
        if self.bytes > self.limit {
            return Err(format!(
                "more than {} MiB of records without a checksum to verify them (record #{} at byte {}); \
                 raise --max-held-mib to accept this stream",
                self.limit >> 20,
                r.index,
                r.offset
            ));
        }
        self.records.push_back(r);
        Ok(())
    }

    /// Writes every held record that ends at or before `verified`.
    fn release(&mut self, verified: u64, out: &mut impl Write) -> std::io::Result<()> {
        while let Some(r) = self.records.front() {
            if r.offset + r.wire_len() > verified {
                break;
            }
            out.write_all(&r.raw_header)?;
            out.write_all(&r.payload)?;
            self.bytes -= r.wire_len();
            self.written += r.wire_len();
            self.records.pop_front();
        }
        Ok(())
    }
}
