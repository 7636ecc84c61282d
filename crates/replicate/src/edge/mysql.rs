//! The MySQL/MariaDB hook: `FLUSH TABLES WITH READ LOCK` held on one
//! client connection (one `mysql --batch` process, its standard input kept
//! open) from before the snapshot until after it. The lock lives exactly as
//! long as that connection: `UNLOCK TABLES` releases it after the
//! snapshot, and if anything goes wrong the process is killed, which closes
//! the connection and releases it too.

use crate::hooks::{parse_binlog_status, HookError};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};

/// What the client prints once the lock is taken and the position read.
const LOCKED: &str = "fjord-locked";

/// The statements sent to take the lock and read the position.
const LOCK_SQL: &str =
    "FLUSH TABLES WITH READ LOCK;\nSHOW MASTER STATUS;\nSELECT 'fjord-locked';\n";

/// One job's MySQL/MariaDB lock.
#[derive(Debug)]
pub struct MysqlLock {
    client: PathBuf,
    defaults_file: Option<String>,
    timeout: Duration,
    held: tokio::sync::Mutex<Option<Held>>,
}

#[derive(Debug)]
struct Held {
    child: Child,
    stdin: ChildStdin,
}

impl MysqlLock {
    /// The lock through `client`, with `defaults_file` as its
    /// `--defaults-extra-file`.
    pub fn new(client: PathBuf, defaults_file: Option<String>, timeout: Duration) -> MysqlLock {
        MysqlLock {
            client,
            defaults_file,
            timeout,
            held: tokio::sync::Mutex::new(None),
        }
    }

    fn argv(&self) -> Vec<String> {
        let mut argv = vec![self.client.to_string_lossy().into_owned()];
        if let Some(f) = &self.defaults_file {
            argv.push(format!("--defaults-extra-file={f}"));
        }
        // --unbuffered: the client flushes after each statement; without it the
        // "locked" line waits in its buffer until the connection ends (seen
        // against MariaDB 10.11)
        argv.extend([
            "--batch".into(),
            "--skip-column-names".into(),
            "--unbuffered".into(),
        ]);
        argv
    }

    fn what(&self) -> String {
        self.argv().join(" ")
    }

    /// Takes the lock; returns the binary log position (`None` when binary
    /// logging is off). On any failure the connection is closed (the lock,
    /// if taken, goes with it).
    pub async fn lock(&self) -> Result<Option<String>, HookError> {
        let mut held = self.held.lock().await;
        if let Some(old) = held.take() {
            // A lock left by an earlier run: release it first.
            kill(old).await;
        }
        let argv = self.argv();
        let mut child = tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| HookError::Spawn {
                what: self.what(),
                why: e.to_string(),
            })?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(HookError::Spawn {
                what: self.what(),
                why: "no pipes to the client".into(),
            });
        };
        let talk = async {
            stdin.write_all(LOCK_SQL.as_bytes()).await?;
            stdin.flush().await?;
            let mut lines = BufReader::new(stdout).lines();
            let mut before = Vec::new();
            while let Some(line) = lines.next_line().await? {
                if line.trim() == LOCKED {
                    return Ok(Some(before));
                }
                before.push(line);
            }
            Ok::<_, std::io::Error>(None)
        };
        let answer = tokio::time::timeout(self.timeout, talk).await;
        match answer {
            Ok(Ok(Some(before))) => {
                *held = Some(Held { child, stdin });
                Ok(parse_binlog_status(&before))
            }
            Ok(Ok(None)) => {
                // The client ended without the marker: its error is on stderr.
                let out = child
                    .wait_with_output()
                    .await
                    .map_err(|e| HookError::Spawn {
                        what: self.what(),
                        why: e.to_string(),
                    })?;
                Err(HookError::Failed {
                    what: self.what(),
                    status: out.status.code(),
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                })
            }
            Ok(Err(e)) => {
                kill(Held { child, stdin }).await;
                Err(HookError::Spawn {
                    what: self.what(),
                    why: e.to_string(),
                })
            }
            Err(_) => {
                kill(Held { child, stdin }).await;
                Err(HookError::Timeout {
                    what: format!("{} (FLUSH TABLES WITH READ LOCK)", self.what()),
                    after: self.timeout,
                })
            }
        }
    }

    /// Releases the lock: `UNLOCK TABLES`, then the connection is closed.
    /// The lock is gone when this returns, whatever it returns.
    pub async fn unlock(&self) -> Result<(), HookError> {
        let Some(Held {
            mut child,
            mut stdin,
        }) = self.held.lock().await.take()
        else {
            return Ok(());
        };
        let polite = async {
            stdin.write_all(b"UNLOCK TABLES;\n").await?;
            stdin.flush().await?;
            // End of input: the client quits, closing the connection.
            drop(stdin);
            child.wait().await
        };
        match tokio::time::timeout(self.timeout, polite).await {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(HookError::Failed {
                what: format!("{} (UNLOCK TABLES)", self.what()),
                status: status.code(),
                stderr: "the client failed; its connection, and the lock, are gone".into(),
            }),
            Ok(Err(e)) => {
                kill_child(&mut child).await;
                Err(HookError::Spawn {
                    what: format!("{} (UNLOCK TABLES)", self.what()),
                    why: format!("{e}; the client was killed, its lock is gone"),
                })
            }
            Err(_) => {
                kill_child(&mut child).await;
                Err(HookError::Timeout {
                    what: format!("{} (UNLOCK TABLES)", self.what()),
                    after: self.timeout,
                })
            }
        }
    }
}

