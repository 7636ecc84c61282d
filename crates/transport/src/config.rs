//! Link tuning: pure values and arithmetic, turned into quinn's
//! configuration at the edge. (Backoff and the rate limit are pure pacing,
//! in `fjord_proto::pace`.)

use std::sync::Arc;
use std::time::Duration;

/// Largest UDP payload that fits a WireGuard tunnel of MTU 1420 over IPv6
/// (1420 − 40 IPv6 − 8 UDP); IPv4 leaves 20 bytes to spare.
pub const WIREGUARD_UDP_PAYLOAD: u16 = 1372;

/// QUIC tuning for one link.
#[derive(Clone, Debug)]
pub struct LinkConfig {
    /// Link bandwidth the windows are sized for, in bits per second.
    pub bandwidth_bps: u64,
    /// Round-trip time the windows are sized for.
    pub rtt: Duration,
    /// A connection with no packets for this long is declared lost
    /// (then the session's grace period decides what happens).
    pub idle_timeout: Duration,
    /// Keep-alive interval; must be below `idle_timeout`.
    pub keep_alive: Duration,
    /// Largest UDP payload sent (initial MTU and MTU discovery cap).
    pub max_udp_payload: u16,
    /// Sending rate limit in bytes per second (data frames only).
    pub rate_limit: Option<u64>,
    /// The congestion controller of the sending side.
    pub congestion: Congestion,
}

/// Which congestion controller paces what this end sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Congestion {
    /// CUBIC, as Linux TCP: backs off on every loss. Fair to other
    /// traffic on a shared link.
    Cubic,
    /// BBR (v1, quinn's implementation), the default: paces at the
    /// measured bottleneck rate and does not take random loss for
    /// congestion, so a lossy long link (a WAN with 0.1 % loss) stays
    /// full. Chosen by the lab's WAN matrix (README "The WAN matrix"):
    /// at 50 ms and 1 % loss CUBIC was 1.4× `zstd | ssh`, BBR 5.6×.
    #[default]
    Bbr,
}

impl std::str::FromStr for Congestion {
    type Err = String;
    fn from_str(s: &str) -> Result<Congestion, String> {
        match s.to_ascii_lowercase().as_str() {
            "cubic" => Ok(Congestion::Cubic),
            "bbr" => Ok(Congestion::Bbr),
            other => Err(format!(
                "unknown congestion controller {other:?}: use cubic or bbr"
            )),
        }
    }
}

impl Default for LinkConfig {
    /// Good for 1 Gbit/s at 50 ms through WireGuard.
    fn default() -> Self {
        LinkConfig {
            bandwidth_bps: 1_000_000_000,
            rtt: Duration::from_millis(50),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            max_udp_payload: WIREGUARD_UDP_PAYLOAD,
            rate_limit: None,
            congestion: Congestion::default(),
        }
    }
}

impl LinkConfig {
    /// This configuration with another idle timeout, and keep-alives at a
    /// quarter of it (so a quiet but healthy link never looks dead).
    pub fn with_idle_timeout(self, idle_timeout: Duration) -> LinkConfig {
        LinkConfig {
            idle_timeout,
            keep_alive: (idle_timeout / 4).max(Duration::from_millis(100)),
            ..self
        }
    }

    /// The bandwidth-delay product in bytes.
    pub fn bdp(&self) -> u64 {
        (self.bandwidth_bps as u128 * self.rtt.as_micros() / 8 / 1_000_000) as u64
    }

    /// The stream receive window: twice the BDP, at least 4 MiB, so one
    /// stream fills the link with room for loss recovery.
    pub fn stream_window(&self) -> u64 {
        (2 * self.bdp()).clamp(4 << 20, 1 << 30)
    }

    /// Checks the values are usable.
    pub fn validate(&self) -> Result<(), String> {
        if self.keep_alive >= self.idle_timeout {
            return Err(format!(
                "keep-alive interval {:?} must be below the idle timeout {:?}",
                self.keep_alive, self.idle_timeout
            ));
        }
        if self.max_udp_payload < 1200 {
            return Err(format!(
                "max UDP payload {} is below QUIC's minimum of 1200",
                self.max_udp_payload
            ));
        }
        if self.rate_limit == Some(0) {
            return Err("a rate limit of 0 would never send anything".into());
        }
        Ok(())
    }

    /// quinn's transport configuration for these values.
    pub fn transport(&self) -> Result<quinn::TransportConfig, String> {
        self.validate()?;
        let mut t = quinn::TransportConfig::default();
        let window = self.stream_window();
        let varint = |v: u64| quinn::VarInt::from_u64(v).map_err(|e| e.to_string());
        t.stream_receive_window(varint(window)?);
        t.receive_window(varint(2 * window)?);
        t.send_window(2 * window);
        t.max_concurrent_uni_streams(0u32.into());
        t.max_concurrent_bidi_streams(4u32.into());
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout).map_err(|e| e.to_string())?;
        t.max_idle_timeout(Some(idle));
        t.keep_alive_interval(Some(self.keep_alive));
        t.initial_mtu(self.max_udp_payload);
        t.min_mtu(1200);
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(self.max_udp_payload);
        t.mtu_discovery_config(Some(mtu));
        match self.congestion {
            Congestion::Cubic => {
                t.congestion_controller_factory(
                    Arc::new(quinn::congestion::CubicConfig::default()),
                );
            }
            Congestion::Bbr => {
                t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
            }
        }
        Ok(t)
    }

    /// The transport configuration, shared.
    pub fn transport_arc(&self) -> Result<Arc<quinn::TransportConfig>, String> {
        self.transport().map(Arc::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_a_gigabit_at_50ms_through_wireguard() {
        let c = LinkConfig::default();
        assert_eq!(c.bdp(), 6_250_000);
        assert!(c.stream_window() >= c.bdp());
        assert!(c.keep_alive < c.idle_timeout);
        assert!(c.max_udp_payload + 40 + 8 <= 1420);
        c.transport().unwrap();
        let bad = LinkConfig {
            keep_alive: Duration::from_secs(60),
            ..LinkConfig::default()
        };
        assert!(bad.transport().is_err());
    }
}
