//! Pressure and forecast: a holder's open fds against its soft `RLIMIT_NOFILE`, the sockets it
//! holds in `CLOSE_WAIT` and their growth per minute, and the projected time to the fd limit;
//! for a stuck outgoing connection, the same for the local ports towards its destination.
//! Rates and forecasts come from [`crate::forecast`], the one place they are computed.

use std::{collections::HashMap, net::IpAddr, path::Path, time::Duration};

use super::{Diagnosis, PortPressure, Target, Unavailable};
use crate::{
    event::{Endpoints, TcpState},
    forecast::{time_to_limit, Series},
    metrics::process::fd_usage,
    owner::SocketTable,
};

/// How much history a rate spans: "the rate over the last minutes".
pub const WINDOW: Duration = Duration::from_secs(300);

/// A destination's local ports, identified by namespace (0: unknown) and remote end.
type Destination = (u64, IpAddr, u16);

/// Counts seen in successive socket tables, by process and by destination.
#[derive(Debug, Default)]
pub struct History {
    close_wait: HashMap<u32, Series>,
    ports: HashMap<Destination, Series>,
}

impl History {
    /// Records how many `CLOSE_WAIT` sockets each process holds in `table` (a socket two
    /// processes hold counts for both), and forgets processes not seen for a window.
    pub fn observe(&mut self, table: &SocketTable, now_ns: u64) {
        let mut counts: HashMap<u32, u64> = HashMap::new();
        for entry in table.in_state(TcpState::CloseWait) {
            let mut pids: Vec<u32> = entry.holders.iter().map(|h| h.pid).collect();
            pids.dedup();
            for pid in pids {
                *counts.entry(pid).or_default() += 1;
            }
        }
        // Processes that held some and hold none now: a zero sample, then forgotten.
        for (pid, series) in &mut self.close_wait {
            if !counts.contains_key(pid) {
                series.push(now_ns, 0);
            }
        }
        for (pid, n) in counts {
            self.close_wait
                .entry(pid)
                .or_insert_with(|| Series::new(WINDOW))
                .push(now_ns, n);
        }
        self.close_wait.retain(|_, s| s.last() != Some(0));
    }

    /// Records the ports in use towards `dest` and returns its series.
    fn ports(&mut self, dest: Destination, in_use: u64, now_ns: u64) -> &Series {
        if self.ports.len() > 4096 {
            self.ports.clear();
        }
        let series = self
            .ports
            .entry(dest)
            .or_insert_with(|| Series::new(WINDOW));
        series.push(now_ns, in_use);
        series
    }
}

/// Fills the fd and port pressure of `d` for `target`.
pub fn fill(
    d: &mut Diagnosis,
    history: &mut History,
    table: Option<&SocketTable>,
    target: &Target,
    now_ns: u64,
) {
    match fd_usage(target.pid) {
        Some(usage) => {
            d.fds_open = Some(usage.open);
            d.fds_limit = usage.limit;
        }
        None => d.unavailable.push(Unavailable {
            field: "fds_open".into(),
            reason: gone_or_refused(target.pid),
        }),
    }
    let series = history.close_wait.get(&target.pid);
    if table.is_some() {
        d.close_wait_held = Some(series.and_then(Series::last).unwrap_or(0));
    } else {
        d.unavailable.push(Unavailable {
            field: "close_wait_held".into(),
            reason: "the socket tables could not be read".into(),
        });
    }
    d.close_wait_per_minute = series.and_then(Series::per_minute);
    d.fd_limit_in_s = forecast(d.fds_open, d.fds_limit, d.close_wait_per_minute);
    if let Some(table) = table {
        d.ports = target
            .stuck
            .iter()
            .find_map(|(netns, e)| outgoing(table, *netns, e, target.pid))
            .map(|(dest, in_use, range)| {
                let rate = history.ports(dest, in_use, now_ns).per_minute();
                PortPressure {
                    raddr: dest.1,
                    rport: dest.2,
                    ports_in_use: in_use,
                    ports_range: range.1 - range.0 + 1,
                    ports_per_minute: rate,
                    ports_exhausted_in_s: forecast(Some(in_use), Some(range.1 - range.0 + 1), rate),
                }
            });
    }
}

/// Seconds until `used` reaches `limit` at `per_minute`, while it grows.
pub fn forecast(used: Option<u64>, limit: Option<u64>, per_minute: Option<f64>) -> Option<f64> {
    time_to_limit(used?, limit?, per_minute?).map(|d| d.as_secs_f64())
}

