//! Notifications to systemd for a `Type=notify` service (`fjord-recv
//! serve` in `fjord-recv.service`): `READY=1` once listening, `WATCHDOG=1`
//! at half the unit's `WatchdogSec=`, `STOPPING=1` on shutdown. Outside
//! systemd (no `NOTIFY_SOCKET`) every call does nothing.
//!
//! A failed notification is logged, never fatal: the service works the
//! same; systemd alone decides what a missing `READY=1` means.

use sd_notify::NotifyState;
use std::time::Duration;

/// Tells systemd the service is ready (listening).
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd a reload started (`Type=notify-reload` and `ExecReload=`
/// units alike): `RELOADING=1` with the monotonic time systemd asks for.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the monotonic clock for RELOADING=1");
            send(&[NotifyState::Reloading]);
        }
    }
}

/// Tells systemd a reload is over (`READY=1`), whatever its outcome.
pub fn ready_again() {
    send(&[NotifyState::Ready]);
}

/// Tells systemd the service is shutting down.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// One watchdog keep-alive.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// How often to send [`watchdog`]: half the unit's `WatchdogSec=` (from
/// `WATCHDOG_USEC`, when it names this process), or `None` when systemd
/// asked for no watchdog.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().and_then(half)
}

/// Half of `timeout`, as systemd advises; `None` for a zero timeout.
fn half(timeout: Duration) -> Option<Duration> {
    (!timeout.is_zero()).then(|| timeout / 2)
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keep_alive_comes_at_half_the_timeout() {
        assert_eq!(half(Duration::from_secs(60)), Some(Duration::from_secs(30)));
        assert_eq!(half(Duration::ZERO), None);
    }

    /// A datagram socket standing in for systemd's: what `ready` sends.
    #[test]
    fn ready_sends_ready_and_status_to_notify_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let sock = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        // The only test in the crate that touches NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &path);
        ready("listening on 127.0.0.1:7450");
        stopping();
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).expect("ready datagram");
        assert_eq!(
            std::str::from_utf8(&buf[..n]).expect("utf-8"),
            "READY=1\nSTATUS=listening on 127.0.0.1:7450\n"
        );
        let n = sock.recv(&mut buf).expect("stopping datagram");
        assert_eq!(&buf[..n], b"STOPPING=1\n");
    }
}
