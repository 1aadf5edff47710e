//! The kernel's TCP socket tables through netlink `sock_diag` (what `ss` reads), asking the
//! kernel only for the states wanted: on a host with tens of thousands of connections, the
//! kernel then walks its hash tables and sends back only the few sockets in, say, CLOSE_WAIT,
//! where `/proc/net/tcp` formats and parses every socket as text.
//!
//! A netlink socket queries the network namespace it was created in; [`crate::netns::in_netns`]
//! runs a query in another one from a short-lived thread.
//!
//! For the states a caller names, the kernel is also asked for `INET_DIAG_INFO` (its
//! `struct tcp_info`, parsed by the crate): the times since the peer last sent data and the
//! last ACK (see [`TcpInfoTimes`]). Only there: the kernel then fills about 250 more bytes per
//! socket.

use std::{collections::HashSet, io, ops::ControlFlow};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use crate::event::{Endpoints, TcpState};

/// One TCP socket as `sock_diag` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    pub endpoints: Endpoints,
    pub state: TcpState,
    /// `idiag_rqueue`: for a connected socket, `rcv_nxt - copied_seq` (as `rx_queue` in
    /// `/proc/net/tcp`), so a received FIN counts as one byte.
    pub rx_queue: u32,
    /// Inode of the socket (`socket:[inode]` in `/proc/PID/fd`); 0 for a timewait socket.
    pub inode: u64,
    /// Its `tcp_info` times, when they were asked for (and the kernel gave them: never for a
    /// timewait socket).
    pub times: Option<TcpInfoTimes>,
}

/// A socket's own history from the kernel's `struct tcp_info` (`tcp_get_info()`,
/// net/ipv4/tcp.c), which the kernel computes in jiffies and reports in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpInfoTimes {
    /// `CLOCK_MONOTONIC` (ns, as `bpf_ktime_get_ns`) just after the answer arrived: the kernel
    /// computed the times below before this instant.
    pub read_ns: u64,
    /// `tcpi_last_data_recv`: ms since the last segment carrying data arrived
    /// (`icsk_ack.lrcvtime`; set at the handshake too). A bare FIN, with no data, does not
    /// update it (`tcp_data_queue()` calls `tcp_event_data_recv()` only for `skb->len > 0`).
    pub last_data_recv_ms: u32,
    /// `tcpi_last_ack_recv`: ms since the last acceptable ACK arrived (`tp->rcv_tstamp`, set in
    /// `tcp_ack()`; every segment after the handshake carries an ACK, the peer's FIN too).
    pub last_ack_recv_ms: u32,
}

/// The kernel's clock tick is at most this long (`CONFIG_HZ` >= 100): a time the kernel
/// computes in jiffies may exceed the true time by up to one tick.
pub const MAX_JIFFY_NS: u64 = 10_000_000;

/// The `sock_diag` state mask for `states` (bit `n` for the kernel's state number `n`).
pub fn state_mask(states: &[TcpState]) -> StateFlags {
    let bits = states
        .iter()
        .filter_map(|s| match s {
            TcpState::Unknown(_) => None,
            known => (1..=12u32).find(|&n| TcpState::from(n) == *known),
        })
        .fold(0u32, |bits, n| bits | (1 << n));
    StateFlags::from_bits_truncate(bits)
}

/// Every IPv4 and IPv6 TCP socket of the calling thread's network namespace in one of
/// `states`; those in one of `with_times` also carry their [`TcpInfoTimes`].
pub fn tcp_sockets(states: &[TcpState], with_times: &[TcpState]) -> io::Result<Vec<DiagSocket>> {
    let mut socket = connect()?;
    let all = state_mask(states);
    let timed = all.clone() & state_mask(with_times);
    let plain = all - timed.clone();
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        for (mask, extensions) in [
            (plain.clone(), ExtensionFlags::empty()),
            (timed.clone(), ExtensionFlags::INFO),
        ] {
            if !mask.is_empty() {
                dump(&mut socket, family, mask, extensions, &mut |s| {
                    out.push(s);
                    ControlFlow::Continue(())
                })?;
            }
        }
    }
    Ok(out)
}