/// For an outgoing connection (its local port is in the ephemeral range and no socket listens
/// on it): its destination, the sockets with a local port in the range towards it, and the
/// range. `None` for an incoming one.
fn outgoing(
    table: &SocketTable,
    netns: Option<u64>,
    e: &Endpoints,
    pid: u32,
) -> Option<(Destination, u64, (u64, u64))> {
    let ns = netns.unwrap_or(0);
    let same_ns = |n: u64| netns.is_none() || n == ns;
    let listening = table
        .in_state(TcpState::Listen)
        .any(|l| same_ns(l.netns) && l.endpoints.lport == e.lport);
    if listening {
        return None;
    }
    let range = port_range(pid)?;
    let in_range = |port: u16| (range.0..=range.1).contains(&u64::from(port));
    if !in_range(e.lport) {
        return None;
    }
    let canon = |ip: IpAddr| ip.to_canonical();
    let in_use = table
        .entries
        .iter()
        .filter(|x| {
            same_ns(x.netns)
                && x.state != TcpState::Listen
                && x.endpoints.rport == e.rport
                && canon(x.endpoints.raddr) == canon(e.raddr)
                && in_range(x.endpoints.lport)
        })
        .count() as u64;
    Some(((ns, canon(e.raddr), e.rport), in_use, range))
}

/// `net.ipv4.ip_local_port_range` (it applies to IPv6 too) in the namespace of `pid`.
fn port_range(pid: u32) -> Option<(u64, u64)> {
    let ns = crate::netns::Netns::open(Path::new(&format!("/proc/{pid}/ns/net"))).ok()?;
    let text = crate::netns::in_netns(&ns, || {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
    })
    .ok()?;
    parse_port_range(&text)
}

/// `32768\t60999\n` into `(32768, 60999)`.
pub fn parse_port_range(text: &str) -> Option<(u64, u64)> {
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    let (lo, hi) = (it.next()?.ok()?, it.next()?.ok()?);
    (lo <= hi).then_some((lo, hi))
}

/// Why `/proc/PID` could not be read: gone, or refused.
pub fn gone_or_refused(pid: u32) -> String {
    if Path::new(&format!("/proc/{pid}")).exists() {
        format!("/proc/{pid} could not be read (permission denied)")
    } else {
        "the process has exited".into()
    }
}

/// `pid 1234 holds 812/1024 fds, 40 in CLOSE_WAIT, +37 CLOSE_WAIT/min: fd limit in ~6 min`,
/// and for an outgoing connection `; 28000/28232 local ports to 10.0.0.5:5432, +120/min:
/// exhausted in ~2 min`. `None` when nothing is known.
pub fn line(d: &Diagnosis) -> Option<String> {
    use std::fmt::Write as _;
    let mut s = format!("pid {} holds ", d.pid);
    match (d.fds_open, d.fds_limit) {
        (Some(open), Some(limit)) => write!(s, "{open}/{limit} fds").ok()?,
        (Some(open), None) => write!(s, "{open} fds (no limit)").ok()?,
        (None, _) if d.close_wait_held.is_none() => return None,
        (None, _) => s.push_str("? fds"),
    }
    if let Some(n) = d.close_wait_held {
        write!(s, ", {n} in CLOSE_WAIT").ok()?;
    }
    if let Some(rate) = d.close_wait_per_minute {
        write!(s, ", {} CLOSE_WAIT/min", signed(rate)).ok()?;
    }
    if let Some(secs) = d.fd_limit_in_s {
        write!(
            s,
            ": fd limit in {}",
            crate::forecast::approx(Duration::from_secs_f64(secs))
        )
        .ok()?;
    }
    if let Some(p) = &d.ports {
        let dest = match p.raddr {
            IpAddr::V4(v4) => format!("{v4}:{}", p.rport),
            IpAddr::V6(v6) => format!("[{v6}]:{}", p.rport),
        };
        write!(
            s,
            "; {}/{} local ports to {dest}",
            p.ports_in_use, p.ports_range
        )
        .ok()?;
        if let Some(rate) = p.ports_per_minute {
            write!(s, ", {}/min", signed(rate)).ok()?;
        }
        if let Some(secs) = p.ports_exhausted_in_s {
            write!(
                s,
                ": exhausted in {}",
                crate::forecast::approx(Duration::from_secs_f64(secs))
            )
            .ok()?;
        }
    }
    Some(s)
}

