//! `[drill]` of the receiver's config: restore drills (`fjord-recv
//! drill`), which clone a DR copy's newest snapshot into a scratch
//! dataset, run a check against it and destroy the clone.
//!
//! ```toml
//! [drill]
//! scratch = "backup/drill"          # the clones' parent (outside every client's prefixes)
//! mount_dir = "/run/fjord-drill"    # clones mount at MOUNT_DIR/<clone name>
//! state_dir = "/var/lib/fjord"      # results: STATE_DIR/drill/<dataset>.json
//! timeout = "10m"                   # the check's time limit; killed after it
//! check = ["/usr/local/sbin/check-restore"]   # default for the targets (argv, no shell)
//!
//! [[drill.target]]
//! dataset = "backup/oslo/home"      # uses the default check
//!
//! [[drill.target]]
//! dataset = "backup/oslo/db"
//! check = "postgresql"              # the built-in check: start PostgreSQL on the clone
//! data_dir = "pg/data"              # its data directory, relative to the clone's root
//! port = 55432                      # where it listens (a socket in a private directory)
//! query = "SELECT count(*) FROM orders"
//! pg_bin = "/usr/lib/postgresql/15/bin"
//! ```

use crate::units::parse_duration;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// What a drill runs against the clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrillCheck {
    /// The operator's command (argv, no shell), with `FJORD_DRILL_*` set.
    Command(Vec<String>),
    /// The built-in PostgreSQL check: start a server on the clone's data
    /// directory on another port, run a query, stop it.
    Postgresql,
}

impl<'de> Deserialize<'de> for DrillCheck {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Argv(Vec<String>),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Argv(argv) => Ok(DrillCheck::Command(argv)),
            Raw::Name(n) if n == "postgresql" => Ok(DrillCheck::Postgresql),
            Raw::Name(n) => Err(serde::de::Error::custom(format!(
                "check = {n:?}: give a command as a list ([\"/usr/local/sbin/check\", \"arg\"]) or \"postgresql\""
            ))),
        }
    }
}

/// The default time limit of a drill's check.
pub const DEFAULT_DRILL_TIMEOUT: Duration = Duration::from_secs(600);
/// The built-in PostgreSQL check's default port.
pub const DEFAULT_DRILL_PORT: u16 = 55432;
/// The built-in PostgreSQL check's default query.
pub const DEFAULT_DRILL_QUERY: &str = "SELECT 1";

/// `[drill]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// The dataset the clones are made under (created if missing, with
    /// its parent existing); must lie outside every client's prefixes.
    pub scratch: String,
    /// Where clones mount (default `/run/fjord-drill`).
    #[serde(default)]
    pub mount_dir: Option<PathBuf>,
    /// Where the results are recorded (default `/var/lib/fjord`).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// Defaults for every target.
    #[serde(default, deserialize_with = "de_duration")]
    pub timeout: Option<Duration>,
    /// Default check.
    #[serde(default)]
    pub check: Option<DrillCheck>,
    /// Default: a command check's clone is writable.
    #[serde(default)]
    pub writable: Option<bool>,
    /// Default PostgreSQL port.
    #[serde(default)]
    pub port: Option<u16>,
    /// Default PostgreSQL query.
    #[serde(default)]
    pub query: Option<String>,
    /// Default directory of `pg_ctl` and `psql`.
    #[serde(default)]
    pub pg_bin: Option<PathBuf>,
    /// Default PostgreSQL data directory, relative to the clone's root.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// The copies to drill.
    #[serde(rename = "target", default)]
    pub targets: Vec<DrillTargetConfig>,
}

/// One `[[drill.target]]`: a DR copy to drill, with overrides of the
/// `[drill]` defaults.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillTargetConfig {
    /// The DR copy (a dataset under a client's prefixes).
    pub dataset: String,
    /// Its check's time limit.
    #[serde(default, deserialize_with = "de_duration")]
    pub timeout: Option<Duration>,
    /// Its check.
    #[serde(default)]
    pub check: Option<DrillCheck>,
    /// A command check's clone is writable (default read-only; the
    /// PostgreSQL check's clone is always writable: the server writes).
    #[serde(default)]
    pub writable: Option<bool>,
    /// PostgreSQL: the port.
    #[serde(default)]
    pub port: Option<u16>,
    /// PostgreSQL: the query.
    #[serde(default)]
    pub query: Option<String>,
    /// PostgreSQL: the directory of `pg_ctl` and `psql`.
    #[serde(default)]
    pub pg_bin: Option<PathBuf>,
    /// PostgreSQL: the data directory, relative to the clone's root.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

