//! The files in `deploy/` are checked against the binary: every query names only metrics the
//! tracer exports, the alert rules pass `promtool test rules`, the systemd unit passes
//! `systemd-analyze verify`, the DaemonSet and the unit give exactly the capabilities and
//! flags the binary needs, and the container image builds with podman.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::support;

/// What the tracer needs beyond an unprivileged process, as the deploy files grant it:
/// CAP_BPF + CAP_PERFMON to load and attach the program, CAP_SYS_PTRACE + CAP_DAC_READ_SEARCH
/// to read other users' `/proc/PID/fd` for socket owners. `the_deployed_capabilities_suffice`
/// (privileged.rs) runs the binary with exactly these.
pub const CAPABILITIES: [&str; 4] = ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"];

/// The DaemonSet's: the same plus SYS_RESOURCE, to lift the locked-memory limit that kernels
/// before 5.11 charge eBPF memory to (Kubernetes has no setting for a container's rlimits; the
/// systemd unit lifts it with `LimitMEMLOCK=infinity` instead).
pub const DAEMONSET_CAPABILITIES: [&str; 5] = [
    "BPF",
    "PERFMON",
    "SYS_PTRACE",
    "DAC_READ_SEARCH",
    "SYS_RESOURCE",
];

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The metric names a PromQL (or Grafana `label_values`) expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    // Strings, label matchers and ranges hold no metric names.
    let mut plain = String::new();
    let mut closer = None;
    for c in expr.chars() {
        match closer {
            Some(end) if c == end => {
                closer = None;
                plain.push(' ');
            }
            Some(_) => {}
            None => match c {
                '"' => closer = Some('"'),
                '\'' => closer = Some('\''),
                '{' => closer = Some('}'),
                '[' => closer = Some(']'),
                _ => plain.push(c),
            },
        }
    }
    let chars: Vec<char> = plain.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    // Identifiers inside `by (...)` and the like are label names, up to this depth's `)`.
    let mut skip_labels = false;
    while i < chars.len() {
        let c = chars[i];
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            if c == ')' {
                skip_labels = false;
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len()
            && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
        {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        // `$var` (Grafana), or the unit of a duration or number (`5m`, `1e9`).
        let variable = start > 0 && (chars[start - 1] == '$' || chars[start - 1].is_ascii_digit());
        let next = chars[i..].iter().find(|c| !c.is_whitespace());
        if matches!(
            word.as_str(),
            "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
        ) {
            skip_labels = next == Some(&'(');
            continue;
        }
        if word == "label_values" {
            // label_values(metric, label): only the metric.
            skip_labels = false;
            let args: String = chars[i..].iter().collect();
            let inner = args.trim_start().trim_start_matches('(');
            let metric = inner.split(',').next().unwrap_or("").trim();
            names.push(metric.to_owned());
            i += args.find(')').map_or(args.len(), |p| p + 1);
            continue;
        }
        // Operators, and aggregations (which may come before `by (...)` rather than `(`).
        let keyword = matches!(
            word.as_str(),
            "and"
                | "or"
                | "unless"
                | "offset"
                | "bool"
                | "inf"
                | "nan"
                | "Inf"
                | "NaN"
                | "sum"
                | "min"
                | "max"
                | "avg"
                | "group"
                | "stddev"
                | "stdvar"
                | "count"
                | "count_values"
                | "bottomk"
                | "topk"
                | "quantile"
                | "limitk"
                | "limit_ratio"
        );
        if skip_labels || variable || keyword || next == Some(&'(') {
            continue;
        }
        names.push(word);
    }
    names
}

/// What the dashboard and rules may query: the tracer's metrics, and Prometheus's own `up`.
fn queryable() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = tracer::metrics::exported_names().into_iter().collect();
    names.insert("up".to_owned());
    names
}

