//! The UDP socket under each QUIC endpoint, bound with kernel buffers large
//! enough that a burst the other side has not read yet is queued, not dropped.
//!
//! Why: Linux's default socket buffer is 208 KiB. When the receiving end is
//! slower than the path (a fast LAN, a busy DR node), the kernel drops what
//! does not fit, and BBR, fjord's default congestion controller, does not
//! slow down for loss: on loopback 40–60 % of the bytes were sent twice until
//! the receive buffer was 4 MiB (README "Socket buffers").

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

/// The send and receive buffer fjord asks the kernel for, per socket.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Binds `addr` with [`SOCKET_BUFFER`]-sized kernel buffers (as far as
/// `net.core.rmem_max` / `wmem_max` allow: a smaller grant is logged as a
/// warning naming the sysctl) and wraps it in a quinn endpoint on the tokio
/// runtime; `server` makes it accept connections.
pub fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let socket = bind(addr)?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// Binds `addr` and asks for [`SOCKET_BUFFER`]-sized buffers, best effort.
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    let sock = socket2::SockRef::from(&socket);
    // A refusal leaves the default buffer: slower, not broken; the check
    // below reports it.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    let granted = (
        sock.recv_buffer_size().unwrap_or(0),
        sock.send_buffer_size().unwrap_or(0),
    );
    if let Some(advice) = short_buffers(granted) {
        tracing::warn!(local = %addr, recv_buffer = granted.0, send_buffer = granted.1, "{advice}");
    }
    Ok(socket)
}

/// What to tell the operator when the kernel granted less than asked, from
/// the sizes `getsockopt` reports (Linux reports twice the usable size).
fn short_buffers((recv, send): (usize, usize)) -> Option<String> {
    let short = |reported: usize| reported < SOCKET_BUFFER;
    if !short(recv) && !short(send) {
        return None;
    }
    Some(format!(
        "the kernel granted UDP buffers of {} KiB (receive) and {} KiB (send) where fjord asks for {} KiB: \
         a fast sender can overrun them and have its packets dropped; set \
         net.core.rmem_max={SOCKET_BUFFER} and net.core.wmem_max={SOCKET_BUFFER} \
         (the Debian package installs /usr/lib/sysctl.d/60-fjord.conf; then `sysctl --system`)",
        recv / 2 / 1024,
        send / 2 / 1024,
        SOCKET_BUFFER / 1024
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_grant_names_the_sysctl_and_a_full_one_says_nothing() {
        assert_eq!(short_buffers((2 * SOCKET_BUFFER, 2 * SOCKET_BUFFER)), None);
        let advice = short_buffers((425_984, 2 * SOCKET_BUFFER)).unwrap();
        assert!(advice.contains("net.core.rmem_max=4194304"), "{advice}");
        assert!(advice.contains("208 KiB (receive)"), "{advice}");
    }

    #[test]
    fn bind_gives_a_socket_with_the_buffers_the_kernel_allows() {
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let sock = socket2::SockRef::from(&socket);
        // at least the default, and never more than asked (twice, as Linux reports)
        let recv = sock.recv_buffer_size().unwrap();
        assert!((200 * 1024..=2 * SOCKET_BUFFER).contains(&recv), "{recv}");
    }
}
