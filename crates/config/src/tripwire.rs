//! A push job's ransomware tripwire (`[job.tripwire]`): how far a push's
//! incompressible and rewritten shares may move from the dataset's own
//! history before it raises the alarm.

use crate::units::parse_size;
use serde::Deserialize;

/// `[job.tripwire]`; every key is optional.
///
/// ```toml
/// [job.tripwire]
/// enabled = true          # measure and judge every incremental push (default true)
/// factor = 3.0            # trips at factor x the dataset's median share ...
/// floor = 0.5             # ... and at least this share (0..1)
/// min_history = 5         # judged pushes needed before it can trip
/// history = 20            # pushes kept for the median
/// min_bytes = "4M"        # smaller pushes are neither judged nor kept
/// pause_pruning = false   # when tripped, stop pruning the source until acknowledged
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TripwireConfig {
    /// Measure and judge incremental pushes.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A share trips at this multiple of its baseline (the median of the
    /// kept history).
    #[serde(default = "default_factor")]
    pub factor: f64,
    /// ... and only if it is at least this share (0 to 1).
    #[serde(default = "default_floor")]
    pub floor: f64,
    /// Pushes in the history before the tripwire can trip.
    #[serde(default = "default_min_history")]
    pub min_history: usize,
    /// Pushes kept in the history (the newest).
    #[serde(default = "default_history")]
    pub history: usize,
    /// Pushes writing fewer block bytes than this are not judged (and not
    /// kept): their shares are noise.
    #[serde(default = "default_min_bytes", deserialize_with = "de_size")]
    pub min_bytes: u64,
    /// When tripped, skip the source-side pruning of that dataset until an
    /// operator runs `fjord-send tripwire ack`.
    #[serde(default)]
    pub pause_pruning: bool,
}

fn yes() -> bool {
    true
}
fn default_factor() -> f64 {
    3.0
}
fn default_floor() -> f64 {
    0.5
}
fn default_min_history() -> usize {
    5
}
fn default_history() -> usize {
    20
}
fn default_min_bytes() -> u64 {
    4 << 20
}

impl Default for TripwireConfig {
    fn default() -> Self {
        TripwireConfig {
            enabled: true,
            factor: default_factor(),
            floor: default_floor(),
            min_history: default_min_history(),
            history: default_history(),
            min_bytes: default_min_bytes(),
            pause_pruning: false,
        }
    }
}

/// The most pushes a history keeps.
pub const MAX_HISTORY: usize = 1000;

impl TripwireConfig {
    /// The first problem, as (key under `tripwire.`, what to write).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(self.factor.is_finite() && self.factor > 1.0) {
            return Err((
                "factor",
                format!("{} must be a number above 1, such as 3.0", self.factor),
            ));
        }
        if !(self.floor > 0.0 && self.floor <= 1.0) {
            return Err((
                "floor",
                format!(
                    "{} must be a share above 0 and at most 1, such as 0.5",
                    self.floor
                ),
            ));
        }
        if self.min_history == 0 {
            return Err(("min_history", "must be at least 1".into()));
        }
        if self.history < self.min_history || self.history > MAX_HISTORY {
            return Err((
                "history",
                format!(
                    "{} must be between min_history ({}) and {MAX_HISTORY}",
                    self.history, self.min_history
                ),
            ));
        }
        Ok(())
    }
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    parse_size(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> TripwireConfig {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn defaults_and_checks() {
        let d = parse("");
        assert_eq!(d, TripwireConfig::default());
        assert!(d.check().is_ok());
        assert_eq!(d.min_bytes, 4 << 20);
        assert_eq!(parse("min_bytes = \"64K\"").min_bytes, 64 << 10);
        assert_eq!(parse("factor = 1.0").check().unwrap_err().0, "factor");
        assert_eq!(parse("floor = 0.0").check().unwrap_err().0, "floor");
        assert_eq!(parse("floor = 1.5").check().unwrap_err().0, "floor");
        assert_eq!(
            parse("min_history = 0").check().unwrap_err().0,
            "min_history"
        );
        assert_eq!(
            parse("min_history = 5\nhistory = 4").check().unwrap_err().0,
            "history"
        );
        assert!(toml::from_str::<TripwireConfig>("fator = 2.0").is_err());
        assert!(toml::from_str::<TripwireConfig>("min_bytes = \"lots\"").is_err());
    }
}
