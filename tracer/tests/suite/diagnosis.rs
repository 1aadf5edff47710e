//! Issue 14, "why is it stuck": the `diagnosis` of a CLOSE_WAIT report, end to end. Each test
//! runs real processes (the `why-server` helper, built with debug information, or Python) that
//! hold a socket in CLOSE_WAIT for a reason the report must name: a worker deadlocked on a
//! mutex, a worker waiting on its database, an fd leak running into `RLIMIT_NOFILE`, an
//! interpreter's threads.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use tracer::{
    diagnosis::{Diagnosis, ThreadDiagnosis},
    event::TcpState,
    record::{CloseWaitRecord, Record},
};

use crate::support::{self, NetNs, Tracer, WhyServer, WAIT};

/// The first CLOSE_WAIT report on `port` with a diagnosis that `pick` accepts.
fn report(
    tracer: &Tracer,
    port: u16,
    mut pick: impl FnMut(&CloseWaitRecord, &Diagnosis) -> bool,
) -> (CloseWaitRecord, Diagnosis) {
    tracer.wait_for("a CLOSE_WAIT report with its diagnosis", |records| {
        records.iter().find_map(|r| match r {
            Record::CloseWait(r) if r.lport == port => {
                let d = r.diagnosis.as_ref()?;
                pick(r, d).then(|| (r.as_ref().clone(), d.clone()))
            }
            _ => None,
        })
    })
}

/// A tracer of the CLOSE_WAIT reports on `port` and their diagnoses (no transitions), with
/// `--close-wait-threshold THRESHOLD` and the `extra` arguments.
fn reporting(port: u16, threshold: &str, extra: &[&str]) -> Tracer {
    let port = port.to_string();
    let mut args = vec![
        "-p",
        &port,
        "--no-transitions",
        "--close-wait-threshold",
        threshold,
    ];
    args.extend_from_slice(extra);
    Tracer::start(&args)
}

/// Whether an ELF file carries DWARF debug information.
fn has_debug_info(path: &str) -> bool {
    use object::Object as _;
    let data = std::fs::read(path).unwrap();
    object::File::parse(data.as_slice())
        .unwrap()
        .section_by_name(".debug_info")
        .is_some()
}

fn thread<'a>(d: &'a Diagnosis, name: &str) -> &'a ThreadDiagnosis {
    d.threads
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no thread {name} in {d:#?}"))
}

/// (a) A worker thread deadlocks on a mutex while holding a connection its client closed: the
/// report names the process, says the thread waits on a futex, and its symbolized stack names
/// the locking function (`lock_accounts`, with its file and line).
#[test]
#[ignore = "needs root and BPF"]
fn diagnosis_names_the_function_a_deadlocked_thread_waits_in() {
    let _ns = NetNs::enter();
    let server = WhyServer::start(&["deadlock"]);
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export.ndjson");
    let tracer = reporting(
        server.port,
        "300ms",
        &["--export", export.to_str().unwrap()],
    );
    let mut client = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let mut hello = [0u8; 5];
    client.read_exact(&mut hello).unwrap();
    drop(client);

    let (alert, d) = report(&tracer, server.port, |_, d| !d.threads.is_empty());
    assert_eq!((alert.pid, d.pid), (Some(server.pid()), server.pid()));
    assert_eq!(d.threads_total, Some(2), "{d:#?}");
    assert_eq!(d.close_wait_held, Some(1));
    assert!(d.fds_open.is_some() && d.fds_limit.is_some(), "{d:#?}");
    // The lock wait is listed before the main thread's read of its stdin (a pipe).
    assert_eq!(d.threads[0].name, "worker-1", "{d:#?}");
    let worker = thread(&d, "worker-1");
    assert_eq!(worker.blocked_in, "futex wait", "{worker:#?}");
    assert_eq!(worker.syscall.as_deref(), Some("futex"));
    let locking = worker
        .frames
        .iter()
        .find(|f| f.function.as_deref() == Some("why_server::lock_accounts"))
        .unwrap_or_else(|| panic!("no lock_accounts frame: {worker:#?}"));
    // File and line where the helper has debug information (`cargo xtask vm-test` strips it
    // from the binaries it puts in its guests).
    if has_debug_info(env!("CARGO_BIN_EXE_why-server")) {
        assert!(
            locking
                .file
                .as_deref()
                .is_some_and(|f| f.ends_with("why_server.rs"))
                && locking.line.is_some(),
            "{locking:#?}"
        );
    }
    assert!(
        d.thread_groups
            .iter()
            .any(|g| g.blocked_in == "futex wait" && g.count == 1),
        "{d:#?}"
    );
    let (_, summary) = tracer.stop();
    assert_eq!(summary.close_wait_alerts, 1);
    // `tracer analyze` prints it again from the export, under the report.
    let out = support::output(support::tracer_command().arg("analyze").arg(&export));
    let text = String::from_utf8_lossy(&out.stdout);
    let thread_line = format!(
        "thread {} (worker-1) blocked in futex wait at why_server::lock_accounts ",
        worker.tid
    );
    assert!(text.contains(&thread_line), "{text}");
}

