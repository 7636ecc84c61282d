//! The units of both config files and of the command lines: durations
//! (`90s`, `5m`), sizes (`4G`) and byte rates (`50M`).

use std::time::Duration;

/// Parses a byte rate: digits with an optional K, M, G or T suffix
/// (powers of 1024, either case). Zero is refused: omit the key instead.
pub fn parse_bwlimit(text: &str) -> Result<u64, String> {
    let n = parse_quantity(text, "rate", "bytes per second such as \"50M\"")?;
    if n == 0 {
        return Err("a rate of 0 would stop every transfer: remove bwlimit for no limit".into());
    }
    Ok(n)
}

/// Parses a size in bytes: digits with an optional K, M, G or T suffix
/// (powers of 1024), e.g. `"4G"` for a chunk cache.
pub fn parse_size(text: &str) -> Result<u64, String> {
    parse_quantity(text, "size", "bytes such as \"4G\"")
}

/// Digits with an optional K, M, G or T suffix (powers of 1024).
fn parse_quantity(text: &str, what: &str, example: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let multiplier: u64 = match unit.to_ascii_uppercase().as_str() {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?} is not a {what}: write {example} (K, M, G, T = powers of 1024)"
            ))
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a {what}: write {example}"))?;
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a duration: digits with an optional ms, s, m, h or d suffix
/// (plain digits are seconds). Both the config files and the command
/// lines (`--grace`, `--idle-timeout`) use it.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let example = "write such as \"90s\", \"5m\", \"1h\", \"2d\" or \"500ms\"";
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: {example}"))?;
    let duration = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        "d" => n.checked_mul(86_400).map(Duration::from_secs),
        _ => return Err(format!("{text:?} is not a duration: {example}")),
    };
    duration.ok_or_else(|| format!("{text:?} is too long"))
}