fn exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_query_parser_finds_metrics_and_only_them() {
    assert_eq!(
        metric_names(
            r#"sum by (instance, pid) (rate(tracer_events_lost_total{reason="x"}[5m])) > 0"#
        ),
        ["tracer_events_lost_total"]
    );
    assert_eq!(
        metric_names("a / on (pid) group_left(comm) b and c offset 5m"),
        ["a", "b", "c"]
    );
    assert_eq!(
        metric_names("label_values(tracer_build_info, instance)"),
        ["tracer_build_info"]
    );
    assert_eq!(
        metric_names("histogram_quantile(0.5, sum by (le) (rate(x_bucket[$__rate_interval])))"),
        ["x_bucket"]
    );
    assert_eq!(metric_names("prometheus"), ["prometheus"]);
}

#[test]
fn dashboard_queries_name_only_exported_metrics() {
    let dashboard: Value = serde_json::from_str(&read("grafana/dashboard.json")).unwrap();
    let mut found = Vec::new();
    exprs(&dashboard, &mut found);
    // The datasource variable's `query` is a plugin id, not PromQL.
    found.retain(|e| e != "prometheus");
    assert!(found.len() >= 15, "{found:?}");
    let known = queryable();
    let mut used = BTreeSet::new();
    for expr in &found {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in {expr:?}");
        for name in names {
            assert!(
                known.contains(&name),
                "{name} (in {expr:?}) is not exported: {known:?}"
            );
            used.insert(name);
        }
    }
    // The four views the dashboard is for.
    for name in [
        "tracer_stuck_sockets",
        "tracer_stuck_oldest_age_seconds",
        "tracer_transitions_total",
        "tracer_connections_ended_total",
        "tracer_events_lost_total",
    ] {
        assert!(used.contains(name), "the dashboard does not show {name}");
    }
}

fn alert_rules() -> Vec<(String, String, Option<String>)> {
    let rules: serde_norway::Value =
        serde_norway::from_str(&read("prometheus/alerts.yml")).unwrap();
    let mut out = Vec::new();
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            out.push((
                rule["alert"].as_str().expect("an alert name").to_owned(),
                rule["expr"].as_str().expect("an expr").to_owned(),
                rule["for"].as_str().map(str::to_owned),
            ));
        }
    }
    out
}

#[test]
fn alert_rules_name_only_exported_metrics() {
    let known = queryable();
    let rules = alert_rules();
    let names: Vec<&str> = rules.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "TracerCloseWaitStuck",
            "TracerCloseWaitGrowing",
            "TracerSocketsStuck",
            "TracerProcessNearFdLimit",
            "TracerLosingEvents",
            "TracerDown"
        ]
    );
    for (name, expr, _) in &rules {
        for metric in metric_names(expr) {
            assert!(known.contains(&metric), "{name}: {metric} is not exported");
        }
    }
}

