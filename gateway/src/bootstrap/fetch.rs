//! The one HTTP(S) GET the bootstrap needs, with hyper's `client::conn::http1` over a
//! `TcpStream` (or tokio-rustls for `https://`). Everything from the peer is untrusted: the
//! whole exchange has one deadline and the body is read up to a limit.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::header::{AUTHORIZATION, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The bootstrap service's base URL, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// Host name or IP (without brackets).
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing `/` (often empty).
    pub base: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("`{0}` must be http://host[:port][/path] or https://host[:port][/path]")]
    Scheme(String),
    #[error("`{0}` has no host")]
    NoHost(String),
    #[error("`{0}` has an invalid port")]
    Port(String),
    #[error("`{0}` must not carry credentials, a query or a fragment")]
    Extra(String),
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(UrlError::Scheme(url.to_owned()));
        };
        if rest.contains(['?', '#', '@']) || rest.chars().any(|c| c.is_whitespace()) {
            return Err(UrlError::Extra(url.to_owned()));
        }
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| UrlError::NoHost(url.to_owned()))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(UrlError::NoHost(url.to_owned()));
        }
        let port = match port {
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| UrlError::Port(url.to_owned()))?,
        };
        Ok(Self {
            tls,
            host: host.to_owned(),
            port,
            base: path.trim_end_matches('/').to_owned(),
        })
    }

    /// A loopback IP or `localhost`: plain HTTP there does not cross a network.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match (self.tls, self.port) {
            (true, 443) | (false, 80) => host,
            (_, port) => format!("{host}:{port}"),
        }
    }

    /// `http[s]://host:port` for logs and the status (never with a key in it).
    pub fn origin(&self) -> String {
        format!(
            "{}://{}",
            if self.tls { "https" } else { "http" },
            self.host_header()
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS handshake with {host} failed: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("cannot build the request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("the answer is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("reading the answer failed: {0}")]
    Body(String),
}

/// `GET <base><path>` with `Authorization: <authorization>`: the status and the body (at most
/// `max_body` bytes), all within `timeout`.
pub async fn get(
    endpoint: &Endpoint,
    tls: Option<Arc<ClientConfig>>,
    path: &str,
    authorization: &str,
    timeout: Duration,
    max_body: usize,
) -> Result<(u16, Vec<u8>), FetchError> {
    let exchange = async {
        let addr = format!("{}:{}", endpoint.host, endpoint.port);
        let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|source| FetchError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let request = hyper::Request::get(format!("{}{path}", endpoint.base))
            .header(HOST, endpoint.host_header())
            .header(AUTHORIZATION, authorization)
            .header(USER_AGENT, concat!("edgegw/", env!("CARGO_PKG_VERSION")))
            .body(Empty::<Bytes>::new())?;
        match tls {
            Some(config) => {
                let name = ServerName::try_from(endpoint.host.clone())
                    .map_err(|_| FetchError::ServerName(endpoint.host.clone()))?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|source| FetchError::Tls {
                        host: endpoint.host.clone(),
                        source,
                    })?;
                exchange(stream, request, max_body).await
            }
            None => exchange(tcp, request, max_body).await,
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

async fn exchange<S>(
    stream: S,
    request: hyper::Request<Empty<Bytes>>,
    max_body: usize,
) -> Result<(u16, Vec<u8>), FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let send = async move {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), max_body)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    FetchError::TooLarge { limit: max_body }
                } else {
                    FetchError::Body(e.to_string())
                }
            })?
            .to_bytes();
        Ok::<_, FetchError>((status, body.to_vec()))
    };
    // The connection future drives the socket; it may finish (the peer closed) before the
    // body has been taken out of its buffer, so the answer is still awaited after it ends.
    let mut send = std::pin::pin!(send);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = &mut send => return result,
        ended = &mut conn => ended?,
    }
    send.await
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters and `:`
/// `@`, so a MAC address stays readable).
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_host_port_and_base() {
        let e = Endpoint::parse("https://bs.example.com:9013/api/").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.base.as_str()),
            (true, "bs.example.com", 9013, "/api")
        );
        let e = Endpoint::parse("http://[::1]").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 80));
        assert!(e.is_loopback());
        assert_eq!(e.origin(), "http://[::1]");
        assert!(Endpoint::parse("mqtts://x").is_err());
        assert!(Endpoint::parse("http://").is_err());
        assert!(Endpoint::parse("http://x:0").is_err());
        assert!(Endpoint::parse("http://u:p@x").is_err());
        assert!(Endpoint::parse("http://x/?k=1").is_err());
    }

    #[test]
    fn path_segments_are_escaped_but_macs_stay_readable() {
        assert_eq!(path_segment("aa:bb:cc:dd:ee:ff"), "aa:bb:cc:dd:ee:ff");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    }
}
