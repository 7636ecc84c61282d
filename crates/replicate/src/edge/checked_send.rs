//! `zfs send` as a transfer's source: a reader that turns a failed
//! `zfs send` into a read error, so a stream cut short by ZFS is never
//! reported as complete.

use fjord_zfs::SendProcess;
use std::io::Read;

/// Reads `zfs send`'s standard output; at its end, waits for the process
/// and fails the read if `zfs send` failed (with its stderr).
pub struct CheckedSend {
    process: Option<SendProcess>,
}

impl CheckedSend {
    /// Wraps a running `zfs send`.
    pub fn new(process: SendProcess) -> CheckedSend {
        CheckedSend {
            process: Some(process),
        }
    }
}

impl Read for CheckedSend {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(p) = self.process.as_mut() else {
            return Ok(0);
        };
        let n = p.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(p) = self.process.take() {
                p.finish().map_err(std::io::Error::other)?;
            }
        }
        Ok(n)
    }
}

impl Drop for CheckedSend {
    fn drop(&mut self) {
        // The transfer stopped early: do not leave `zfs send` blocked on a
        // full pipe.
        if let Some(p) = self.process.take() {
            let _ = p.kill();
        }
    }
}
