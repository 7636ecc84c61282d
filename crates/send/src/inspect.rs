//! `fjord-send inspect`: summarise (and with `--verify`, check) a send stream.

use anyhow::anyhow;
use fjord_cli::Failure;
use fjord_stream::read::{decode_all, ReadError};
use fjord_stream::{DecoderOptions, RecordType, Summary};
use std::io::Write;
use std::path::PathBuf;

/// Summarise a ZFS send stream.
///
/// Prints its kind, byte order, features, names, guids, and records and
/// bytes per type.
///
/// Exits 0 for a valid stream, 1 with a one-line reason on stderr for an
/// invalid or truncated one, 3 when the input cannot be read.
#[derive(clap::Args)]
pub struct Args {
    /// Stream file, or `-` for standard input (e.g. `zfs send ... | fjord-send inspect -`).
    input: PathBuf,
    /// Print the summary as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Check every record's Fletcher-4 trailer and every END checksum, as
    /// `zfs recv` would. Without it only structure and limits are checked.
    #[arg(long)]
    verify: bool,
    /// Accept a stream that stops on a record boundary without DRR_END, as
    /// `zfs send -S` writes. Without it, that is reported as truncation.
    #[arg(long)]
    allow_missing_end: bool,
}

#[derive(serde::Serialize)]
struct Report<'a> {
    input: String,
    checksums_verified: bool,
    #[serde(flatten)]
    summary: &'a Summary,
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), Failure> {
    let name = args.input.display().to_string();
    let source = fjord_cli::open_input(&args.input)
        .map_err(|e| Failure::Io(anyhow!("cannot open {name}: {e}")))?;
    let opts = DecoderOptions {
        verify_checksums: args.verify,
        allow_missing_end: args.allow_missing_end,
    };
    let span = tracing::info_span!("inspect", input = %name, verify = args.verify);
    let _enter = span.enter();
    let mut summary = Summary::default();
    let result = decode_all(source, opts, |record, decoder| {
        if let Some(order) = decoder.state().order {
            summary.add(&record, order);
        }
        Ok(())
    });
    let decoder = match result {
        Ok(decoder) => decoder,
        Err(ReadError::Io { at, source }) => {
            return Err(Failure::Io(anyhow!(
                "{name}: read failed after {at} bytes: {source}"
            )))
        }
        Err(e) => return Err(Failure::InvalidStream(anyhow!("{name}: {e}"))),
    };
    summary.ended_without_end = decoder.state().ended_without_end;
    tracing::info!(
        records = summary.total_records,
        bytes = summary.total_bytes,
        "stream valid"
    );
    let report = Report {
        input: name,
        checksums_verified: args.verify,
        summary: &summary,
    };
    let printed = if args.json {
        print_json(&report)
    } else {
        print_text(&report)
    };
    match printed {
        // A closed pipe (`| head`) is not the stream's fault.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::Io(anyhow!("writing the summary: {e}")))
        }
        _ => Ok(()),
    }
}

fn print_json(report: &Report) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, report)?;
    writeln!(out)
}

fn print_text(r: &Report) -> std::io::Result<()> {
    let s = r.summary;
    let mut out = std::io::stdout().lock();
    let kind = match s.kind {
        Some(k) => serde_json::to_value(k)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        None => "unknown".into(),
    };
    writeln!(out, "stream:            {}", r.input)?;
    writeln!(out, "kind:              {kind}")?;
    if let Some(order) = s.byte_order {
        writeln!(out, "byte order:        {order}")?;
    }
    if let Some(name) = &s.package_toname {
        writeln!(out, "package toname:    {name}")?;
        if let Some(from) = &s.package_fromsnap {
            writeln!(out, "package fromsnap:  {from}")?;
        }
    }
    for (i, sub) in s.substreams.iter().enumerate() {
        writeln!(out, "substream {}:", i + 1)?;
        writeln!(out, "  toname:          {}", sub.toname)?;
        writeln!(out, "  toguid:          {:#018x}", sub.toguid)?;
        writeln!(
            out,
            "  fromguid:        {:#018x}{}",
            sub.fromguid,
            if sub.fromguid == 0 { " (full)" } else { "" }
        )?;
        writeln!(
            out,
            "  features:        {}",
            sub.features.names().join(", ")
        )?;
        if let (Some(obj), Some(off)) = (sub.resume_object, sub.resume_offset) {
            writeln!(out, "  resumes at:      object {obj}, offset {off}")?;
        }
    }
    writeln!(out, "records:")?;
    for t in RecordType::ALL {
        let c = s.count(t);
        if c.records > 0 {
            writeln!(
                out,
                "  {:<20} {:>10} records {:>14} payload bytes",
                t.name(),
                c.records,
                c.payload_bytes
            )?;
        }
    }
    writeln!(out, "total records:     {}", s.total_records)?;
    writeln!(out, "total bytes:       {}", s.total_bytes)?;
    writeln!(out, "data bytes:        {}", s.data_bytes)?;
    writeln!(out, "compressed-block bytes: {}", s.compressed_block_bytes)?;
    if s.ended_without_end {
        writeln!(
            out,
            "note:              stream ends without DRR_END (zfs send -S)"
        )?;
    }
    writeln!(
        out,
        "checksums:         {}",
        if r.checksums_verified {
            "all verified"
        } else {
            "not checked (use --verify)"
        }
    )
}
