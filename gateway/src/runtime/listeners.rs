//! The daemon's network listeners, bound by the composition root (`main.rs`) before READY and
//! handed, bound, to the adapters: CoAP (udp), CoAPS (udp, only when `coap_dtls.cert` and
//! `key` are set) and the HTTP server (tcp). The adapters never bind, so their tests pass
//! sockets bound to port 0. The control socket is bound by `control::bind`, the serial ports
//! are opened by their tasks (a port may be absent at start and plugged in later).
//!
//! A gateway that cannot listen must not pretend to run (error). In the development profile,
//! where several daemons may share a machine (and the test suite runs several at once), a
//! taken port only turns that listener off, loudly.

use std::net::SocketAddr;

use tokio::net::{TcpListener, UdpSocket};
use tracing::{info, warn};

use crate::config::Config;

/// Receive buffer asked for each UDP listener: a burst from many sensors must not overflow
/// the kernel's default (~200 KiB) while the task is busy. Capped by `net.core.rmem_max`.
const RECV_BUFFER_BYTES: usize = 4 << 20;

/// A listener that cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind the {what} listener to {transport} {addr}: {source}")]
pub struct BindError {
    pub what: &'static str,
    pub transport: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// The bound listeners; `None`: disabled by the configuration, or (development profile) its
/// port was taken.
#[derive(Debug, Default)]
pub struct Listeners {
    pub coap: Option<UdpSocket>,
    pub coaps: Option<UdpSocket>,
    pub http: Option<TcpListener>,
}

/// Binds every configured listener. Call inside the runtime (the sockets register with it).
pub fn bind(config: &Config) -> Result<Listeners, BindError> {
    let coap = if config.coap.enabled {
        or_skip(config, bind_udp(config.coap.bind, "CoAP"))?
    } else {
        info!("coap listener disabled (coap.enabled = false)");
        None
    };
    let coaps = if config.coap_dtls.cert.is_some() && config.coap_dtls.key.is_some() {
        or_skip(config, bind_udp(config.coap_dtls.bind, "CoAPS"))?
    } else {
        None
    };
    let http = if config.http.enabled {
        or_skip(config, bind_tcp(config.http.bind, "HTTP"))?
    } else {
        info!("HTTP API disabled (http.enabled = false)");
        None
    };
    Ok(Listeners { coap, coaps, http })
}

fn or_skip<T>(config: &Config, bound: Result<T, BindError>) -> Result<Option<T>, BindError> {
    match bound {
        Ok(s) => Ok(Some(s)),
        Err(e) if config.profile.is_dev() => {
            warn!("{e}: the {} listener is off (development profile)", e.what);
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// A UDP socket on `addr` with a large receive buffer; `[::]` serves IPv4 too.
pub fn bind_udp(addr: SocketAddr, what: &'static str) -> Result<UdpSocket, BindError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let fail = |source| BindError {
        what,
        transport: "udp",
        addr,
        source,
    };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    if addr.is_ipv6() {
        // `[::]` serves IPv4 too, as a plain std bind would with the Linux default.
        socket.set_only_v6(false).map_err(fail)?;
    }
    if let Err(e) = socket.set_recv_buffer_size(RECV_BUFFER_BYTES) {
        warn!("{what}: cannot enlarge the receive buffer: {e}");
    }
    socket.bind(&addr.into()).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    UdpSocket::from_std(socket.into()).map_err(fail)
}

/// A TCP listener on `addr`.
pub fn bind_tcp(addr: SocketAddr, what: &'static str) -> Result<TcpListener, BindError> {
    let fail = |source| BindError {
        what,
        transport: "tcp",
        addr,
        source,
    };
    let listener = std::net::TcpListener::bind(addr).map_err(fail)?;
    listener.set_nonblocking(true).map_err(fail)?;
    TcpListener::from_std(listener).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn port_zero_binds_an_ephemeral_port_and_a_taken_port_is_an_error_naming_it() {
        let udp = bind_udp("127.0.0.1:0".parse().unwrap(), "CoAP").unwrap();
        let taken = udp.local_addr().unwrap();
        assert_ne!(taken.port(), 0);
        let err = bind_udp(taken, "CoAP").unwrap_err();
        assert_eq!(err.source.kind(), std::io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains(&taken.to_string()), "{err}");

        let tcp = bind_tcp("127.0.0.1:0".parse().unwrap(), "HTTP").unwrap();
        let taken = tcp.local_addr().unwrap();
        let err = bind_tcp(taken, "HTTP").unwrap_err();
        assert_eq!(err.source.kind(), std::io::ErrorKind::AddrInUse);
        assert_eq!(err.transport, "tcp");
    }
}
