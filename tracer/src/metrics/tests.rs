//! The metrics say what the JSON stream says: a recorded stream's records are fed to
//! [`Metrics`], and every value is checked against counts made from the JSON lines directly.

use std::collections::HashMap;

use serde_json::Value;

use super::*;
use crate::metrics::server::Format;

const EXPORT: &str = include_str!("../../tests/data/export-v1.ndjson");

/// `name{labels}` -> value, from the Prometheus text format.
fn samples(metrics: &Metrics) -> HashMap<String, f64> {
    let text = metrics.exposition().encode(Format::Text);
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("a sample line");
            (name.to_owned(), value.parse().expect("a number"))
        })
        .collect()
}

fn totals_of(summary: &Value) -> Totals {
    let n = |k: &str| summary[k].as_u64().unwrap_or(0);
    Totals {
        events: n("events"),
        lost_ringbuf: n("lost_ringbuf"),
        recursion_misses: n("recursion_misses"),
        decode_errors: n("decode_errors"),
        evicted: n("evicted"),
        stdout_dropped: summary
            .get("stdout")
            .map(|d| serde_json::from_value::<crate::delivery::Destination>(d.clone()).unwrap())
            .unwrap_or_default()
            .dropped,
        export_dropped: summary
            .get("export")
            .filter(|d| !d.is_null())
            .map(|d| serde_json::from_value::<crate::delivery::Destination>(d.clone()).unwrap())
            .map(|d| d.dropped),
    }
}

