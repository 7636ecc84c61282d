//! `zfs send` and `zfs recv` as streams: [`SendProcess`] is a
//! [`std::io::Read`], [`RecvProcess`] a [`std::io::Write`].
//!
//! These use `std::process`, not tokio, because the bytes are moved by
//! blocking code (the send-stream codec and the transport's blocking
//! adapters read and write on their own threads). Each child's stderr is
//! drained on a thread of its own: a `zfs` that writes much to stderr
//! while nobody reads it would otherwise block, and with it the stream.

use crate::command::{recv_argv, send_argv, RecvSpec, SendSpec, Zfs};
use crate::error::ZfsError;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::thread::JoinHandle;

/// The most stderr kept per process; `zfs` writes a line or two, so this
/// only bounds memory if something goes very wrong.
const MAX_STDERR: usize = 64 * 1024;

/// Reads a child's stderr to the end on a thread, keeping the first
/// [`MAX_STDERR`] bytes.
fn drain_stderr(child: &mut Child) -> Option<JoinHandle<String>> {
    let mut stderr = child.stderr.take()?;
    Some(std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stderr.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = MAX_STDERR.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    }))
}

fn join_stderr(handle: Option<JoinHandle<String>>) -> String {
    handle.and_then(|h| h.join().ok()).unwrap_or_default()
}

/// A running `zfs send`. Read the stream from it, then call
/// [`finish`](SendProcess::finish).
#[derive(Debug)]
pub struct SendProcess {
    child: Child,
    stdout: Option<ChildStdout>,
    stderr: Option<JoinHandle<String>>,
    argv: String,
}

impl SendProcess {
    /// The command line, for messages.
    pub fn argv(&self) -> &str {
        &self.argv
    }

    /// The process id (for logs).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Closes the stream and waits for `zfs send` to exit. Fails with
    /// [`ZfsError::Command`] (carrying its stderr) unless it exited 0. Call it
    /// after reading to the end: closing the pipe early makes `zfs send`
    /// fail with a broken pipe, which is reported as such.
    pub fn finish(mut self) -> Result<(), ZfsError> {
        drop(self.stdout.take());
        let status = self.child.wait().map_err(|e| ZfsError::Io {
            argv: self.argv.clone(),
            source: e,
        })?;
        let stderr = join_stderr(self.stderr.take());
        if status.success() {
            Ok(())
        } else {
            Err(ZfsError::Command {
                argv: self.argv.clone(),
                status: status.code(),
                stderr,
            })
        }
    }

    /// Kills `zfs send` and waits for it to exit.
    pub fn kill(mut self) -> Result<(), ZfsError> {
        drop(self.stdout.take());
        // An error here means it had already exited; wait reaps it anyway.
        let _ = self.child.kill();
        self.child.wait().map_err(|e| ZfsError::Io {
            argv: self.argv.clone(),
            source: e,
        })?;
        let _ = join_stderr(self.stderr.take());
        Ok(())
    }
}

impl Read for SendProcess {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.stdout.as_mut() {
            Some(out) => out.read(buf),
            None => Ok(0),
        }
    }
}

/// How a `zfs recv` ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecvResult {
    /// The command line, for messages.
    pub argv: String,
    /// Its exit code; `128 + N` when killed by signal N (the shell's
    /// convention), `-1` if neither is known.
    pub status: i32,
    /// What it wrote to stderr.
    pub stderr: String,
}

impl RecvResult {
    /// Whether `zfs recv` exited 0.
    pub fn success(&self) -> bool {
        self.status == 0
    }

    /// `Ok` on success, else the [`ZfsError::Command`] for it.
    pub fn into_result(self) -> Result<(), ZfsError> {
        if self.success() {
            Ok(())
        } else {
            Err(ZfsError::Command {
                argv: self.argv,
                status: Some(self.status),
                stderr: self.stderr,
            })
        }
    }
}

/// A running `zfs recv`. Write the stream into it, then call
/// [`finish`](RecvProcess::finish).
#[derive(Debug)]
pub struct RecvProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Option<JoinHandle<String>>,
    argv: String,
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return 128 + signal;
        }
    }
    status.code().unwrap_or(-1)
}

impl RecvProcess {
    /// The command line, for messages.
    pub fn argv(&self) -> &str {
        &self.argv
    }

    /// The process id (for logs).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    fn wait(mut self) -> Result<RecvResult, ZfsError> {
        let status = self.child.wait().map_err(|e| ZfsError::Io {
            argv: self.argv.clone(),
            source: e,
        })?;
        Ok(RecvResult {
            status: exit_code(status),
            stderr: join_stderr(self.stderr.take()),
            argv: std::mem::take(&mut self.argv),
        })
    }

    /// Closes its stdin (end of stream) and waits for `zfs recv` to exit.
    /// Only waiting itself failing is an `Err`; how `zfs recv` ended is in
    /// the [`RecvResult`].
    pub fn finish(mut self) -> Result<RecvResult, ZfsError> {
        drop(self.stdin.take());
        self.wait()
    }

    /// Kills `zfs recv` and waits for it. With `-s`, ZFS keeps what was
    /// received so far (only the bytes written before the kill) as a
    /// resumable state and sets `receive_resume_token` on the target.
    pub fn kill(mut self) -> Result<RecvResult, ZfsError> {
        drop(self.stdin.take());
        // An error here means it had already exited; wait reaps it anyway.
        let _ = self.child.kill();
        self.wait()
    }
}