/// (b) A worker blocked in a read from its "database" while holding a connection its client
/// closed: the report resolves the fd it reads to that connection's 4-tuple and state.
#[test]
#[ignore = "needs root and BPF"]
fn diagnosis_resolves_the_fd_a_thread_reads_to_its_socket() {
    let _ns = NetNs::enter();
    let database = TcpListener::bind("127.0.0.1:0").unwrap();
    let db_port = database.local_addr().unwrap().port();
    let server = WhyServer::start(&["db-read", &db_port.to_string()]);
    let tracer = reporting(server.port, "300ms", &[]);
    let client = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    // The worker has connected to the database (and reads from it) once it is accepted.
    let (_db_conn, worker_end) = database.accept().unwrap();
    drop(client);

    let (_, d) = report(&tracer, server.port, |_, d| {
        d.threads
            .iter()
            .any(|t| t.name == "worker-1" && t.fd_socket.is_some())
    });
    let worker = thread(&d, "worker-1");
    assert_reads_the_database(worker, worker_end, db_port);
    // std's TcpStream::read is recv(2), which Linux implements as recvfrom.
    assert_eq!(worker.blocked_in, "recvfrom()", "{worker:#?}");
    assert!(
        worker.fd.is_some() && !worker.on_stuck_socket,
        "{worker:#?}"
    );
    // Blocked on a socket: listed before the main thread, which waits on stdin (a pipe).
    assert_eq!(d.threads[0].name, "worker-1", "{d:#?}");
    let main = thread(&d, "why-server");
    assert_eq!(
        (main.blocked_in.as_str(), main.fd),
        ("read()", Some(0)),
        "{main:#?}"
    );
    assert!(
        main.fd_target
            .as_deref()
            .is_some_and(|t| t.starts_with("pipe:[")),
        "{main:#?}"
    );
    tracer.stop();
}

/// The socket `worker` is blocked on is named: its end (`worker_end`) of an ESTABLISHED
/// connection to the database on loopback port `db_port`.
fn assert_reads_the_database(worker: &ThreadDiagnosis, worker_end: SocketAddr, db_port: u16) {
    let socket = worker
        .fd_socket
        .as_ref()
        .unwrap_or_else(|| panic!("the read socket is not named: {worker:#?}"));
    assert_eq!(
        (
            socket.laddr,
            socket.lport,
            socket.raddr,
            socket.rport,
            socket.state
        ),
        (
            worker_end.ip(),
            worker_end.port(),
            "127.0.0.1".parse().unwrap(),
            db_port,
            TcpState::Established
        ),
        "{worker:#?}"
    );
}

