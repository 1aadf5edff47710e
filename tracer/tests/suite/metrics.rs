//! `--metrics` end to end, as root: a real Prometheus (Debian's, installed when missing)
//! scrapes the tracer every second while a helper process leaks 3 sockets in CLOSE_WAIT; its
//! HTTP API must show the gauge reach 3, the age grow, the CLOSE_WAIT alert of
//! `deploy/prometheus/alerts.yml` fire, and the gauge return to 0. The endpoint is then
//! flooded with hostile clients and must stay up and bounded. Every process started here is
//! stopped by its PID; every wait is bounded.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use crate::support::{self, HelperProcess as Helper, Tracer, WAIT};
use serde_json::Value;
use tracer::record::Record;

/// A free loopback address: fixed ports can meet other tests' ephemeral ports on a shared
/// machine, so each test picks free ones when it starts.
fn free_addr() -> String {
    support::dead_port("127.0.0.1:0").to_string()
}

/// A plain HTTP/1.0 request (no chunked answer, closed after it); the status and the body.
fn http_get(addr: &str, target: &str, headers: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {target} HTTP/1.0\r\nHost: {addr}\r\n{headers}\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server started by this test, stopped by PID when dropped.
struct Prometheus {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str, rule_files: &[&Path]) -> Prometheus {
        let binary = support::tool_from_debian("prometheus", "prometheus");
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let rules: Vec<String> = rule_files
            .iter()
            .map(|p| format!("  - {}\n", p.display()))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n{}\
             scrape_configs:\n  - job_name: tracer\n    static_configs:\n      - targets: ['{target}']\n",
            rules.concat()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus { child, addr, dir };
        prometheus.wait_for("Prometheus to be ready", || {
            matches!(http_get(&prometheus.addr, "/-/ready", ""), Ok((200, _))).then_some(())
        });
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(&self.addr, path, "").expect("query prometheus");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("prometheus answers JSON")
    }

    /// The value of an instant query that returns one sample, or `None` for no sample.
    fn value(&self, query: &str) -> Option<f64> {
        let answer = self.api(&format!("/api/v1/query?query={}", url_encode(query)));
        let result = answer["data"]["result"].as_array().expect("a vector");
        assert!(result.len() <= 1, "{query}: {answer}");
        result.first().map(|s| {
            s["value"][1]
                .as_str()
                .expect("a value")
                .parse()
                .expect("a number")
        })
    }

    /// Polls until `check` gives an answer; panics with Prometheus's log after 60 s.
    fn wait_for<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + 2 * WAIT;
        loop {
            if let Some(found) = check() {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; prometheus log:\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The CLOSE_WAIT rule of `deploy/prometheus/alerts.yml` with test thresholds: 2 s instead
/// of 600 s, firing at once. Everything else (expression, labels) is the shipped rule's.
fn short_close_wait_rule(dir: &Path) -> std::path::PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml");
    let mut rules: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&shipped).unwrap()).unwrap();
    let group = &mut rules["groups"][0];
    group["name"] = "tracer-test".into();
    let list = group["rules"].as_sequence_mut().unwrap();
    list.retain(|r| r["alert"] == "TracerCloseWaitStuck");
    let rule = &mut list[0];
    let expr = rule["expr"].as_str().unwrap().to_owned();
    assert!(
        expr.ends_with("> 600"),
        "the shipped threshold moved: {expr}"
    );
    rule["expr"] = expr.replace("> 600", "> 2").into();
    rule["for"] = "1s".into();
    let path = dir.join("short-alerts.yml");
    std::fs::write(&path, serde_norway::to_string(&rules).unwrap()).unwrap();
    path
}