/// One target with the defaults applied: everything a drill of it needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrillTarget {
    /// The DR copy.
    pub dataset: String,
    /// The check.
    pub check: DrillCheck,
    /// Its time limit.
    pub timeout: Duration,
    /// The clone is writable.
    pub writable: bool,
    /// PostgreSQL: the port.
    pub port: u16,
    /// PostgreSQL: the query.
    pub query: String,
    /// PostgreSQL: `pg_ctl` and `psql` are here (`None`: on `PATH`).
    pub pg_bin: Option<PathBuf>,
    /// PostgreSQL: the data directory, relative to the clone's root.
    pub data_dir: PathBuf,
}

impl DrillConfig {
    /// Where clones mount.
    pub fn mount_dir(&self) -> PathBuf {
        self.mount_dir
            .clone()
            .unwrap_or_else(|| "/run/fjord-drill".into())
    }

    /// Where results are recorded.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| "/var/lib/fjord".into())
    }

    /// Every target with the defaults applied; `None` for a target
    /// without a check (refused when the config is loaded).
    pub fn targets(&self) -> Vec<Option<DrillTarget>> {
        self.targets.iter().map(|t| self.resolve(t)).collect()
    }

    /// The target for `dataset`, if configured.
    pub fn target(&self, dataset: &str) -> Option<DrillTarget> {
        self.targets
            .iter()
            .find(|t| t.dataset == dataset)
            .and_then(|t| self.resolve(t))
    }

    /// `t` with the defaults applied; `None` when neither has a check.
    pub fn resolve(&self, t: &DrillTargetConfig) -> Option<DrillTarget> {
        let check = t.check.clone().or_else(|| self.check.clone())?;
        Some(DrillTarget {
            dataset: t.dataset.clone(),
            writable: check == DrillCheck::Postgresql
                || t.writable.or(self.writable).unwrap_or(false),
            check,
            timeout: t.timeout.or(self.timeout).unwrap_or(DEFAULT_DRILL_TIMEOUT),
            port: t.port.or(self.port).unwrap_or(DEFAULT_DRILL_PORT),
            query: t
                .query
                .clone()
                .or_else(|| self.query.clone())
                .unwrap_or_else(|| DEFAULT_DRILL_QUERY.into()),
            pg_bin: t.pg_bin.clone().or_else(|| self.pg_bin.clone()),
            data_dir: t
                .data_dir
                .clone()
                .or_else(|| self.data_dir.clone())
                .unwrap_or_else(|| ".".into()),
        })
    }

    /// The first problem as (key under `drill.`, what to write); `prefixes`
    /// are every client's.
    pub fn check(&self, prefixes: &[&str]) -> Result<(), (String, String)> {
        use fjord_zfs::names::{is_within_prefix, validate_dataset};
        let fail = |k: &str, m: String| Err((k.to_string(), m));
        if let Err(e) = validate_dataset(&self.scratch) {
            return fail("scratch", e.to_string());
        }
        if let Some(p) = prefixes.iter().find(|p| is_within_prefix(&self.scratch, p)) {
            return fail("scratch", format!("{} is under the client prefix {p}: clones there would count as copies and a client could write them; give a dataset outside every prefix, such as \"backup/drill\"", self.scratch));
        }
        for (key, dir) in [
            ("mount_dir", &self.mount_dir),
            ("state_dir", &self.state_dir),
        ] {
            if dir.as_ref().is_some_and(|d| !d.is_absolute()) {
                return fail(key, "must be an absolute path".into());
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            let key = |f: &str| format!("target[{}].{f}", i + 1);
            if let Err(e) = validate_dataset(&t.dataset) {
                return fail(&key("dataset"), e.to_string());
            }
            if !prefixes.iter().any(|p| is_within_prefix(&t.dataset, p)) {
                return fail(
                    &key("dataset"),
                    format!(
                        "{} is under no client's prefixes: a drill tests a DR copy",
                        t.dataset
                    ),
                );
            }
            if !seen.insert(t.dataset.as_str()) {
                return fail(&key("dataset"), format!("{} is listed twice", t.dataset));
            }
            let Some(r) = self.resolve(t) else {
                return fail(&key("check"), "no check: give one here or in [drill] (a command such as [\"/usr/local/sbin/check-restore\"], or \"postgresql\")".into());
            };
            if let DrillCheck::Command(argv) = &r.check {
                if argv.first().is_none_or(String::is_empty) {
                    return fail(
                        &key("check"),
                        "an empty command: give the program and its arguments".into(),
                    );
                }
            }
            if r.timeout.is_zero() {
                return fail(&key("timeout"), "must be more than 0s".into());
            }
            if r.port == 0 {
                return fail(&key("port"), "must be a port number, 1 to 65535".into());
            }
            let escapes = r.data_dir.is_absolute()
                || r.data_dir
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir));
            if escapes {
                return fail(
                    &key("data_dir"),
                    "must be relative to the clone's root, without \"..\"".into(),
                );
            }
            if r.query.trim().is_empty() {
                return fail(&key("query"), "is empty".into());
            }
        }
        Ok(())
    }
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| parse_duration(&t).map_err(serde::de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DrillConfig, toml::de::Error> {
        toml::from_str(text)
    }

    const BASE: &str = "scratch = \"b/drill\"\ncheck = [\"/bin/check\", \"-q\"]\n";

    #[test]
    fn targets_take_the_defaults_and_their_overrides() {
        let c = parse(&format!("{BASE}timeout = \"30s\"\n[[target]]\ndataset = \"b/oslo/home\"\n[[target]]\ndataset = \"b/oslo/db\"\ncheck = \"postgresql\"\nport = 6000\ndata_dir = \"pg/data\"\n")).expect("parses");
        assert!(c.check(&["b/oslo"]).is_ok());
        let t = c.targets();
        let home = t[0].clone().expect("resolved");
        assert_eq!(
            home.check,
            DrillCheck::Command(vec!["/bin/check".into(), "-q".into()])
        );
        assert_eq!(
            (home.timeout, home.writable),
            (Duration::from_secs(30), false)
        );
        let db = c.target("b/oslo/db").expect("db");
        assert_eq!(db.check, DrillCheck::Postgresql);
        assert!(db.writable, "PostgreSQL writes to its data directory");
        assert_eq!((db.port, db.query.as_str()), (6000, "SELECT 1"));
        assert_eq!(db.data_dir, PathBuf::from("pg/data"));
        assert_eq!(c.mount_dir(), PathBuf::from("/run/fjord-drill"));
        assert_eq!(c.state_dir(), PathBuf::from("/var/lib/fjord"));
    }

    #[test]
    fn bad_drill_settings_name_their_key() {
        let key = |text: &str| {
            parse(text)
                .expect("parses")
                .check(&["b/oslo"])
                .unwrap_err()
                .0
        };
        assert_eq!(key("scratch = \"b/oslo/drill\""), "scratch");
        assert_eq!(
            key("scratch = \"b/d\"\n[[target]]\ndataset = \"b/oslo/x\""),
            "target[1].check"
        );
        assert_eq!(
            key(&format!("{BASE}[[target]]\ndataset = \"b/other/x\"")),
            "target[1].dataset"
        );
        assert_eq!(
            key(&format!(
                "{BASE}[[target]]\ndataset = \"b/oslo/x\"\n[[target]]\ndataset = \"b/oslo/x\""
            )),
            "target[2].dataset"
        );
        assert_eq!(
            key(&format!(
                "{BASE}[[target]]\ndataset = \"b/oslo/x\"\ncheck = []"
            )),
            "target[1].check"
        );
        assert_eq!(
            key(&format!(
                "{BASE}[[target]]\ndataset = \"b/oslo/x\"\ntimeout = \"0s\""
            )),
            "target[1].timeout"
        );
        assert_eq!(
            key(&format!(
                "{BASE}[[target]]\ndataset = \"b/oslo/x\"\ndata_dir = \"../etc\""
            )),
            "target[1].data_dir"
        );
        assert_eq!(key(&format!("{BASE}mount_dir = \"run\"")), "mount_dir");
        assert!(parse("scratch = \"b/d\"\ncheck = \"oracle\"").is_err());
        assert!(parse("scratch = \"b/d\"\nchecks = []").is_err());
    }
}