/// (b') As (b), with the server, its database and its client in a namespace of their own,
/// not the tracer's: the socket the worker reads is asked of the kernel (`sock_diag`) in the
/// holder's namespace, and named with its 4-tuple and state.
#[test]
#[ignore = "needs root and BPF"]
fn diagnosis_resolves_a_socket_in_the_holders_namespace() {
    let _ns = NetNs::enter();
    let inner = support::field::Netns::new();
    let database = inner.run(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let db_port = database.local_addr().unwrap().port();
    let server = inner.run(|| WhyServer::start(&["db-read", &db_port.to_string()]));
    let tracer = reporting(server.port, "300ms", &[]);
    let client = inner.run(|| TcpStream::connect(("127.0.0.1", server.port)).unwrap());
    let (_db_conn, worker_end) = database.accept().unwrap();
    drop(client);

    let (alert, d) = report(&tracer, server.port, |_, d| {
        d.threads
            .iter()
            .any(|t| t.name == "worker-1" && t.fd.is_some())
    });
    assert_eq!(alert.netns, Some(inner.inode()), "{alert:#?}");
    let worker = thread(&d, "worker-1");
    assert_reads_the_database(worker, worker_end, db_port);
    assert_eq!(worker.fd_target, None, "{worker:#?}");
    tracer.stop();
    drop(server);
}

/// (c) A process with `RLIMIT_NOFILE` 128 that leaks one CLOSE_WAIT socket every 100 ms: the
/// reports forecast when it runs out of fds, within 30% of when its `accept()` then really
/// fails with EMFILE.
#[test]
#[ignore = "needs root and BPF"]
fn diagnosis_forecasts_fd_exhaustion() {
    let _ns = NetNs::enter();
    let server = WhyServer::start(&["leak", "128"]);
    let tracer = reporting(server.port, "200ms", &[]);
    let deadline = Instant::now() + WAIT;
    let emfile_ns = loop {
        assert!(Instant::now() < deadline, "the helper never ran out of fds");
        let client = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        drop(client);
        if let Some(line) = server.line(Duration::from_millis(100)) {
            let ns: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("the helper printed {line:?}"));
            break ns;
        }
    };
    // The first forecast made from at least three seconds of history.
    let (first, _) = report(&tracer, server.port, |_, _| true);
    let (alert, d) = report(&tracer, server.port, |r, d| {
        d.fd_limit_in_s.is_some() && r.ts_ns >= first.ts_ns + 3_000_000_000
    });
    let forecast = d.fd_limit_in_s.unwrap();
    let real = (emfile_ns.saturating_sub(alert.ts_ns)) as f64 / 1e9;
    assert!(
        (forecast - real).abs() <= 0.3 * real,
        "forecast {forecast:.2} s, real {real:.2} s: {d:#?}"
    );
    assert_eq!(d.fds_limit, Some(128));
    let rate = d.close_wait_per_minute.unwrap();
    // One a 100 ms, less the time each connection takes: at most 600 a minute.
    assert!((300.0..=630.0).contains(&rate), "{rate}");
    // Dropped, not stopped: a hundred reports with their diagnoses take an emulated guest
    // longer to parse than `stop` waits for the summary.
    drop(tracer);
}

/// (e) A Python thread-per-connection server whose handler threads wait on a lock after their
/// clients hang up: the report still groups the threads by what they block in, and says the
/// frames are the interpreter's.
#[test]
#[ignore = "needs root and BPF"]
fn diagnosis_of_an_interpreter_degrades_to_thread_states_and_its_frames() {
    const SERVER: &str = r#"
import socket, sys, threading
held = threading.Lock()
held.acquire()
kept = []
def handle(conn):
    conn.recv(100)      # the client hangs up: b""
    with held:          # never: the main thread holds it
        conn.close()
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    kept.append(conn)
    threading.Thread(target=handle, args=(conn,), name="handler").start()
"#;
    let _ns = NetNs::enter();
    let python = support::tool_from_debian("python3", "python3");
    let mut child = std::process::Command::new(python)
        .args(["-c", SERVER])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start python3");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let port: u16 = line.trim().parse().unwrap();
    let pid = child.id();
    let tracer = reporting(port, "300ms", &[]);
    for _ in 0..3 {
        drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
    }
    let (alert, d) = report(&tracer, port, |_, d| d.close_wait_held == Some(3));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(alert.pid, Some(pid));
    assert_eq!(d.runtime.as_deref(), Some("python"), "{d:#?}");
    assert_eq!(d.threads_total, Some(4), "{d:#?}");
    let groups: Vec<(&str, u64)> = d
        .thread_groups
        .iter()
        .map(|g| (g.blocked_in.as_str(), g.count))
        .collect();
    // Python's socket.accept() is accept4(2).
    assert_eq!(groups, [("futex wait", 3), ("accept4()", 1)], "{d:#?}");
    // The frames are the interpreter's: its program or libpython.
    assert!(
        d.threads
            .iter()
            .flat_map(|t| &t.frames)
            .any(|f| f.module.as_deref().is_some_and(|m| m.contains("python"))),
        "{d:#?}"
    );
    tracer.stop();
}

