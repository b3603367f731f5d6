//! The one HTTP(S) GET the bootstrap needs, with hyper's `client::conn::http1` over a
//! `TcpStream` (or tokio-rustls for `https://`). Everything from the peer is untrusted: the
//! whole exchange has one deadline and the body is read up to a limit.

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

pub use crate::config::BootstrapEndpoint as Endpoint;

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
    fn path_segments_are_escaped_but_macs_stay_readable() {
        assert_eq!(path_segment("aa:bb:cc:dd:ee:ff"), "aa:bb:cc:dd:ee:ff");
        assert_eq!(path_segment("a b/c"), "a%20b%2Fc");
    }
}
