//! `[server]` and `[tls]`: the listeners, their connection limits and
//! their optional TLS.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Game WebSocket listener. Port 0 picks a free port.
    pub ws_addr: SocketAddr,
    /// HTTP listener: demo page, health, metrics, admin.
    pub http_addr: SocketAddr,
    /// actix Arbiters (threads) hosting sessions; 0 = one per core.
    pub workers: usize,
    /// Open game connections at most; more are closed with 1013.
    pub max_connections: usize,
    /// WebSocket upgrade plus `hello` must complete within this.
    pub handshake_timeout_ms: u64,
    /// After a close the server starts, how long it keeps reading (and
    /// discarding) for the client's close before it drops the TCP
    /// connection (PROTOCOL.md lifecycle rule 7).
    pub close_linger_ms: u64,
    /// Refusals (error 5002, close 1013, linger) running at once; past
    /// this a refused socket is dropped unanswered (and counted).
    pub max_refusing: usize,
    /// A session that receives nothing for this long is closed (4004).
    pub idle_timeout_ms: u64,
    /// The server sends a WebSocket ping this often.
    pub heartbeat_interval_ms: u64,
    /// Largest client frame (and message) read; larger closes with 1009.
    pub max_frame_bytes: usize,
    /// tungstenite read buffer per connection, allocated up front: the main
    /// cost of an idle connection.
    pub read_buffer_bytes: usize,
    /// tungstenite write buffer target per connection.
    pub write_buffer_bytes: usize,
    /// Bytes queued for one client at most. Over it, state updates are
    /// dropped (and a full update follows); reliable messages close the
    /// socket with 4005.
    pub outbound_budget_bytes: usize,
    /// One socket write taking longer than this ends the session.
    pub write_timeout_ms: u64,
    /// On SIGTERM/SIGINT, sessions get this long to close before exit.
    pub shutdown_grace_ms: u64,
    /// Open game connections from one IP address (an IPv6 /64) at most;
    /// more are answered with error 5002 and close 1013. 0: no per-IP cap.
    pub per_ip_max_connections: usize,
    /// New game connections (TCP accepts, refused ones included) one IP
    /// address may open per second, on average; a token bucket of
    /// `per_ip_handshake_burst`. Over it: error 5002 and close 1013. 0: no
    /// per-IP rate. Fractions are allowed (0.5 = one every two seconds).
    pub per_ip_handshakes_per_sec: f64,
    pub per_ip_handshake_burst: u32,
    /// Addresses or networks (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`) the
    /// per-IP limits do not apply to. Loopback by default: a reverse proxy
    /// or the loadbot on the same host speaks for many clients from one
    /// address. Empty it when clients connect over loopback directly and
    /// should be capped.
    pub per_ip_exempt: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            ws_addr: SocketAddr::from(([127, 0, 0, 1], 7350)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7380)),
            workers: 0,
            max_connections: 20_000,
            handshake_timeout_ms: 5_000,
            close_linger_ms: 2_000,
            max_refusing: 64,
            idle_timeout_ms: 30_000,
            heartbeat_interval_ms: 10_000,
            max_frame_bytes: 4 * 1024,
            read_buffer_bytes: 512,
            write_buffer_bytes: 16 * 1024,
            outbound_budget_bytes: 256 * 1024,
            write_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            per_ip_max_connections: 64,
            per_ip_handshakes_per_sec: 10.0,
            per_ip_handshake_burst: 20,
            per_ip_exempt: vec!["127.0.0.0/8".into(), "::1/128".into()],
        }
    }
}

/// An address or a network in CIDR notation (`server.per_ip_exempt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// `ADDR` or `ADDR/PREFIX`; the address's bits past the prefix are
    /// ignored.
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| "not an IP address or network (ADDR or ADDR/PREFIX)".to_string())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("the prefix must be 0 to {max}"))?,
        };
        Ok(IpNet { addr, prefix })
    }

    /// Whether `ip` lies in the network (an IPv4-mapped IPv6 address as
    /// its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        /// The top `prefix` bits of a `width`-bit address.
        fn top(bits: u128, width: u32, prefix: u8) -> u128 {
            let keep = u32::from(prefix).min(width);
            if keep == 0 {
                0
            } else {
                bits >> (width - keep)
            }
        }
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                top(u32::from(net).into(), 32, self.prefix)
                    == top(u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                top(net.into(), 128, self.prefix) == top(ip.into(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// Optional TLS (rustls) on the listeners, for deployments with no
/// terminating proxy in front: `wss://` on the game listener, `https://` on
/// the HTTP one. PEM files; every path empty (the default) means plain TCP.
/// `cert_path`/`key_path` serve both listeners; the `ws_`/`http_` pairs
/// override them for one listener.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM, leaf first) for both listeners.
    pub cert_path: String,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) for `cert_path`.
    pub key_path: String,
    /// Game listener only; overrides `cert_path`/`key_path` there.
    pub ws_cert_path: String,
    pub ws_key_path: String,
    /// HTTP listener only; overrides `cert_path`/`key_path` there.
    pub http_cert_path: String,
    pub http_key_path: String,
}

/// One listener's certificate and key paths, with their field names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_field: &'static str,
    pub cert_path: String,
    pub key_field: &'static str,
    pub key_path: String,
}

impl TlsConfig {
    /// The files for the game listener, `None` for plain TCP.
    pub fn ws_files(&self) -> Option<TlsFiles> {
        self.files(
            "tls.ws_cert_path",
            "tls.ws_key_path",
            &self.ws_cert_path,
            &self.ws_key_path,
        )
    }

    /// The files for the HTTP listener, `None` for plain TCP.
    pub fn http_files(&self) -> Option<TlsFiles> {
        self.files(
            "tls.http_cert_path",
            "tls.http_key_path",
            &self.http_cert_path,
            &self.http_key_path,
        )
    }

    fn files(
        &self,
        cert_field: &'static str,
        key_field: &'static str,
        cert: &str,
        key: &str,
    ) -> Option<TlsFiles> {
        if !cert.is_empty() || !key.is_empty() {
            return Some(TlsFiles {
                cert_field,
                cert_path: cert.to_string(),
                key_field,
                key_path: key.to_string(),
            });
        }
        (!self.cert_path.is_empty() || !self.key_path.is_empty()).then(|| TlsFiles {
            cert_field: "tls.cert_path",
            cert_path: self.cert_path.clone(),
            key_field: "tls.key_path",
            key_path: self.key_path.clone(),
        })
    }

    pub(super) fn validate(&self, errors: &mut Vec<String>) {
        let pairs = [
            (
                "tls.cert_path",
                &self.cert_path,
                "tls.key_path",
                &self.key_path,
            ),
            (
                "tls.ws_cert_path",
                &self.ws_cert_path,
                "tls.ws_key_path",
                &self.ws_key_path,
            ),
            (
                "tls.http_cert_path",
                &self.http_cert_path,
                "tls.http_key_path",
                &self.http_key_path,
            ),
        ];
        for (cert_field, cert, key_field, key) in pairs {
            if cert.is_empty() != key.is_empty() {
                let (set, unset) = if cert.is_empty() {
                    (key_field, cert_field)
                } else {
                    (cert_field, key_field)
                };
                errors.push(format!("{unset} must be set when {set} is"));
            }
        }
    }
}