/// `promtool test rules`: series that must fire each alert and series that must not.
#[test]
#[ignore = "needs promtool (Debian's prometheus, installed when missing as root)"]
fn alert_rules_pass_promtool() {
    let promtool = support::tool_from_debian("promtool", "prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = support::output(
            Command::new(&promtool)
                .args(args)
                .current_dir(deploy("prometheus")),
        );
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The `--metrics` address among a deploy file's flags; they must include `--quiet`.
fn metrics_addr(args: &[String]) -> std::net::SocketAddr {
    assert!(args.iter().any(|a| a == "--quiet"), "{args:?}");
    let at = args
        .iter()
        .position(|a| a == "--metrics")
        .expect("--metrics");
    args[at + 1].parse().expect("an IP:PORT")
}

fn unit_flags(unit: &str) -> Vec<String> {
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    let mut words = exec.split_whitespace().map(str::to_owned);
    assert_eq!(words.next().as_deref(), Some("/usr/local/bin/tracer"));
    words.collect()
}

fn daemonset() -> Vec<serde_norway::Value> {
    serde_norway::Deserializer::from_str(&read("kubernetes/daemonset.yaml"))
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn daemonset_flags(docs: &[serde_norway::Value]) -> Vec<String> {
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    ds["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

/// The unit's and the DaemonSet's flags, run by the real binary (on a free loopback port
/// instead of 9464) for 2 s: accepted, attached, metrics served.
#[test]
#[ignore = "needs root and BPF"]
fn deployed_flags_run_the_real_binary() {
    support::require_root();
    for flags in [
        unit_flags(&read("systemd/tracer.service")),
        daemonset_flags(&daemonset()),
    ] {
        let addr = metrics_addr(&flags);
        let flags: Vec<String> = flags
            .iter()
            .map(|f| {
                if *f == addr.to_string() {
                    "127.0.0.1:0".to_owned()
                } else {
                    f.clone()
                }
            })
            .collect();
        let out = support::output(
            Command::new(support::tracer_binary())
                .args(&flags)
                .args(["--duration", "2s"]),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{flags:?}: {stderr}");
        assert!(out.stdout.is_empty(), "--quiet prints nothing on stdout");
        assert!(
            stderr.contains("metrics on http://127.0.0.1:") && stderr.contains("attached"),
            "{flags:?}: {stderr}"
        );
    }
}

#[test]
fn systemd_unit_verifies_and_grants_what_the_binary_needs() {
    let unit = read("systemd/tracer.service");
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("no {key}= in the unit"))
            .to_owned()
    };
    assert!(metrics_addr(&unit_flags(&unit)).ip().is_loopback());
    let caps: Vec<String> = CAPABILITIES.iter().map(|c| format!("CAP_{c}")).collect();
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let granted: Vec<String> = value(key).split_whitespace().map(str::to_owned).collect();
        assert_eq!(granted, caps, "{key}");
    }
    for (key, want) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "read-only"),
        ("PrivateTmp", "yes"),
        ("RestartPreventExitStatus", "2 77"),
        // Kernels before 5.11 charge eBPF memory to it, and the unit grants no SYS_RESOURCE.
        ("LimitMEMLOCK", "infinity"),
    ] {
        assert_eq!(value(key), want, "{key}");
    }

    // systemd-analyze checks the executable exists: point it at this build's binary.
    let analyze = support::tool_from_debian("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tracer.service");
    std::fs::write(
        &copy,
        unit.replace(
            "/usr/local/bin/tracer",
            &support::tracer_binary().display().to_string(),
        ),
    )
    .unwrap();
    let out = support::output(
        Command::new(analyze)
            .args(["verify", "--man=no"])
            .arg(&copy),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify:\n{stderr}"
    );
}

#[test]
fn daemonset_grants_what_the_binary_needs() {
    let docs = daemonset();
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k}"))
    };
    let ds = kind("DaemonSet");
    let pod = &ds["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(
        spec["hostPID"].as_bool(),
        Some(true),
        "owners live in other pods' PID namespaces"
    );
    let [container] = spec["containers"].as_sequence().unwrap().as_slice() else {
        panic!("one container")
    };
    let addr = metrics_addr(&daemonset_flags(&docs));
    assert!(
        addr.ip().is_unspecified(),
        "reachable by Prometheus from other hosts"
    );
    let port = u64::from(addr.port());
    let ports = container["ports"].as_sequence().unwrap();
    assert_eq!(ports[0]["containerPort"].as_u64(), Some(port));
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"));
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    let service = kind("Service");
    assert_eq!(service["spec"]["ports"][0]["port"].as_u64(), Some(port));

    let security = &container["securityContext"];
    assert_eq!(security["privileged"].as_bool(), Some(false));
    assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(security["capabilities"]["drop"][0].as_str(), Some("ALL"));
    let added: Vec<&str> = security["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        added, DAEMONSET_CAPABILITIES,
        "exactly the capabilities the binary needs"
    );
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/sys/kernel/tracing"),
        "tracefs: mounting it in the pod would need CAP_SYS_ADMIN"
    );
    // Resources from the bench (docs/bench.md): about 13 MiB at rest besides the ring buffer,
    // which RSS counts twice (its pages are mapped twice), and, when stdout's reader stalls,
    // the whole output buffer sized from it (19 MiB for the default 4 MiB ring). The request
    // covers that worst case, the limit twice it.
    let mib = |v: &serde_norway::Value| {
        v.as_str()
            .and_then(|s| s.strip_suffix("Mi"))
            .and_then(|n| n.parse::<u64>().ok())
            .expect("a size in Mi")
    };
    let resources = &container["resources"];
    let ring = tracer_common::DEFAULT_RING_BUFFER_BYTES;
    let output = tracer::output::Buffer::default_for(ring).bytes as u64;
    let worst_mib = 13 + ((2 * u64::from(ring) + output) >> 20);
    assert!(
        mib(&resources["requests"]["memory"]) >= worst_mib,
        "{worst_mib} MiB"
    );
    assert!(mib(&resources["limits"]["memory"]) >= 2 * worst_mib);
    assert!(
        resources["limits"]["cpu"].is_null(),
        "a CPU limit throttles the tracer into losing events"
    );
}

