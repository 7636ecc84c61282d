//! `fjord-recv unpack`: a fjord pack file back into the original send
//! stream, releasing only verified bytes.

use anyhow::anyhow;
use fjord_cli::Failure;
use fjord_pack::{unpack, NoCache, UnpackError, UnpackOptions};
use std::io::Write;
use std::path::PathBuf;

/// Rebuild a send stream from a pack written by `fjord-send pack`.
///
/// Writes the stream, byte for byte, to standard output (or `-o FILE`):
///   fjord-recv unpack x.fjp | zfs recv -s backup/fs
/// Every frame's BLAKE3 and every record's checksum is checked before a
/// byte is written; on damage it stops with the frame named, having
/// written nothing past the last verified record.
///
/// Exits 0 when the whole stream was rebuilt and its receipt matched, 1
/// when the pack is damaged or truncated, 3 on an I/O error.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Pack file, or `-` for standard input.
    input: PathBuf,
    /// Write the stream here instead of standard output.
    #[arg(short, long)]
    output: Option<PathBuf>,
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), Failure> {
    let name = args.input.display().to_string();
    let source = fjord_cli::open_input(&args.input)
        .map_err(|e| Failure::Io(anyhow!("cannot open {name}: {e}")))?;
    let sink: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .map_err(|e| Failure::Io(anyhow!("cannot create {}: {e}", path.display())))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let span = tracing::info_span!("unpack", input = %name);
    let _enter = span.enter();
    // Small enough that the frame-sized pieces unpack releases (about
    // 1 MiB) go straight to the sink uncopied; record-sized ones are
    // gathered.
    let out = std::io::BufWriter::with_capacity(256 << 10, sink);
    // File mode: nobody answered for a chunk cache when the pack was made.
    let summary = unpack(source, out, &mut NoCache, &UnpackOptions::default()).map_err(|e| {
        let why = anyhow!("{name}: {e}");
        match e.source {
            UnpackError::Read { .. } | UnpackError::Write { .. } | UnpackError::Cache { .. } => {
                Failure::Io(why)
            }
            _ => Failure::InvalidStream(why),
        }
    })?;
    tracing::info!(
        bytes = summary.receipt.stream_len,
        receipt = %summary.receipt.hex(),
        "stream rebuilt and verified"
    );
    Ok(())
}