#[test]
#[ignore = "needs root and BPF"]
fn prometheus_sees_a_close_wait_leak_and_its_alert() {
    let mut helper = Helper::holder("leak", &[]);
    let port: u16 = helper
        .recv()
        .strip_prefix("ready ")
        .unwrap()
        .parse()
        .unwrap();
    let pid = helper.pid().to_string();
    let tracer_metrics = free_addr();
    // A port nothing listens on, for one refused connect.
    let closed: SocketAddr = free_addr().parse().unwrap();
    let tracer = Tracer::start(&[
        "--metrics",
        &tracer_metrics,
        "--close-wait-threshold",
        "1s",
        "--timelines",
        "-p",
        &format!("{port},{}", closed.port()),
    ]);
    let rules_dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml");
    let short = short_close_wait_rule(rules_dir.path());
    let prometheus = Prometheus::start(&tracer_metrics, &[&shipped, &short]);
    prometheus.wait_for("the first scrape of the tracer", || {
        (prometheus.value("up{job=\"tracer\"}") == Some(1.0)).then_some(())
    });

    // The leak: 3 clients connect and close; the helper keeps its ends.
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let clients: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(server).unwrap())
        .collect();
    assert_eq!(helper.recv(), "accepted");
    drop(clients);

    let stuck =
        format!("sum(tracer_stuck_sockets{{state=\"CLOSE_WAIT\",pid=\"{pid}\"}}) or vector(0)");
    prometheus.wait_for("3 stuck sockets of the helper in Prometheus", || {
        (prometheus.value(&stuck) == Some(3.0)).then_some(())
    });
    let age = format!("tracer_stuck_oldest_age_seconds{{state=\"CLOSE_WAIT\",pid=\"{pid}\"}}");
    let first = prometheus.value(&age).expect("an age");
    let later = prometheus.wait_for("the age to grow", || {
        prometheus.value(&age).filter(|a| *a >= first + 2.0)
    });
    assert!(later > first);

    // The shipped rule, with a 2 s threshold, fires for the helper.
    let alert = prometheus.wait_for("TracerCloseWaitStuck to fire", || {
        let alerts = prometheus.api("/api/v1/alerts");
        alerts["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| {
                a["labels"]["alertname"] == "TracerCloseWaitStuck"
                    && a["labels"]["pid"] == pid.as_str()
                    && a["state"] == "firing"
            })
            .cloned()
    });
    assert_eq!(alert["labels"]["severity"], "warning", "{alert}");
    // The shipped file loaded too, and its 10-minute rule is not firing after seconds.
    let rules = prometheus.api("/api/v1/rules");
    let groups = rules["data"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{rules}");
    let shipped_group = groups.iter().find(|g| g["name"] == "tracer").unwrap();
    assert_eq!(shipped_group["rules"].as_array().unwrap().len(), 6);
    assert!(
        shipped_group["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["state"] == "inactive"),
        "{shipped_group}"
    );

    // The helper closes them: back to 0.
    helper.send("close");
    assert_eq!(helper.recv(), "closed");
    prometheus.wait_for("the stuck sockets to return to 0", || {
        (prometheus.value(&stuck) == Some(0.0)).then_some(())
    });

    // A refused connect is counted with its errno and the side that sent the RST.
    let refused = TcpStream::connect(closed).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    // The tracer's own numbers agree with its JSON stream.
    tracer.wait_for(
        "3 resolutions and the refused connect's timeline",
        |records| {
            records.iter().any(
            |r| matches!(r, Record::Timeline(t) if t.rport == closed.port() && t.error.is_some()),
        ).then_some(())?;
            (records
                .iter()
                .filter(|r| matches!(r, Record::CloseWaitResolved(_)))
                .count()
                == 3)
                .then_some(())
        },
    );
    thread::sleep(Duration::from_millis(500));
    let (_, text) = http_get(&tracer_metrics, "/metrics", "").unwrap();
    let records = tracer.records();
    let sample = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };
    let count = |f: &dyn Fn(&Record) -> bool| records.iter().filter(|r| f(r)).count() as f64;
    assert_eq!(
        sample("tracer_transitions_total{"),
        count(&|r| matches!(r, Record::Transition(_))),
        "{text}"
    );
    assert_eq!(
        sample("tracer_stuck_reports_total{state=\"CLOSE_WAIT\"}"),
        3.0
    );
    assert_eq!(
        sample("tracer_connections_ended_total{"),
        count(&|r| matches!(r, Record::Timeline(_)))
    );
    assert_eq!(
        sample(
            "tracer_connections_ended_total{outcome=\"connect_failed\",error=\"ECONNREFUSED\",reset_by=\"peer\"}"
        ),
        1.0,
        "{text}"
    );
    let left = count(&|r| {
        matches!(r, Record::Transition(t)
            if t.old_state == tracer::event::TcpState::CloseWait && t.duration_ns.is_some())
    });
    assert_eq!(left, 3.0, "the helper's 3 sockets left CLOSE_WAIT");
    assert_eq!(sample("tracer_close_wait_duration_seconds_count "), left);
    assert_eq!(sample("tracer_events_lost_total{"), 0.0);
    helper.send("exit");
    helper.wait();
    drop(prometheus);
    let (_, summary) = tracer.stop();
    assert_eq!(summary.close_wait_alerts, 3);
}