/// The image builds with podman from a context `deploy/container/context.sh` lays out, with
/// no network (the base is `scratch`).
#[test]
#[ignore = "needs podman (Debian's, installed when missing as root)"]
fn container_image_builds_with_podman() {
    let podman = support::tool_from_debian("podman", "podman");
    let dir = tempfile::tempdir().unwrap();
    let out = support::output(
        Command::new(deploy("container/context.sh"))
            .arg(support::tracer_binary())
            .arg(dir.path()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("rootfs/usr/local/bin/tracer").is_file());
    let tag = format!("localhost/tracer-test:{}", std::process::id());
    let out = support::output(
        Command::new(&podman)
            .args([
                "build",
                "--network=none",
                "--pull=never",
                "-q",
                "-t",
                &tag,
                "-f",
            ])
            .arg(deploy("container/Containerfile"))
            .arg(dir.path()),
    );
    let built = out.status.success();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect = built.then(|| {
        support::output(Command::new(&podman).args([
            "image",
            "inspect",
            "--format",
            "{{json .Config}}",
            &tag,
        ]))
    });
    let _ = support::output(Command::new(&podman).args(["rmi", "-f", &tag]));
    assert!(built, "podman build:\n{log}");
    let inspect = inspect.unwrap();
    let config: Value = serde_json::from_slice(&inspect.stdout).expect("podman image inspect");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/tracer"])
    );
    assert_eq!(
        config["Cmd"],
        serde_json::json!(["--quiet", "--metrics", "0.0.0.0:9464"])
    );
    assert!(config["ExposedPorts"].get("9464/tcp").is_some(), "{config}");
}

/// What a test knows of the `nobody` holder, and the `close_wait` record the tracer made of its
/// socket.
struct Seen {
    holder_pid: u32,
    /// The holder's name, as `/proc/PID/comm` gives it.
    holder_comm: String,
    /// The holder's fd of the accepted connection.
    holder_fd: u64,
    record: Value,
}

/// The tracer did not attach: its exit status and stderr.
struct Refused {
    code: Option<i32>,
    stderr: String,
}