impl Write for RecvProcess {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.stdin.as_mut() {
            Some(stdin) => stdin.write(buf),
            None => Err(std::io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.stdin.as_mut() {
            Some(stdin) => stdin.flush(),
            None => Ok(()),
        }
    }
}

impl Zfs {
    fn spawn(&self, args: &[String], stdin: Stdio, stdout: Stdio) -> Result<Child, ZfsError> {
        // one event per zfs invocation (the streaming ones run on; the
        // short ones log their elapsed time in `run`)
        tracing::debug!(argv = %self.display(args), "zfs spawn");
        Command::new(self.binary())
            .args(args)
            .envs(Self::locale_env())
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(args, e))
    }

    /// Starts `zfs send` for `spec` (validated first); read the stream from
    /// the returned process.
    pub fn spawn_send(&self, spec: &SendSpec) -> Result<SendProcess, ZfsError> {
        spec.validate()?;
        let args = send_argv(spec);
        let mut child = self.spawn(&args, Stdio::null(), Stdio::piped())?;
        let stderr = drain_stderr(&mut child);
        Ok(SendProcess {
            stdout: child.stdout.take(),
            child,
            stderr,
            argv: self.display(&args),
        })
    }

    /// Starts `zfs recv` for `spec` (validated first); write the stream
    /// into the returned process.
    pub fn spawn_recv(&self, spec: &RecvSpec) -> Result<RecvProcess, ZfsError> {
        spec.validate()?;
        let args = recv_argv(spec);
        let mut child = self.spawn(&args, Stdio::piped(), Stdio::null())?;
        let stderr = drain_stderr(&mut child);
        Ok(RecvProcess {
            stdin: child.stdin.take(),
            child,
            stderr,
            argv: self.display(&args),
        })
    }
}

#[cfg(test)]
mod tests {
    //! The pipe plumbing, exercised with coreutils standing in for the
    //! binary. None of this claims anything about ZFS.
    use super::*;
    use crate::command::SendKind;

    fn full(snap: &str) -> SendSpec {
        SendSpec {
            kind: SendKind::Full { snap: snap.into() },
            raw: false,
            compressed: true,
            large_blocks: false,
            embedded: false,
            properties: false,
        }
    }

    #[test]
    fn send_process_reads_stdout_then_finishes() {
        // `echo` prints its argv: the stream is that line.
        let zfs = Zfs::with_binary("echo");
        let mut send = zfs.spawn_send(&full("tank/a@s1")).unwrap();
        let mut out = String::new();
        send.read_to_string(&mut out).unwrap();
        assert_eq!(out, "send -c tank/a@s1\n");
        send.finish().unwrap();
    }

    #[test]
    fn send_process_failure_carries_stderr() {
        // `ls` of a missing path exits non-zero with a message on stderr.
        let zfs = Zfs::with_binary("ls");
        let mut send = zfs.spawn_send(&full("tank/a@s1")).unwrap();
        let mut out = Vec::new();
        send.read_to_end(&mut out).unwrap();
        let err = send.finish().unwrap_err();
        match &err {
            ZfsError::Command {
                argv,
                status,
                stderr,
            } => {
                assert_eq!(argv, "ls send -c tank/a@s1");
                assert!(status.is_some_and(|s| s != 0));
                assert!(stderr.contains("tank/a@s1"), "{stderr}");
            }
            other => panic!("expected a Command error, got {other}"),
        }
    }

    #[test]
    fn send_refuses_bad_spec_before_spawning() {
        let zfs = Zfs::with_binary("/nonexistent/fjord-test/zfs");
        assert!(matches!(
            zfs.spawn_send(&full("tank/a")),
            Err(ZfsError::Name(_))
        ));
        assert!(matches!(
            zfs.spawn_send(&full("tank/a@s")),
            Err(ZfsError::NotFound { .. })
        ));
    }

    #[test]
    fn recv_process_finish_reports_exit_and_stderr() {
        // `cat recv b/x` fails on the missing files after stdin closes.
        let zfs = Zfs::with_binary("cat");
        let mut recv = zfs
            .spawn_recv(&RecvSpec {
                target: "b/x".into(),
                ..Default::default()
            })
            .unwrap();
        recv.write_all(b"ignored").unwrap_or(());
        let result = recv.finish().unwrap();
        assert_eq!(result.argv, "cat recv b/x");
        assert!(!result.success());
        assert!(result.stderr.contains("recv"), "{}", result.stderr);
        assert!(matches!(
            result.into_result(),
            Err(ZfsError::Command { .. })
        ));
    }

    #[test]
    fn recv_process_kill_reports_the_signal() {
        // `yes` never exits on its own and ignores stdin.
        let zfs = Zfs::with_binary("yes");
        let mut recv = zfs
            .spawn_recv(&RecvSpec {
                target: "b/x".into(),
                ..Default::default()
            })
            .unwrap();
        recv.write_all(b"partial").unwrap();
        let result = recv.kill().unwrap();
        assert_eq!(result.status, 128 + 9, "SIGKILL");
        assert!(!result.success());
    }

    #[test]
    fn send_closed_early_fails_and_kill_succeeds() {
        // `yes` writes forever: finishing before the end breaks its pipe.
        // (No flags: `yes` would refuse `-c` as an option.)
        let zfs = Zfs::with_binary("yes");
        let plain = SendSpec {
            compressed: false,
            ..full("tank/a@s1")
        };
        let mut send = zfs.spawn_send(&plain).unwrap();
        let mut first = [0u8; 5];
        send.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"send ");
        assert!(matches!(
            send.finish(),
            Err(ZfsError::Command { status: None, .. })
        ));
        let mut send = zfs.spawn_send(&plain).unwrap();
        send.read_exact(&mut first).unwrap();
        send.kill().unwrap();
    }
}