/// Open fds of a process.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
#[ignore = "needs root and BPF"]
fn the_endpoint_stays_up_and_bounded_under_hostile_clients() {
    let hostile = free_addr();
    let traced = support::dead_port("127.0.0.1:0");
    let tracer = Tracer::start(&["--metrics", &hostile, "-p", &traced.port().to_string()]);
    let scrape_ok = || matches!(http_get(&hostile, "/metrics", ""), Ok((200, b)) if b.contains("tracer_events_total"));
    assert!(scrape_ok());
    let fds_before = fd_count(tracer.pid());
    // Half a second into a burst of clients, the tracer's fds have grown by at most the
    // endpoint's 32 connection slots (and a margin of 2).
    let assert_fds_bounded = || {
        thread::sleep(Duration::from_millis(500));
        let during = fd_count(tracer.pid());
        assert!(
            during <= fds_before + 32 + 2,
            "fds {fds_before} -> {during}"
        );
    };

    // Unknown paths and methods.
    assert_eq!(http_get(&hostile, "/../../etc/passwd", "").unwrap().0, 404);
    assert_eq!(http_get(&hostile, "/metricsx", "").unwrap().0, 404);
    assert_eq!(http_get(&hostile, "/healthz", "").unwrap().0, 200);
    let mut post = TcpStream::connect(&hostile).unwrap();
    post.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        post,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    )
    .unwrap();
    let mut answer = String::new();
    post.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");

    // A 1 MiB header is refused without being read whole.
    let huge = format!("X-Junk: {}\r\n", "a".repeat(1 << 20));
    match http_get(&hostile, "/metrics", &huge) {
        Ok((status, _)) => assert_eq!(status, 431),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{e}"
        ),
    }

    // Slow clients: 40 connections that send half a request head and stall. They hold at
    // most 32 slots, and are closed by the server after the 5 s head timeout.
    let mut slow: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(&hostile).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: slow\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
            s
        })
        .collect();
    assert_fds_bounded();
    let started = Instant::now();
    for s in &mut slow {
        let mut buf = [0u8; 256];
        // Closed (EOF or a 408) by the server, well before our own 15 s timeout.
        let _ = s.read(&mut buf);
    }
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "slow clients were not cut off"
    );
    drop(slow);

    // Many connections at once: those beyond the cap are closed at once; fds stay bounded.
    let many: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(&hostile).ok())
        .collect();
    assert_fds_bounded();
    drop(many);

    // Still serving, and still tracing.
    let deadline = Instant::now() + WAIT;
    while !scrape_ok() {
        assert!(Instant::now() < deadline, "the endpoint did not recover");
        thread::sleep(Duration::from_millis(200));
    }
    let listener = std::net::TcpListener::bind(traced).unwrap();
    let _client = TcpStream::connect(traced).unwrap();
    tracer.wait_for("a transition after the flood", |records| {
        records
            .iter()
            .any(|r| matches!(r, Record::Transition(t) if t.lport == traced.port() || t.rport == traced.port()))
            .then_some(())
    });
    drop(listener);
    let stderr = tracer.stderr();
    let (_, summary) = tracer.stop();
    assert_eq!(summary.lost_ringbuf, 0, "{stderr}");
}