/// `+37`, `-3`, `+0.5`: a rate with its sign, whole when it is at least 10.
fn signed(rate: f64) -> String {
    if rate.abs() >= 10.0 || rate == rate.trunc() {
        format!("{rate:+.0}")
    } else {
        format!("{rate:+.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owner::{Owner, SocketEntry};

    fn entry(lport: u16, rport: u16, state: TcpState, pid: Option<u32>) -> SocketEntry {
        SocketEntry {
            endpoints: Endpoints {
                laddr: "10.0.0.2".parse().unwrap(),
                lport,
                raddr: "10.0.0.5".parse().unwrap(),
                rport,
            },
            state,
            recv_q: 0,
            inode: u64::from(lport),
            netns: 1,
            holders: pid
                .map(|pid| Owner {
                    pid,
                    comm: "srv".into(),
                    fd: Some(i32::from(lport)),
                })
                .into_iter()
                .collect(),
            times: None,
            fin_read: None,
        }
    }

    #[test]
    fn history_counts_close_wait_per_holder_and_its_rate() {
        let mut h = History::default();
        for i in 0..=20u16 {
            let table = SocketTable {
                entries: (0..i * 2)
                    .map(|n| entry(40000 + n, 80, TcpState::CloseWait, Some(7)))
                    .chain([entry(1, 2, TcpState::Established, Some(7))])
                    .collect(),
                ..SocketTable::default()
            };
            // Every 3 s, two more: 40 a minute.
            h.observe(&table, u64::from(i) * 3_000_000_000);
        }
        let series = &h.close_wait[&7];
        assert_eq!(series.last(), Some(40));
        assert!((series.per_minute().unwrap() - 40.0).abs() < 1e-9);
        // Gone from the tables: forgotten.
        h.observe(&SocketTable::default(), 70_000_000_000);
        assert!(h.close_wait.is_empty());
    }

    #[test]
    fn the_pressure_line_reads_as_the_issue_says() {
        let mut d = Diagnosis {
            pid: 1234,
            fds_open: Some(812),
            fds_limit: Some(1024),
            close_wait_held: Some(790),
            close_wait_per_minute: Some(37.2),
            ..Diagnosis::default()
        };
        d.fd_limit_in_s = forecast(d.fds_open, d.fds_limit, d.close_wait_per_minute);
        assert_eq!(
            line(&d).unwrap(),
            "pid 1234 holds 812/1024 fds, 790 in CLOSE_WAIT, +37 CLOSE_WAIT/min: fd limit in ~6 min"
        );
        d.close_wait_per_minute = Some(0.0);
        d.fd_limit_in_s = forecast(d.fds_open, d.fds_limit, d.close_wait_per_minute);
        assert_eq!(
            line(&d).unwrap(),
            "pid 1234 holds 812/1024 fds, 790 in CLOSE_WAIT, +0 CLOSE_WAIT/min"
        );
        d.ports = Some(PortPressure {
            raddr: "10.0.0.5".parse().unwrap(),
            rport: 5432,
            ports_in_use: 28000,
            ports_range: 28232,
            ports_per_minute: Some(120.0),
            ports_exhausted_in_s: forecast(Some(28000), Some(28232), Some(120.0)),
        });
        assert!(line(&d).unwrap().ends_with(
            "; 28000/28232 local ports to 10.0.0.5:5432, +120/min: exhausted in ~2 min"
        ));
        assert_eq!(line(&Diagnosis::default()), None);
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range(""), None);
    }

    #[test]
    fn only_outgoing_connections_have_port_pressure() {
        // Ours is not listened on: the range of this machine's namespace applies.
        let me = std::process::id();
        let range = port_range(me).expect("our own port range");
        let lport = u16::try_from(range.0).unwrap();
        let table = SocketTable {
            entries: vec![
                entry(lport, 5432, TcpState::CloseWait, Some(me)),
                entry(lport + 1, 5432, TcpState::Established, Some(me)),
                entry(lport + 2, 5433, TcpState::Established, Some(me)),
                entry(80, 5000, TcpState::CloseWait, Some(me)),
                entry(80, 0, TcpState::Listen, Some(me)),
            ],
            ..SocketTable::default()
        };
        let (dest, in_use, _) = outgoing(&table, Some(1), &table.entries[0].endpoints, me).unwrap();
        assert_eq!((dest.2, in_use), (5432, 2));
        assert!(outgoing(&table, Some(1), &table.entries[3].endpoints, me).is_none());
    }
}
