//! A push job's snapshot hooks (`[job.hooks]`): commands run before and
//! after the snapshot, and the built-in database hooks that make the
//! snapshot application-consistent.

use crate::units::parse_duration;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[job.hooks]`.
///
/// ```toml
/// [job.hooks]
/// pre_snapshot = ["/usr/local/sbin/app-freeze", "--quick"]   # argv, no shell
/// post_snapshot = ["/usr/local/sbin/app-thaw"]               # runs whenever pre_snapshot ran
/// timeout = "60s"                                            # each command; killed after it
/// database = "postgresql"                                    # CHECKPOINT, then record the WAL position
/// connection = "host=/var/run/postgresql user=postgres"      # psql -d (libpq connection string)
/// ```
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    /// Run before the snapshot (argv); if it fails or times out, no
    /// snapshot is taken and the job fails.
    #[serde(default)]
    pub pre_snapshot: Option<Vec<String>>,
    /// Run after the snapshot (argv), whenever the pre-snapshot step ran,
    /// even when it or the snapshot failed.
    #[serde(default)]
    pub post_snapshot: Option<Vec<String>>,
    /// Each command's time limit (default 60 s); a command still running
    /// then is killed and counts as failed.
    #[serde(default, deserialize_with = "de_timeout")]
    pub timeout: Option<Duration>,
    /// `fjord-send switchover` only: stops the application's writes (argv)
    /// before the final snapshot, e.g. `["systemctl", "stop",
    /// "postgresql"]`; if it fails, the switchover stops before anything
    /// changed.
    #[serde(default)]
    pub stop_writes: Option<Vec<String>>,
    /// A built-in database hook.
    #[serde(default)]
    pub database: Option<Database>,
    /// How to reach the database. PostgreSQL: what `psql -d` takes (a
    /// libpq connection string). MySQL/MariaDB: an option file with the
    /// credentials (`mysql --defaults-extra-file`). Default: the client's
    /// own (local socket, `PGUSER`, `~/.my.cnf`, ...).
    #[serde(default)]
    pub connection: Option<String>,
    /// The `psql` binary (default `psql` on `PATH`).
    #[serde(default)]
    pub psql: Option<PathBuf>,
    /// The `mysql` (or `mariadb`) client binary (default `mysql` on `PATH`).
    #[serde(default)]
    pub mysql: Option<PathBuf>,
}

/// The databases with a built-in hook.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Database {
    /// PostgreSQL: `CHECKPOINT` right before the snapshot, then
    /// `pg_current_wal_lsn()` recorded as `fjord:wal_lsn` on the snapshot.
    Postgresql,
    /// MySQL or MariaDB: `FLUSH TABLES WITH READ LOCK` held on one
    /// connection across the snapshot, the binary log position recorded
    /// as `fjord:binlog_pos`; `UNLOCK TABLES` after it, whatever happened.
    #[serde(alias = "mariadb")]
    Mysql,
}

/// The default time limit of one hook command.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

impl HooksConfig {
    /// Whether anything runs around the snapshot.
    pub fn is_empty(&self) -> bool {
        self.pre_snapshot.is_none() && self.post_snapshot.is_none() && self.database.is_none()
    }

    /// Each command's time limit.
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_HOOK_TIMEOUT)
    }

    /// The first problem, as (key under `hooks.`, what to write).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        for (key, argv) in [
            ("pre_snapshot", &self.pre_snapshot),
            ("post_snapshot", &self.post_snapshot),
            ("stop_writes", &self.stop_writes),
        ] {
            if argv
                .as_ref()
                .is_some_and(|a| a.first().is_none_or(String::is_empty))
            {
                return Err((
                    key,
                    "an empty command: give the program and its arguments, e.g. [\"/usr/local/sbin/freeze\", \"--quick\"]".into(),
                ));
            }
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(("timeout", "must be more than 0s".into()));
        }
        if self.database.is_none()
            && (self.connection.is_some() || self.psql.is_some() || self.mysql.is_some())
        {
            return Err(("connection", "only with database = \"postgresql\"".into()));
        }
        Ok(())
    }
}

fn de_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| parse_duration(&t).map_err(serde::de::Error::custom))
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> HooksConfig {
        toml::from_str(text).expect("parses")
    }

    #[test]
    fn hooks_parse_and_check() {
        let h = parse(
            "pre_snapshot = [\"/bin/freeze\", \"-q\"]\npost_snapshot = [\"/bin/thaw\"]\ntimeout = \"5s\"\ndatabase = \"postgresql\"\nconnection = \"host=/run/postgresql\"\n",
        );
        assert_eq!(h.timeout(), Duration::from_secs(5));
        assert_eq!(h.database, Some(Database::Postgresql));
        assert!(h.check().is_ok() && !h.is_empty());
        assert!(HooksConfig::default().is_empty());
        assert_eq!(HooksConfig::default().timeout(), DEFAULT_HOOK_TIMEOUT);
        assert_eq!(
            parse("pre_snapshot = []").check().unwrap_err().0,
            "pre_snapshot"
        );
        assert_eq!(parse("timeout = \"0s\"").check().unwrap_err().0, "timeout");
        assert_eq!(
            parse("connection = \"x\"").check().unwrap_err().0,
            "connection"
        );
        assert!(toml::from_str::<HooksConfig>("database = \"oracle\"").is_err());
        assert_eq!(
            parse("database = \"mariadb\"").database,
            Some(Database::Mysql)
        );
        assert_eq!(
            parse("database = \"mysql\"").database,
            Some(Database::Mysql)
        );
        assert!(toml::from_str::<HooksConfig>("pre = [\"x\"]").is_err());
    }

    #[test]
    fn a_database_hook_needs_the_properties_sent() {
        let text = |extra: &str| {
            format!(
                "key = \"/k\"\nstate_dir = \"/s\"\n[[job]]\nname = \"db\"\nsource = \"tank/db\"\ntarget_host = \"h:1\"\ntarget_key = \"K\"\ntarget_dataset = \"b/db\"\n{extra}\n[job.hooks]\ndatabase = \"postgresql\"\n"
            )
        };
        let path = std::path::Path::new("send.toml");
        let e = crate::SendConfig::from_toml(path, &text("")).unwrap_err();
        assert!(e.to_string().contains("job[1].properties"), "{e}");
        let c = crate::SendConfig::from_toml(path, &text("properties = true")).expect("valid");
        assert!(c.jobs[0].properties);
        assert_eq!(c.jobs[0].hooks.database, Some(Database::Postgresql));
    }
}