/// (d) A socket stuck in CLOSE_WAIT before the tracer started: its age comes from the kernel
/// (`tcpi_last_ack_recv`, the ACK the peer's FIN carried) and is within a second of the truth,
/// and never more than it; the time since the peer's last data (sent 2 s before its bare FIN) is
/// reported, longer, beside it; 10 bytes and the FIN wait unread.
#[test]
#[ignore = "needs root and BPF"]
fn a_socket_stuck_before_the_start_ages_from_the_kernel() {
    let _ns = NetNs::enter();
    let (listener, addr) = support::listen("127.0.0.1:0");
    let port = addr.port();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    client.write_all(&[7u8; 10]).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    // A bare FIN: no data with it.
    drop(client);
    let fin_ns = tracer::units::monotonic_ns();
    std::thread::sleep(Duration::from_secs(3));

    let tracer = Tracer::start(&["-p", &port.to_string(), "--no-transitions"]);
    let alert = tracer.wait_for("the report of the socket found at start", |records| {
        records.iter().find_map(|r| match r {
            Record::CloseWait(r) if r.lport == port => Some(r.clone()),
            _ => None,
        })
    });
    let (_, summary) = tracer.stop();
    drop(server);
    assert!(alert.age_at_least, "{alert:?}");
    assert_eq!(alert.skaddr, None, "found in the tables, not seen arriving");
    let truth_ms = (alert.ts_ns - fin_ns) / 1_000_000;
    assert!(
        alert.age_ms <= truth_ms && truth_ms - alert.age_ms < 1000,
        "age {} ms, truly {truth_ms} ms",
        alert.age_ms
    );
    let info = alert.tcp_info.clone().expect("tcp_info");
    assert!(
        info.last_ack_recv_ms.abs_diff(truth_ms) < 1000,
        "{info:?}, truly {truth_ms} ms"
    );
    assert!(
        info.last_data_recv_ms >= truth_ms + 1500,
        "the data came 2 s before the FIN: {info:?}, FIN {truth_ms} ms ago"
    );
    assert_eq!((alert.recv_q, alert.fin_read), (Some(10), Some(false)));
    assert_eq!(alert.pid, Some(std::process::id()));
    assert_eq!(summary.close_wait_alerts, 1);
}

/// Issue 14 item 5, `--track-reads`: a server thread reads from a connection, then waits on a
/// channel (a futex); the client closes. The report's diagnosis names that thread as the last
/// reader, with what it read, how long ago, and that it now waits in futex wait. On a kernel
/// without `sock:sock_recv_length` (5.10 in `cargo xtask vm-test`) the tracer says so in one
/// line at start and `last_read` is null.
#[test]
#[ignore = "needs root and BPF"]
fn track_reads_names_the_thread_that_last_read_the_stuck_socket() {
    let _ns = NetNs::enter();
    let (listener, addr) = support::listen("127.0.0.1:0");
    let port = addr.port();
    let tracer = reporting(port, "1s", &["--track-reads"]);
    let has_tracepoint = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|t| {
            std::path::Path::new(t)
                .join("events/sock/sock_recv_length")
                .is_dir()
        });
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    let (read_done, read) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let reader = std::thread::Builder::new()
        .name("reader-1".into())
        .spawn(move || {
            let mut server = server;
            let mut hello = [0u8; 5];
            server.read_exact(&mut hello).unwrap();
            read_done.send(nix::unistd::gettid().as_raw()).unwrap();
            // Holds the socket, blocked in a futex wait, until the test is done.
            let _ = released.recv_timeout(WAIT);
            drop(server);
        })
        .unwrap();
    client.write_all(b"hello").unwrap();
    let tid = u32::try_from(read.recv_timeout(WAIT).unwrap()).unwrap();
    let read_ns = tracer::units::monotonic_ns();
    drop(client);

    let (alert, d) = report(&tracer, port, |_, _| true);
    release.send(()).unwrap();
    reader.join().unwrap();
    let stderr = tracer.stderr();
    let (_, summary) = tracer.stop();
    assert_eq!(summary.close_wait_alerts, 1);
    if !has_tracepoint {
        assert!(
            stderr.contains("--track-reads: not tracking reads: sock:sock_recv_length: this kernel does not have the tracepoint"),
            "{stderr}"
        );
        assert_eq!(d.last_read, None);
        return;
    }
    assert!(!stderr.contains("not tracking reads"), "{stderr}");
    let last = d
        .last_read
        .clone()
        .unwrap_or_else(|| panic!("no last_read: {d:#?}"));
    assert_eq!(
        (last.pid, last.tid, last.thread.as_str(), last.bytes),
        (std::process::id(), tid, "reader-1", 5),
        "{last:?}"
    );
    let since_read_ms = (alert.ts_ns - read_ns) / 1_000_000;
    assert!(
        last.age_ms >= 1000 && last.age_ms.abs_diff(since_read_ms) < 1000,
        "{last:?}: read {since_read_ms} ms before the report"
    );
    assert_eq!(last.now_blocked_in.as_deref(), Some("futex wait"), "{d:#?}");
}