#[test]
fn counters_agree_with_a_recorded_stream() {
    let lines: Vec<Value> = EXPORT
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let records: Vec<Record> = EXPORT
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut metrics = Metrics::new("6.18", crate::defaults::METRICS_MAX_PROCESSES);
    // In two batches with a publish between them, as the event loop does.
    let (a, b) = records.split_at(records.len() / 2);
    metrics.observe(a);
    metrics.publish(&Totals::default());
    metrics.observe(b);
    let summary = lines.iter().find(|l| l["type"] == "summary").unwrap();
    metrics.publish(&totals_of(summary));
    let got = samples(&metrics);
    let of = |t: &'static str| lines.iter().filter(move |l| l["type"] == t);

    let mut pairs: HashMap<String, f64> = HashMap::new();
    for t in of("transition") {
        let key = format!(
            "tracer_transitions_total{{old_state=\"{}\",new_state=\"{}\"}}",
            t["old_state"].as_str().unwrap(),
            t["new_state"].as_str().unwrap()
        );
        *pairs.entry(key).or_default() += 1.0;
    }
    let exported: HashMap<String, f64> = got
        .iter()
        .filter(|(k, _)| k.starts_with("tracer_transitions_total"))
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    assert_eq!(exported, pairs);
    assert_eq!(pairs.values().sum::<f64>(), 52.0);

    let mut ended: HashMap<String, f64> = HashMap::new();
    for t in of("timeline") {
        let label = |v: &Value| v.as_str().unwrap_or(NONE).to_owned();
        let key = format!(
            "tracer_connections_ended_total{{outcome=\"{}\",error=\"{}\",reset_by=\"{}\"}}",
            t["outcome"].as_str().unwrap(),
            label(&t["error"]),
            label(&t["reset_by"]),
        );
        *ended.entry(key).or_default() += 1.0;
    }
    assert!(!ended.is_empty());
    for (key, want) in &ended {
        assert_eq!(got[key], *want, "{key}");
    }
    // Every series is a timeline's, or a zero one made at start.
    for (key, value) in got
        .iter()
        .filter(|(k, _)| k.starts_with("tracer_connections_ended_total"))
    {
        assert!(ended.contains_key(key) || *value == 0.0, "{key} {value}");
    }
    let left: Vec<f64> = of("transition")
        .filter(|t| t["old_state"] == "CLOSE_WAIT")
        .filter_map(|t| t["duration_ns"].as_u64())
        .map(|ns| ns as f64 / 1e9)
        .collect();
    assert!(!left.is_empty());
    assert_eq!(
        got["tracer_close_wait_duration_seconds_count"],
        left.len() as f64
    );
    let sum: f64 = left.iter().sum();
    assert!((got["tracer_close_wait_duration_seconds_sum"] - sum).abs() < 1e-9);
    assert_eq!(
        got["tracer_stuck_reports_total{state=\"CLOSE_WAIT\"}"],
        of("close_wait").count() as f64
    );
    assert_eq!(
        got["tracer_stuck_reports_total{state=\"CLOSE_WAIT\"}"],
        summary["close_wait_alerts"].as_f64().unwrap()
    );
    assert_eq!(
        got["tracer_events_total"],
        summary["events"].as_f64().unwrap()
    );
    for reason in LOSS_REASONS {
        assert_eq!(
            got[&format!("tracer_events_lost_total{{reason=\"{reason}\"}}")],
            0.0
        );
    }
    assert_eq!(got["tracer_sockets_evicted_total"], 0.0);
    for kind in ByType::KINDS {
        let key = format!(
            "tracer_records_dropped_total{{destination=\"stdout\",type=\"{}\"}}",
            kind.name()
        );
        assert_eq!(got[&key], 0.0, "{key}");
    }
    assert!(got.contains_key(&format!(
        "tracer_build_info{{version=\"{}\",kernel=\"6.18\",schema=\"{SCHEMA}\"}}",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(got["process_resident_memory_bytes"] > 0.0);
}

fn holder(pid: Option<u32>, count: usize, oldest_age_ms: u64) -> DigestProcess {
    DigestProcess {
        state: TcpState::CloseWait,
        pid,
        comm: pid.map(|p| compact_str::format_compact!("srv{p}")),
        container: None,
        count,
        oldest_age_ms,
        diagnosis: None,
    }
}

/// Series for processes that hold stuck sockets, at most the cap, the rest aggregated; a
/// process that holds none any more loses its series.
#[test]
fn process_series_follow_the_digest_and_the_cap() {
    let digest = DigestRecord {
        ts_ns: 0,
        time: crate::units::WallTime::default(),
        stuck: 6,
        processes: vec![
            holder(Some(8), 1, 900),
            holder(Some(7), 3, 2500),
            holder(None, 2, 100),
        ],
    };
    let metrics = Metrics::new("k", 1);
    assert_eq!(metrics.tracked_pids(&digest), [7], "the biggest holder");
    let fds = HashMap::from([(
        7,
        FdUsage {
            open: 40,
            limit: Some(1024),
        },
    )]);
    metrics.processes(&digest, &fds);
    let got = samples(&metrics);
    let series: Vec<&String> = got
        .keys()
        .filter(|k| k.starts_with("tracer_stuck_sockets"))
        .collect();
    assert_eq!(
        series.len(),
        2,
        "one own series and one aggregate: {series:?}"
    );
    assert_eq!(
        got["tracer_stuck_sockets{state=\"CLOSE_WAIT\",pid=\"7\",comm=\"srv7\",container=\"\"}"],
        3.0
    );
    assert_eq!(
        got["tracer_stuck_oldest_age_seconds{state=\"CLOSE_WAIT\",pid=\"7\",comm=\"srv7\",container=\"\"}"],
        2.5
    );
    assert_eq!(
        got["tracer_stuck_sockets{state=\"CLOSE_WAIT\",pid=\"other\",comm=\"other\",container=\"\"}"],
        3.0
    );
    assert_eq!(
        got["tracer_stuck_oldest_age_seconds{state=\"CLOSE_WAIT\",pid=\"other\",comm=\"other\",container=\"\"}"],
        0.9
    );
    assert_eq!(got["tracer_stuck_processes_aggregated"], 2.0);

    // Room for everyone: no aggregate, and the sum is the digest's; then nobody is stuck.
    let metrics = Metrics::new("k", 10);
    metrics.processes(&digest, &fds);
    let got = samples(&metrics);
    let total: f64 = got
        .iter()
        .filter(|(k, _)| k.starts_with("tracer_stuck_sockets{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, digest.stuck as f64);
    assert_eq!(got["tracer_stuck_processes_aggregated"], 0.0);
    metrics.processes(
        &DigestRecord {
            processes: Vec::new(),
            stuck: 0,
            ..digest
        },
        &HashMap::new(),
    );
    let got = samples(&metrics);
    assert!(
        !got.keys().any(|k| k.starts_with("tracer_stuck_sockets{")),
        "{got:?}"
    );
    assert!(
        !got.keys().any(|k| k.starts_with("tracer_process_")),
        "{got:?}"
    );
}

#[test]
fn fd_series_only_for_known_holders() {
    let digest = DigestRecord {
        ts_ns: 0,
        time: crate::units::WallTime::default(),
        stuck: 3,
        processes: vec![
            DigestProcess {
                state: TcpState::CloseWait,
                pid: Some(7),
                comm: Some("srv".into()),
                container: Some("c0ffee".into()),
                count: 2,
                oldest_age_ms: 1500,
                diagnosis: None,
            },
            DigestProcess {
                state: TcpState::CloseWait,
                pid: None,
                comm: None,
                container: None,
                count: 1,
                oldest_age_ms: 10,
                diagnosis: None,
            },
        ],
    };
    let metrics = Metrics::new("k", 10);
    assert_eq!(metrics.tracked_pids(&digest), [7]);
    metrics.processes(
        &digest,
        &HashMap::from([(
            7,
            FdUsage {
                open: 40,
                limit: Some(1024),
            },
        )]),
    );
    let got = samples(&metrics);
    assert_eq!(
        got["tracer_stuck_sockets{state=\"CLOSE_WAIT\",pid=\"7\",comm=\"srv\",container=\"c0ffee\"}"],
        2.0
    );
    assert_eq!(
        got["tracer_stuck_sockets{state=\"CLOSE_WAIT\",pid=\"unknown\",comm=\"unknown\",container=\"\"}"],
        1.0
    );
    assert_eq!(
        got["tracer_stuck_oldest_age_seconds{state=\"CLOSE_WAIT\",pid=\"7\",comm=\"srv\",container=\"c0ffee\"}"],
        1.5
    );
    assert_eq!(
        got["tracer_process_open_fds{pid=\"7\",comm=\"srv\",container=\"c0ffee\"}"],
        40.0
    );
    assert_eq!(
        got["tracer_process_max_fds{pid=\"7\",comm=\"srv\",container=\"c0ffee\"}"],
        1024.0
    );
    assert_eq!(
        got.keys()
            .filter(|k| k.starts_with("tracer_process_open_fds"))
            .count(),
        1
    );
}

#[test]
fn unknown_states_share_one_label() {
    let mut metrics = Metrics::new("k", 1);
    // The engine's record of a transition between two states the kernel does not have.
    let mut out = Vec::new();
    crate::engine::Engine::new(
        crate::engine::Options::default(),
        crate::units::WallClock::fixed(0),
    )
    .transition(
        crate::testing::transition(0, 1, "127.0.0.1:1", "127.0.0.1:2", 99, 1234),
        &mut out,
    );
    let [Record::Transition(t)] = &mut out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        (t.old_state, t.new_state),
        (TcpState::Unknown(99), TcpState::Unknown(1234))
    );
    metrics.observe(&[Record::Transition(t.clone())]);
    t.old_state = TcpState::Unknown(7777);
    metrics.observe(&[Record::Transition(t.clone())]);
    metrics.publish(&Totals::default());
    let got = samples(&metrics);
    assert_eq!(
        got["tracer_transitions_total{old_state=\"UNKNOWN\",new_state=\"UNKNOWN\"}"],
        2.0
    );
}

#[test]
fn every_metric_is_listed_with_its_type() {
    let names = exported_names();
    for name in [
        "tracer_transitions_total",
        "tracer_connections_ended_total",
        "tracer_stuck_sockets",
        "tracer_stuck_oldest_age_seconds",
        "tracer_stuck_reports_total",
        "tracer_close_wait_duration_seconds_bucket",
        "tracer_close_wait_duration_seconds_count",
        "tracer_process_open_fds",
        "tracer_process_max_fds",
        "tracer_stuck_processes_aggregated",
        "tracer_events_lost_total",
        "tracer_records_dropped_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "tracer_build_info",
    ] {
        assert!(
            names.iter().any(|n| n == name),
            "{name} missing from {names:?}"
        );
    }
}

/// `--stuck` states get series of their own, labelled by state; the cap counts processes,
/// not states, and the aggregate is per state.
#[test]
fn every_stuck_state_has_its_series() {
    let entry = |state, pid: u32, count, oldest_age_ms| DigestProcess {
        state,
        pid: Some(pid),
        comm: Some(compact_str::format_compact!("srv{pid}")),
        container: None,
        count,
        oldest_age_ms,
        diagnosis: None,
    };
    let digest = DigestRecord {
        ts_ns: 0,
        time: crate::units::WallTime::default(),
        stuck: 9,
        processes: vec![
            entry(TcpState::CloseWait, 7, 3, 2000),
            entry(TcpState::FinWait2, 7, 2, 5000),
            entry(TcpState::FinWait2, 8, 4, 1000),
        ],
    };
    // Process 7 holds 5, process 8 holds 4: with room for one, 7 keeps both its states.
    let mut metrics = Metrics::new("k", 1);
    let stuck = Record::Stuck(Box::new(crate::record::CloseWaitRecord {
        ts_ns: 0,
        time: crate::units::WallTime::default(),
        skaddr: None,
        pid: Some(8),
        comm: Some("srv8".into()),
        fd: None,
        family: crate::event::Family::Ipv4,
        laddr: [127, 0, 0, 1].into(),
        lport: 1,
        raddr: [127, 0, 0, 1].into(),
        rport: 2,
        age_ms: 1000,
        age_at_least: false,
        recv_q: None,
        netns: None,
        holders: Vec::new(),
        unowned: None,
        cgroup: None,
        container: None,
        pod_uid: None,
        state: TcpState::FinWait2,
        tcp_info: None,
        fin_read: None,
        diagnosis: None,
    }));
    metrics.observe(&[stuck]);
    metrics.publish(&Totals::default());
    metrics.processes(&digest, &HashMap::new());
    let got = samples(&metrics);
    let series =
        |state: &str, pid: &str| {
            got.get(&format!(
            "tracer_stuck_sockets{{state=\"{state}\",pid=\"{pid}\",comm=\"{}\",container=\"\"}}",
            if pid == "other" { "other".to_owned() } else { format!("srv{pid}") }
        ))
            .copied()
        };
    assert_eq!(series("CLOSE_WAIT", "7"), Some(3.0));
    assert_eq!(series("FIN_WAIT2", "7"), Some(2.0));
    assert_eq!(series("FIN_WAIT2", "other"), Some(4.0));
    assert_eq!(series("CLOSE_WAIT", "other"), None);
    assert_eq!(got["tracer_stuck_processes_aggregated"], 1.0);
    assert_eq!(got["tracer_stuck_reports_total{state=\"FIN_WAIT2\"}"], 1.0);
    assert_eq!(got["tracer_stuck_reports_total{state=\"CLOSE_WAIT\"}"], 0.0);
}

/// A connection's end is counted with the errno its application saw and the side that sent
/// the RST; an errno `errno.h` does not name shares one series.
#[test]
fn ended_connections_are_counted_by_cause() {
    let timeline = |outcome: &str, error: &str, reset_by: &str| {
        serde_json::from_str::<Record>(&format!(
            r#"{{"type":"timeline","ts_ns":1,"time":"1970-01-01T00:00:00.000000Z","skaddr":"0x1","family":"ipv4","laddr":"127.0.0.1","lport":1,"raddr":"127.0.0.1","rport":2,"pid":null,"comm":null,"from_birth":true,"outcome":"{outcome}","error":{error},"reset_by":{reset_by},"duration_ns":null,"states":[]}}"#
        ))
        .unwrap()
    };
    let mut metrics = Metrics::new("k", 1);
    metrics.observe(&[
        timeline("connect_failed", r#""ECONNREFUSED""#, r#""peer""#),
        timeline("connect_failed", r#""ECONNREFUSED""#, r#""peer""#),
        timeline("timeout", r#""ETIMEDOUT""#, "null"),
        timeline("reset", r#""errno 4095""#, r#""local""#),
        timeline("active_close", "null", "null"),
    ]);
    metrics.publish(&Totals::default());
    let got = samples(&metrics);
    let series = |outcome: &str, error: &str, reset_by: &str| {
        got[&format!(
            "tracer_connections_ended_total{{outcome=\"{outcome}\",error=\"{error}\",reset_by=\"{reset_by}\"}}"
        )]
    };
    assert_eq!(series("connect_failed", "ECONNREFUSED", "peer"), 2.0);
    assert_eq!(series("timeout", "ETIMEDOUT", "none"), 1.0);
    assert_eq!(series("reset", "other", "local"), 1.0);
    assert_eq!(series("active_close", "none", "none"), 1.0);
    assert_eq!(series("passive_close", "none", "none"), 0.0);
}

/// A known state's label index is its kernel number; any unknown one, even a number the
/// kernel defines made unknown by hand, is 0 (`UNKNOWN`).
#[test]
fn states_index_by_their_kernel_number() {
    for raw in 1..=12u32 {
        let state = TcpState::from(raw);
        assert_eq!(state_index(state), raw as usize);
        assert_eq!(state_name(raw as usize), state.name());
        assert_eq!(state_index(TcpState::Unknown(raw)), 0);
    }
    assert_eq!(state_index(TcpState::from(13)), 0);
    assert_eq!(state_name(0), "UNKNOWN");
}
