//! The numbers of an analysis: connections by outcome, time spent per state (exact
//! nearest-rank percentiles), and sockets that stayed in CLOSE_WAIT, recomputed from the
//! timelines at the analysis threshold and merged with what the live run reported.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::{
    event::{Endpoints, Name, TcpState},
    record::{
        CloseWaitFinding, CloseWaitRecord, CloseWaitResolvedRecord, OutcomeCount, ProcessCloseWait,
        SkAddr, StateDwell, TimelineRecord,
    },
    timeline::Outcome,
    units::whole_ms,
};

/// A socket the live run reported in CLOSE_WAIT.
#[derive(Debug)]
struct Live {
    alert: CloseWaitRecord,
    resolved: Option<CloseWaitResolvedRecord>,
}

/// Identifies a CLOSE_WAIT socket across records: its address (none for one found at start)
/// and its 4-tuple.
type Key = (Option<SkAddr>, Endpoints);

fn endpoints(
    laddr: std::net::IpAddr,
    lport: u16,
    raddr: std::net::IpAddr,
    rport: u16,
) -> Endpoints {
    Endpoints {
        laddr,
        lport,
        raddr,
        rport,
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    threshold_ns: u64,
    connections: u64,
    outcomes: BTreeMap<Outcome, u64>,
    dwell: BTreeMap<TcpState, Vec<u64>>,
    findings: Vec<CloseWaitFinding>,
    /// Sockets with a CLOSE_WAIT step in a timeline, whatever its length.
    in_timelines: HashSet<Key>,
    live: HashMap<Key, Live>,
}

impl Stats {
    pub fn new(threshold_ns: u64) -> Self {
        Self {
            threshold_ns,
            ..Self::default()
        }
    }

    /// Counts one rebuilt timeline.
    pub fn timeline(&mut self, t: &TimelineRecord) {
        self.connections += 1;
        *self.outcomes.entry(t.outcome).or_default() += 1;
        for (i, step) in t.states.iter().enumerate() {
            if let Some(d) = step.duration_ns {
                self.dwell.entry(step.state).or_default().push(d);
            }
            if step.state != TcpState::CloseWait {
                continue;
            }
            let Some(since) = step.enter_ns else {
                continue;
            };
            let key = (
                Some(t.skaddr),
                endpoints(t.laddr, t.lport, t.raddr, t.rport),
            );
            self.in_timelines.insert(key);
            let next = t.states.get(i + 1);
            let age = step
                .duration_ns
                .or_else(|| next.is_none().then(|| t.ts_ns.saturating_sub(since)));
            let Some(age) = age.filter(|&a| a >= self.threshold_ns) else {
                continue;
            };
            self.findings.push(CloseWaitFinding {
                skaddr: Some(t.skaddr),
                pid: t.pid,
                comm: t.comm.clone(),
                family: t.family,
                laddr: t.laddr,
                lport: t.lport,
                raddr: t.raddr,
                rport: t.rport,
                since_ns: Some(since),
                age_ms: whole_ms(age),
                age_at_least: false,
                left_to: next.map(|s| s.state),
                reported_live: false,
            });
        }
    }

    /// A live CLOSE_WAIT alert.
    pub fn alert(&mut self, r: &CloseWaitRecord) {
        let key = (r.skaddr, endpoints(r.laddr, r.lport, r.raddr, r.rport));
        self.live.entry(key).or_insert_with(|| Live {
            alert: r.clone(),
            resolved: None,
        });
    }

    /// A live report that an alerted socket left CLOSE_WAIT.
    pub fn resolved(&mut self, r: &CloseWaitResolvedRecord) {
        let key = (r.skaddr, endpoints(r.laddr, r.lport, r.raddr, r.rport));
        if let Some(live) = self.live.get_mut(&key) {
            live.resolved = Some(r.clone());
        }
    }

    pub fn threshold_ns(&self) -> u64 {
        self.threshold_ns
    }

    pub fn connections(&self) -> u64 {
        self.connections
    }

    pub fn outcomes(&self) -> Vec<OutcomeCount> {
        Outcome::ALL
            .iter()
            .filter_map(|&outcome| {
                let count = *self.outcomes.get(&outcome)?;
                Some(OutcomeCount { outcome, count })
            })
            .collect()
    }

    pub fn dwell(&self) -> Vec<StateDwell> {
        self.dwell
            .iter()
            .map(|(&state, durations)| {
                let mut sorted = durations.clone();
                sorted.sort_unstable();
                StateDwell {
                    state,
                    count: sorted.len() as u64,
                    p50_ns: percentile(&sorted, 50),
                    p90_ns: percentile(&sorted, 90),
                    p99_ns: percentile(&sorted, 99),
                    max_ns: sorted.last().copied().unwrap_or(0),
                }
            })
            .collect()
    }

    /// The CLOSE_WAIT findings, oldest first, and the same grouped by process. Live reports
    /// mark the recomputed findings; those with no timeline (sockets in CLOSE_WAIT at start)
    /// are added as the live run saw them, aged to `end_ns` if they never left.
    pub fn close_wait(&self, end_ns: u64) -> (Vec<CloseWaitFinding>, Vec<ProcessCloseWait>) {
        let mut findings = self.findings.clone();
        for f in &mut findings {
            let key = (f.skaddr, endpoints(f.laddr, f.lport, f.raddr, f.rport));
            f.reported_live = self.live.contains_key(&key);
        }
        for (key, live) in &self.live {
            if self.in_timelines.contains(key) {
                continue;
            }
            findings.push(live_finding(live, end_ns));
        }
        findings.sort_by(|a, b| {
            b.age_ms
                .cmp(&a.age_ms)
                .then_with(|| a.since_ns.cmp(&b.since_ns))
                .then_with(|| (a.lport, a.rport).cmp(&(b.lport, b.rport)))
        });
        let mut groups: HashMap<(Option<u32>, Option<Name>), ProcessCloseWait> = HashMap::new();
        for f in &findings {
            let g = groups
                .entry((f.pid, f.comm.clone()))
                .or_insert_with(|| ProcessCloseWait {
                    pid: f.pid,
                    comm: f.comm.clone(),
                    sockets: 0,
                    oldest_ms: 0,
                });
            g.sockets += 1;
            g.oldest_ms = g.oldest_ms.max(f.age_ms);
        }
        let mut top: Vec<ProcessCloseWait> = groups.into_values().collect();
        top.sort_by(|a, b| {
            b.sockets
                .cmp(&a.sockets)
                .then(b.oldest_ms.cmp(&a.oldest_ms))
                .then_with(|| a.pid.cmp(&b.pid))
                .then_with(|| a.comm.cmp(&b.comm))
        });
        (findings, top)
    }
}

fn live_finding(live: &Live, end_ns: u64) -> CloseWaitFinding {
    let a = &live.alert;
    let (age_ms, left_to) = match &live.resolved {
        Some(r) => (r.stuck_ms.max(a.age_ms), Some(r.new_state)),
        None => (
            a.age_ms
                .saturating_add(whole_ms(end_ns.saturating_sub(a.ts_ns))),
            None,
        ),
    };
    CloseWaitFinding {
        skaddr: a.skaddr,
        pid: a.pid,
        comm: a.comm.clone(),
        family: a.family,
        laddr: a.laddr,
        lport: a.lport,
        raddr: a.raddr,
        rport: a.rport,
        since_ns: (!a.age_at_least)
            .then(|| a.ts_ns.saturating_sub(a.age_ms.saturating_mul(1_000_000))),
        age_ms,
        age_at_least: a.age_at_least,
        left_to,
        reported_live: true,
    }
}

/// Nearest-rank percentile of sorted values: the smallest value with at least `p`% of the
/// values at or below it.
pub fn percentile(sorted: &[u64], p: u64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let n = sorted.len() as u64;
    let rank = (p * n).div_ceil(100).clamp(1, n);
    sorted[usize::try_from(rank - 1).unwrap_or(0)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::Family, timeline::Step};

    #[test]
    fn nearest_rank() {
        let v: Vec<u64> = (1..=10).collect();
        assert_eq!(percentile(&v, 50), 5);
        assert_eq!(percentile(&v, 90), 9);
        assert_eq!(percentile(&v, 99), 10);
        assert_eq!(percentile(&[7], 50), 7);
        assert_eq!(percentile(&[], 50), 0);
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&hundred, 99), 99);
    }

    fn step(state: TcpState, enter: u64, duration: Option<u64>) -> Step {
        Step {
            state,
            enter_ns: Some(enter),
            duration_ns: duration,
            inferred: false,
        }
    }

    fn timeline(skaddr: &str, end: u64, outcome: Outcome, states: Vec<Step>) -> TimelineRecord {
        TimelineRecord {
            ts_ns: end,
            time: crate::units::WallTime::default(),
            skaddr: SkAddr::parse(skaddr).unwrap(),
            family: Family::Ipv4,
            laddr: "127.0.0.1".parse().unwrap(),
            lport: 80,
            raddr: "127.0.0.1".parse().unwrap(),
            rport: 5000,
            pid: Some(1),
            comm: Some("srv".into()),
            netns: None,
            from_birth: true,
            outcome,
            error: None,
            reset_by: None,
            duration_ns: None,
            states,
        }
    }

    #[test]
    fn close_wait_from_timelines() {
        use TcpState::*;
        let mut stats = Stats::new(1_000_000_000);
        // Closed by its process after 2 s in CLOSE_WAIT.
        stats.timeline(&timeline(
            "0x1",
            9_000_000_000,
            Outcome::PassiveClose,
            vec![
                step(Established, 0, Some(1_000_000_000)),
                step(CloseWait, 1_000_000_000, Some(2_000_000_000)),
                step(LastAck, 3_000_000_000, Some(1)),
                step(Close, 3_000_000_001, None),
            ],
        ));
        // Still in CLOSE_WAIT when the run stopped, 5 s after it entered.
        stats.timeline(&timeline(
            "0x2",
            6_000_000_000,
            Outcome::Open,
            vec![step(CloseWait, 1_000_000_000, None)],
        ));
        // Short: below the threshold.
        stats.timeline(&timeline(
            "0x3",
            1_000,
            Outcome::PassiveClose,
            vec![step(CloseWait, 0, Some(10)), step(LastAck, 10, None)],
        ));
        let (findings, top) = stats.close_wait(6_000_000_000);
        let seen: Vec<_> = findings
            .iter()
            .map(|f| (f.skaddr.map(|a| a.to_string()), f.age_ms, f.left_to))
            .collect();
        assert_eq!(
            seen,
            vec![
                (Some("0x2".to_owned()), 5_000, None),
                (Some("0x1".to_owned()), 2_000, Some(LastAck))
            ]
        );
        assert_eq!((top[0].sockets, top[0].oldest_ms), (2, 5_000));
        assert_eq!(stats.outcomes()[0].outcome, Outcome::PassiveClose);
        let cw = stats
            .dwell()
            .into_iter()
            .find(|d| d.state == CloseWait)
            .unwrap();
        assert_eq!((cw.count, cw.p50_ns, cw.max_ns), (2, 10, 2_000_000_000));
    }
}
