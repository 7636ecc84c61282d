//! `fjord-send pack`: a send stream into a fjord pack file (archiving,
//! sneakernet); `fjord-recv unpack` turns it back.

use anyhow::anyhow;
use fjord_cli::Failure;
use fjord_pack::{pack, NoCache, PackError, PackOptions};
use std::path::PathBuf;

/// Pack a ZFS send stream into a file of checked, deduplicated frames.
///
/// The frames are record-aligned, deduplicated (BLAKE3) and compressed
/// (zstd) where it pays; `fjord-recv unpack` rebuilds the stream byte for
/// byte. The stream is verified while packing. Prints the receipt (BLAKE3
/// of the stream) and what packing saved.
///
/// Exits 0 on success, 1 when the stream is invalid or truncated (the
/// output file is removed), 3 on an I/O error.
#[derive(clap::Args)]
pub struct Args {
    /// Stream file, or `-` for standard input (`zfs send ... | fjord-send pack - -o x.fjp`).
    input: PathBuf,
    /// The pack file to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Original-stream bytes per frame.
    #[arg(long, default_value_t = fjord_pack::encoder::DEFAULT_FRAME_TARGET)]
    frame_size: usize,
    /// zstd level (1 is the measured best trade-off on two cores).
    #[arg(long, default_value_t = fjord_pack::encoder::DEFAULT_ZSTD_LEVEL)]
    level: i32,
    /// Compression workers; 0 means one per core.
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Accept a stream without DRR_END, as `zfs send -S` writes.
    #[arg(long)]
    allow_missing_end: bool,
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), Failure> {
    let name = args.input.display().to_string();
    let source = fjord_cli::open_input(&args.input)
        .map_err(|e| Failure::Io(anyhow!("cannot open {name}: {e}")))?;
    let out_name = args.output.display().to_string();
    let file = std::fs::File::create(&args.output)
        .map_err(|e| Failure::Io(anyhow!("cannot create {out_name}: {e}")))?;
    let opts = PackOptions {
        frame_target: args.frame_size,
        zstd_level: args.level,
        allow_missing_end: args.allow_missing_end,
        workers: args.workers,
        ..Default::default()
    };
    let span = tracing::info_span!("pack", input = %name, output = %out_name);
    let _enter = span.enter();
    // No BufWriter: each frame goes out in one vectored write, and a buffer
    // would only copy the stored payloads once more.
    let summary = pack(source, file, &opts, &mut NoCache).map_err(|e| {
        let _ = std::fs::remove_file(&args.output);
        let why = anyhow!("{name}: {e}; {out_name} was removed");
        match e {
            PackError::Stream(_) => Failure::InvalidStream(why),
            _ => Failure::Io(why),
        }
    })?;
    let s = &summary.stats;
    let ratio = s.wire_bytes as f64 / s.stream_bytes.max(1) as f64;
    println!(
        "packed {} stream bytes into {} ({} bytes, {:.1}%, {} frames)",
        s.stream_bytes,
        out_name,
        s.wire_bytes,
        ratio * 100.0,
        s.frames
    );
    println!(
        "deduplicated: {} repeated payloads ({} bytes); stored without recompression: {} bytes",
        s.window_refs + s.cache_refs,
        s.window_ref_bytes + s.cache_ref_bytes,
        s.stored_bytes
    );
    println!("receipt: blake3 {}", summary.receipt.hex());
    Ok(())
}
