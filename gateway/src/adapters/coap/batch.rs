//! Many datagrams per system call: `sendmmsg(2)` for the answers one wake-up of the CoAP
//! shell produced (issue 17: one `sendto` per answer was the largest kernel item of the
//! hot-path profile after scheduling).

use std::io;
use std::os::fd::AsRawFd;

use socket2::SockAddr;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

use super::proto::Transmit;

/// Datagrams handed to the kernel per `sendmmsg` call, at most.
pub const SEND_BATCH: usize = 32;

/// Sends every datagram of `out` (in order), as few system calls as the kernel takes. A
/// datagram the kernel refuses (unreachable peer, too large) is skipped and logged at debug,
/// as a failed `send_to` was; a full socket buffer waits until the socket is writable.
pub async fn send_all(socket: &UdpSocket, out: &[Transmit]) {
    let mut rest = out;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(SEND_BATCH)];
        match socket.try_io(Interest::WRITABLE, || sendmmsg(socket, chunk)) {
            Ok(0) => {
                debug!("send failed: the kernel took no datagram");
                return;
            }
            Ok(sent) => rest = &rest[sent.min(chunk.len())..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = socket.writable().await {
                    debug!("send failed: {e}");
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // The first datagram of the chunk failed: drop it, go on with the others.
                if let Some(t) = chunk.first() {
                    debug!(peer = %t.peer, "send failed: {e}");
                }
                rest = &rest[1..];
            }
        }
    }
}

/// One `sendmmsg` over `chunk`: how many datagrams the kernel took, or the error of the
/// first.
fn sendmmsg(socket: &UdpSocket, chunk: &[Transmit]) -> io::Result<usize> {
    let addrs: Vec<SockAddr> = chunk.iter().map(|t| SockAddr::from(t.peer)).collect();
    let mut iovs: Vec<libc::iovec> = chunk
        .iter()
        .map(|t| libc::iovec {
            iov_base: t.payload.as_ptr().cast_mut().cast(),
            iov_len: t.payload.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = addrs
        .iter()
        .zip(iovs.iter_mut())
        .map(|(addr, iov)| {
            // SAFETY: an all-zero msghdr is valid (no control data, no flags).
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            hdr.msg_name = addr.as_ptr().cast_mut().cast();
            hdr.msg_namelen = addr.len();
            hdr.msg_iov = std::ptr::from_mut(iov);
            hdr.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            }
        })
        .collect();
    let len = libc::c_uint::try_from(msgs.len()).unwrap_or(libc::c_uint::MAX);
    // SAFETY: `msgs` holds `len` initialised headers whose name and iovec pointers point into
    // `addrs`, `iovs` and the payloads of `chunk`, all alive and unmoved until the call
    // returns; the kernel only reads them (and writes `msg_len`).
    let sent = unsafe { libc::sendmmsg(socket.as_raw_fd(), msgs.as_mut_ptr(), len, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(sent).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_datagram_arrives_in_order_and_a_refused_one_is_skipped() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let to = rx.local_addr().expect("addr");
        let v6 = "[::1]:9".parse().expect("addr");
        // More than one batch; one datagram to an IPv6 peer from an IPv4 socket (refused by
        // the kernel with EAFNOSUPPORT / EINVAL) in the middle.
        let mut out: Vec<Transmit> = (0..SEND_BATCH as u32 + 10)
            .map(|i| Transmit {
                peer: to,
                payload: i.to_be_bytes().to_vec(),
            })
            .collect();
        out.insert(
            5,
            Transmit {
                peer: v6,
                payload: b"refused".to_vec(),
            },
        );
        send_all(&tx, &out).await;
        let mut buf = [0u8; 16];
        for i in 0..SEND_BATCH as u32 + 10 {
            let (n, from) =
                tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv_from(&mut buf))
                    .await
                    .expect("datagram arrives")
                    .expect("recv");
            assert_eq!(from, tx.local_addr().expect("addr"));
            assert_eq!(&buf[..n], &i.to_be_bytes(), "datagram {i}");
        }
    }
}