/// Ends the client: its connection closes and the server drops its lock.
async fn kill(mut h: Held) {
    kill_child(&mut h.child).await;
}

async fn kill_child(child: &mut Child) {
    if let Err(e) = child.kill().await {
        tracing::warn!(error = %e, "cannot kill the mysql client holding the lock");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in `mysql`: logs what it is asked into `log`, answers like
    /// the real client in batch mode, and logs its exit (the connection
    /// closing). `answer` is what it prints for FLUSH TABLES.
    fn fake_client(dir: &std::path::Path, marker: bool) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let log = dir.join("log");
        let path = dir.join("mysql");
        let locked = if marker {
            "echo fjord-locked"
        } else {
            "exec sleep 30"
        };
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\ntrap 'echo closed >>{log}' EXIT\nwhile read -r line; do\n  echo \"$line\" >>{log}\n  case \"$line\" in\n    FLUSH*) ;;\n    SHOW*) printf 'binlog.000003\\t1234\\t\\t\\n' ;;\n    SELECT*) {locked} ;;\n    UNLOCK*) ;;\n  esac\ndone\n",
                log = log.display()
            ),
        )
        .expect("write the fake client");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn log(dir: &std::path::Path) -> String {
        std::fs::read_to_string(dir.join("log")).unwrap_or_default()
    }

    #[tokio::test]
    async fn the_lock_is_held_on_one_connection_across_the_snapshot_then_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = MysqlLock::new(fake_client(dir.path(), true), None, Duration::from_secs(10));
        let pos = lock.lock().await.expect("locked");
        assert_eq!(pos.as_deref(), Some("binlog.000003:1234"));
        // Held: the connection is open, nothing unlocked it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let during = log(dir.path());
        assert!(
            during.starts_with("FLUSH TABLES WITH READ LOCK;"),
            "{during}"
        );
        assert!(
            !during.contains("UNLOCK") && !during.contains("closed"),
            "{during}"
        );
        lock.unlock().await.expect("unlocked");
        let after = log(dir.path());
        assert!(after.ends_with("UNLOCK TABLES;\nclosed\n"), "{after}");
        // Unlocking again is harmless.
        lock.unlock().await.expect("nothing held");
    }

    #[tokio::test]
    async fn a_lock_that_does_not_come_is_given_up_and_its_connection_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lock = MysqlLock::new(
            fake_client(dir.path(), false),
            None,
            Duration::from_millis(300),
        );
        let e = lock.lock().await.unwrap_err();
        assert!(matches!(e, HookError::Timeout { .. }), "{e}");
        assert!(lock.held.lock().await.is_none());
    }
}