/// The `close_wait` record the tracer makes for a socket held by a `nobody` process, when the
/// tracer runs as root with only `caps` (`+bpf,+perfmon,...`) and a locked-memory limit of
/// `memlock` bytes (soft and hard; `None`: unlimited, as the systemd unit's
/// `LimitMEMLOCK=infinity` sets it before dropping the capabilities).
///
/// With `as_user` the tracer runs as `nobody` with `caps` as ambient capabilities instead of as
/// root.
fn owner_seen_with(
    caps: &str,
    memlock: Option<u64>,
    as_user: bool,
    elsewhere: bool,
) -> Result<Seen, Refused> {
    use std::{
        io::{BufRead, BufReader, Read as _},
        os::unix::process::CommandExt as _,
        process::Stdio,
        sync::mpsc,
        time::{Duration, Instant},
    };
    let holder_binary = support::public_copy(Path::new(env!("CARGO_BIN_EXE_holder")), 0o755);
    // Free now: fixed ports can meet other tests' ephemeral ports on a shared machine.
    let holder_port = support::dead_port("127.0.0.1:0").port();
    // The holder, and its client, in a network namespace of their own: the tracer, in this
    // one, reads that namespace's tables.
    let namespace = elsewhere.then(support::NetNs::enter);
    let mut holder = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(holder_binary)
        .arg("accept-one")
        .env("HOLDER_PORT", holder_port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the holder as nobody");
    drop(namespace);
    let (tx, rx) = mpsc::channel();
    let out = holder.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    assert_eq!(rx.recv_timeout(support::WAIT).unwrap(), "listening");
    let limit = memlock.unwrap_or(nix::libc::RLIM_INFINITY);
    let mut tracer = Command::new("setpriv");
    // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
    unsafe {
        tracer.pre_exec(move || {
            use nix::sys::resource::{setrlimit, Resource};
            match setrlimit(Resource::RLIMIT_MEMLOCK, limit, limit) {
                // Lifting it needs CAP_SYS_RESOURCE, which a container (this host's test
                // runner) may lack: it keeps its own limit then. Only kernels before 5.11
                // care, and the guests of `cargo xtask vm-test` have it.
                Err(nix::errno::Errno::EPERM) if memlock.is_none() => Ok(()),
                other => other.map_err(std::io::Error::from),
            }
        });
    }
    if as_user {
        tracer.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &format!("--inh-caps=-all,{caps}"),
            &format!("--ambient-caps=-all,{caps}"),
        ]);
    } else {
        tracer.arg("--inh-caps=-all");
    }
    let mut tracer = tracer
        .arg(format!("--bounding-set=-all,{caps}"))
        .arg(support::public_tracer())
        .args([
            "--json",
            "--no-transitions",
            "--close-wait-threshold",
            "300ms",
            "-p",
        ])
        .arg(holder_port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            // Ours, by PID: the holder waits in accept() and would outlive the test.
            let _ = holder.kill();
            let _ = holder.wait();
            panic!("start the tracer with {caps}: {e}")
        });
    let (records_tx, records) = mpsc::channel();
    let stdout = tracer.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = records_tx.send(line);
        }
    });
    let mut stderr = BufReader::new(tracer.stderr.take().unwrap());
    let mut said = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap_or(0) > 0 && !line.contains("attached") {
        said.push_str(&line);
        line.clear();
    }
    if !line.contains("attached") {
        let _ = stderr.read_to_string(&mut said);
        let code = tracer.wait().expect("the tracer's exit").code();
        // Ours, by PID; it still waits in accept().
        let _ = holder.kill();
        let _ = holder.wait();
        return Err(Refused { code, stderr: said });
    }
    let holder_ns = format!("/proc/{}/ns/net", holder.id());
    let client = std::thread::spawn(move || {
        if elsewhere {
            let ns = std::fs::File::open(holder_ns).expect("the holder's namespace");
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter it");
        }
        std::net::TcpStream::connect(("127.0.0.1", holder_port)).unwrap()
    })
    .join()
    .unwrap();
    let accepted = rx.recv_timeout(support::WAIT).unwrap();
    let holder_fd: u64 = accepted
        .strip_prefix("accepted ")
        .and_then(|fd| fd.parse().ok())
        .unwrap_or_else(|| panic!("the holder said {accepted:?}"));
    drop(client);
    let deadline = Instant::now() + support::WAIT;
    let record = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = records
            .recv_timeout(left.max(Duration::from_millis(1)))
            .expect("a close_wait record in time");
        let record: Value = serde_json::from_str(&line).unwrap();
        if record["type"] == "close_wait" {
            break record;
        }
    };
    let holder_pid = holder.id();
    let holder_comm = std::fs::read_to_string(format!("/proc/{holder_pid}/comm"))
        .expect("the holder's comm")
        .trim_end()
        .to_owned();
    // Ours, by PID: the tracer and the holder.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(tracer.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = tracer.wait();
    drop(holder.stdin.take());
    let _ = holder.wait();
    Ok(Seen {
        holder_pid,
        holder_comm,
        holder_fd,
        record,
    })
}