/// The TCP sockets of the calling thread's network namespace whose inode is one of `inodes`
/// (in any state a socket with a file can be in: timewait and request sockets have none),
/// without `tcp_info`. The dump stops once every inode is found, so a socket found early
/// spares the rest of a large table; an inode not found is not in the answer (a socket
/// that is not TCP, or closed meanwhile).
pub fn tcp_sockets_by_inode(inodes: &HashSet<u64>) -> io::Result<Vec<DiagSocket>> {
    let mut out: Vec<DiagSocket> = Vec::new();
    if inodes.is_empty() {
        return Ok(out);
    }
    let states = state_mask(
        &(1..=12u32)
            .map(TcpState::from)
            .filter(|&s| s != TcpState::TimeWait)
            .collect::<Vec<_>>(),
    );
    for family in [AF_INET, AF_INET6] {
        // A socket per dump: one left unread when the first stops early cannot be reused.
        let mut socket = connect()?;
        let mut left = inodes.len() - out.len();
        let stopped = dump(
            &mut socket,
            family,
            states.clone(),
            ExtensionFlags::empty(),
            &mut |s| {
                if s.inode != 0 && inodes.contains(&s.inode) {
                    out.push(s);
                    left -= 1;
                    if left == 0 {
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            },
        )?;
        if stopped {
            break;
        }
    }
    Ok(out)
}

/// A netlink `sock_diag` socket of the calling thread's namespace.
fn connect() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// Dumps the sockets of `family` in `states` into `each`, until it says to stop; says whether
/// it did.
fn dump(
    socket: &mut Socket,
    family: u8,
    states: StateFlags,
    extensions: ExtensionFlags,
    each: &mut dyn FnMut(DiagSocket) -> ControlFlow<()>,
) -> io::Result<bool> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions,
            states,
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    request.finalize();
    let mut bytes = vec![0; request.buffer_len()];
    request.serialize(&mut bytes);
    socket.send(&bytes, 0)?;

    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut buffer[..], 0)?;
        let read_ns = crate::units::monotonic_ns();
        let mut offset = 0;
        while offset < size {
            let message = <NetlinkMessage<SockDiagMessage>>::deserialize(&buffer[offset..size])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    let h = &response.header;
                    let socket = DiagSocket {
                        endpoints: Endpoints {
                            laddr: h.socket_id.source_address,
                            lport: h.socket_id.source_port,
                            raddr: h.socket_id.destination_address,
                            rport: h.socket_id.destination_port,
                        },
                        state: TcpState::from(u32::from(h.state)),
                        rx_queue: h.recv_queue,
                        inode: u64::from(h.inode),
                        times: response.nlas.iter().find_map(|nla| match nla {
                            Nla::TcpInfo(info) => Some(TcpInfoTimes {
                                read_ns,
                                last_data_recv_ms: info.last_data_recv,
                                last_ack_recv_ms: info.last_ack_recv,
                            }),
                            _ => None,
                        }),
                    };
                    if each(socket).is_break() {
                        return Ok(true);
                    }
                }
                NetlinkPayload::Done(_) => return Ok(false),
                NetlinkPayload::Error(e) => {
                    let code = e.code.map_or(0, |c| -c.get());
                    return Err(io::Error::from_raw_os_error(code));
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_masks() {
        assert_eq!(state_mask(&[TcpState::CloseWait]), StateFlags::CLOSE_WAIT);
        assert_eq!(
            state_mask(&[
                TcpState::Established,
                TcpState::Listen,
                TcpState::Unknown(99)
            ]),
            StateFlags::ESTABLISHED | StateFlags::LISTEN
        );
        assert!(state_mask(&[]).is_empty());
    }

    /// sock_diag needs no privilege for TCP sockets of one's own namespace.
    #[test]
    fn finds_our_close_wait_socket_and_only_that_state() {
        use std::io::Write as _;
        let listener = std::net::TcpListener::bind("[::1]:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        client.write_all(&[1u8; 10]).unwrap();
        drop(client);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let found = loop {
            let sockets = tcp_sockets(&[TcpState::CloseWait], &[TcpState::CloseWait]).unwrap();
            assert!(sockets.iter().all(|s| s.state == TcpState::CloseWait));
            if let Some(s) = sockets
                .into_iter()
                .find(|s| s.endpoints.rport == peer.port())
            {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "no CLOSE_WAIT socket");
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(found.endpoints.laddr, listener.local_addr().unwrap().ip());
        assert_eq!(found.endpoints.lport, listener.local_addr().unwrap().port());
        assert_eq!(found.rx_queue, 11, "ten bytes and the FIN");
        let times = found.times.expect("tcp_info was asked for CLOSE_WAIT");
        assert!(times.last_ack_recv_ms < 10_000, "{times:?}");
        assert!(times.last_data_recv_ms < 10_000, "{times:?}");
        let inode = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&server)
        ))
        .unwrap();
        assert_eq!(inode.to_string_lossy(), format!("socket:[{}]", found.inode));
        let listening = tcp_sockets(&[TcpState::Listen], &[]).unwrap();
        let ours = listening
            .iter()
            .find(|s| s.endpoints.lport == listener.local_addr().unwrap().port())
            .expect("our listener");
        assert_eq!(ours.times, None, "tcp_info only where asked");
    }

    /// Sockets asked for by inode are found in whatever state they are, and only they.
    #[test]
    fn finds_sockets_by_inode() {
        use std::os::fd::AsRawFd;
        let inode = |fd: &dyn AsRawFd| {
            let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
            link.to_string_lossy()
                .trim_start_matches("socket:[")
                .trim_end_matches(']')
                .parse::<u64>()
                .unwrap()
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:0").unwrap();
        let wanted: HashSet<u64> = [inode(&server), inode(&v6)].into();
        let mut found = tcp_sockets_by_inode(&wanted).unwrap();
        found.sort_by_key(|s| s.state);
        let server_end = found.iter().find(|s| s.inode == inode(&server)).unwrap();
        assert_eq!(
            (
                server_end.state,
                server_end.endpoints.rport,
                server_end.times
            ),
            (
                TcpState::Established,
                client.local_addr().unwrap().port(),
                None
            )
        );
        let v6_end = found.iter().find(|s| s.inode == inode(&v6)).unwrap();
        assert_eq!(
            (v6_end.state, v6_end.endpoints.lport),
            (TcpState::Listen, v6.local_addr().unwrap().port())
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(tcp_sockets_by_inode(&[u64::MAX].into()).unwrap().is_empty());
        assert!(tcp_sockets_by_inode(&HashSet::new()).unwrap().is_empty());
    }
}