/// The capabilities the deploy files grant are enough to load, attach and report a CLOSE_WAIT
/// socket held by a `nobody` process with its owner (pid, comm and fd of the holder): the
/// systemd unit's four with its `LimitMEMLOCK=infinity`, as root and as a user other than root
/// (ambient capabilities), also for a holder in another network namespace (a container's,
/// which the four cannot enter: its tables are read from `/proc/PID/net`), and the
/// DaemonSet's five (it adds SYS_RESOURCE, as Kubernetes cannot
/// lift the limit) under a 64 KiB limit. With the four and
/// that limit, kernels before 5.11 (which charge eBPF memory to it) refuse with an error naming
/// the fix and exit code 77; later kernels attach.
#[test]
#[ignore = "needs root and BPF"]
fn the_deployed_capabilities_suffice() {
    support::require_root();
    let plus = |caps: &[&str]| {
        caps.iter()
            .map(|c| format!("+{}", c.to_lowercase()))
            .collect::<Vec<_>>()
            .join(",")
    };
    let unit = plus(&CAPABILITIES);
    let daemonset = plus(&DAEMONSET_CAPABILITIES);
    let small = Some(64 << 10);
    // The unit, the DaemonSet, and a user other than root with the unit's capabilities (as
    // the README says it works).
    for (caps, memlock, as_user, elsewhere) in [
        (&unit, None, false, false),
        (&daemonset, small, false, false),
        (&unit, None, true, false),
        (&unit, None, false, true),
        (&daemonset, small, false, true),
    ] {
        let seen = owner_seen_with(caps, memlock, as_user, elsewhere).unwrap_or_else(|refused| {
            panic!(
                "the tracer did not attach with {caps}, memlock {memlock:?}, as a user: {as_user}, holder elsewhere: {elsewhere} (exit {:?}):\n{}",
                refused.code, refused.stderr
            )
        });
        let record = &seen.record;
        assert_eq!(record["pid"], seen.holder_pid, "{caps}: {record}");
        assert_eq!(
            record["comm"],
            seen.holder_comm.as_str(),
            "{caps}: {record}"
        );
        assert_eq!(record["fd"], seen.holder_fd, "{caps}: {record}");
        assert_eq!(
            record["holders"],
            serde_json::json!([{"pid": seen.holder_pid, "comm": seen.holder_comm, "fd": seen.holder_fd}]),
            "{caps}: {record}"
        );
        // Its stack walked and named through the files it maps (`map_files` needs
        // CAP_SYS_ADMIN: read through /proc/PID/root instead).
        let thread = &record["diagnosis"]["threads"][0];
        let named = thread["frames"].as_array().is_some_and(|frames| {
            frames.iter().any(|f| {
                f["function"]
                    .as_str()
                    .is_some_and(|n| n.contains("holder::main"))
            })
        });
        assert!(named, "{caps}: {thread}");
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    match owner_seen_with(&unit, small, false, false) {
        Ok(_) => assert!(
            version >= (5, 11),
            "{release}: charges memlock, yet the tracer attached under 64 KiB without SYS_RESOURCE"
        ),
        Err(refused) => {
            assert!(
                version < (5, 11),
                "{release} charges the memory cgroup, not memlock, yet the tracer refused:\n{}",
                refused.stderr
            );
            assert_eq!(refused.code, Some(77), "{}", refused.stderr);
            assert!(
                refused.stderr.contains("RLIMIT_MEMLOCK")
                    && refused.stderr.contains("64 KiB")
                    && refused.stderr.contains("LimitMEMLOCK=infinity")
                    && refused.stderr.contains("CAP_SYS_RESOURCE"),
                "{}",
                refused.stderr
            );
        }
    }
}
