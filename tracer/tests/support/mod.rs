//! Harness for the privileged end-to-end tests: run the real tracer binary, collect its NDJSON
//! records, and drive real sockets on loopback. Every wait is bounded.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use tracer::record::{Record, Summary, TransitionRecord};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Fails unless running as root: privileged tests must never pass vacuously.
pub fn require_root() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "privileged tests need root and BPF (euid is {euid}); run them with `cargo xtask test` as root"
    );
}

/// A running tracer with `--json`, whose stdout is parsed as it arrives.
pub struct Tracer {
    child: Child,
    records: Arc<Mutex<Vec<Record>>>,
    stderr: Arc<Mutex<String>>,
}

impl Tracer {
    /// Starts the tracer and waits until it has attached to the tracepoint.
    pub fn start(args: &[&str]) -> Tracer {
        require_root();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tracer"))
            .arg("--json")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the tracer binary");
        let records = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("piped stdout");
        let sink = Arc::clone(&records);
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let record: Record = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("tracer printed a line that is not a record: {e}: {line}")
                });
                sink.lock().unwrap().push(record);
            }
        });
        let mut err = BufReader::new(child.stderr.take().expect("piped stderr"));
        let log = Arc::clone(&stderr);
        let (attached_tx, attached_rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            while err.read_line(&mut line).unwrap_or(0) > 0 {
                if line.contains("attached to sock:inet_sock_set_state") {
                    let _ = attached_tx.send(());
                }
                log.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let mut tracer = Tracer {
            child,
            records,
            stderr,
        };
        if attached_rx.recv_timeout(WAIT).is_err() {
            let status = tracer.child.try_wait().ok().flatten();
            panic!(
                "the tracer did not attach within {WAIT:?} (exit: {status:?}); stderr:\n{}",
                tracer.stderr()
            );
        }
        tracer
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().unwrap().clone()
    }

    /// Waits until `pick` finds something in the records; panics with everything received.
    pub fn wait_for<T>(&self, what: &str, mut pick: impl FnMut(&[Record]) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = pick(&self.records.lock().unwrap()) {
                return found;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; received:\n{}", self.dump());
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Transitions touching `port` (local or remote).
    pub fn transitions_on(&self, port: u16) -> Vec<TransitionRecord> {
        transitions_on(&self.records(), port)
    }

    /// Stops the tracer with SIGINT, waits for it, and returns its summary.
    pub fn stop(mut self) -> (Vec<Record>, Summary) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        )
        .expect("signal the tracer");
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the tracer") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the tracer did not stop on SIGINT; stderr:\n{}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        // Let the reader threads see the end of the pipes.
        thread::sleep(Duration::from_millis(100));
        assert!(
            status.success(),
            "tracer exited with {status}; stderr:\n{}",
            self.stderr()
        );
        let records = self.records();
        let summary = records
            .iter()
            .rev()
            .find_map(|r| match r {
                Record::Summary(s) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no summary record; stderr:\n{}", self.stderr()));
        assert!(
            self.stderr().contains("events,"),
            "no summary on stderr:\n{}",
            self.stderr()
        );
        (records, summary)
    }

    fn dump(&self) -> String {
        let mut out = String::new();
        for r in self.records.lock().unwrap().iter() {
            out.push_str(&serde_json::to_string(r).unwrap());
            out.push('\n');
        }
        out.push_str("--- stderr:\n");
        out.push_str(&self.stderr());
        out
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // Only our own child, by its handle.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn transitions_on(records: &[Record], port: u16) -> Vec<TransitionRecord> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Transition(t) if t.lport == port || t.rport == port => Some(t.clone()),
            _ => None,
        })
        .collect()
}

/// The transitions of one socket, in order.
pub fn of_socket(transitions: &[TransitionRecord], skaddr: &str) -> Vec<TransitionRecord> {
    transitions
        .iter()
        .filter(|t| t.skaddr == skaddr)
        .cloned()
        .collect()
}

/// `["CLOSE->SYN_SENT", ...]`.
pub fn path(transitions: &[TransitionRecord]) -> Vec<String> {
    transitions
        .iter()
        .map(|t| format!("{}->{}", t.old_state, t.new_state))
        .collect()
}

/// A listener on `addr` with an ephemeral port.
pub fn listen(addr: &str) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind(addr).expect("bind a loopback listener");
    let local = listener.local_addr().unwrap();
    (listener, local)
}

/// A port with nothing listening on it (bound, then released).
pub fn dead_port(addr: &str) -> SocketAddr {
    let (listener, local) = listen(addr);
    drop(listener);
    local
}

/// A helper process (this test binary re-run with a filter) that owns sockets, so the tracer
/// has to name a process other than the test's.
pub struct Helper {
    child: Child,
    stdin: ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

/// Name of the environment variable that turns a test into a helper.
pub const HELPER_ENV: &str = "TRACER_TEST_HELPER";

impl Helper {
    /// Runs `test_name` of this test binary as a helper in role `role`.
    pub fn spawn(test_name: &str, role: &str) -> Helper {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                test_name,
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_ENV, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the helper");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // libtest prints "test name ... " on the same line before the test's output.
                if let Some((_, msg)) = line.split_once("HELPER ") {
                    let _ = tx.send(msg.to_owned());
                }
            }
        });
        Helper {
            child,
            stdin,
            lines: rx,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The helper's comm, as the kernel has it.
    pub fn comm(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid()))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The next message the helper printed.
    pub fn recv(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("the helper did not answer in time")
    }

    pub fn send(&mut self, msg: &str) {
        writeln!(self.stdin, "{msg}").unwrap();
        self.stdin.flush().unwrap();
    }

    pub fn wait(mut self) {
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "helper did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Helper side: prints a message for the parent.
pub fn tell(msg: &str) {
    println!("HELPER {msg}");
    std::io::stdout().flush().unwrap();
}

/// Helper side: waits for a line from the parent.
pub fn hear() -> String {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    line.trim().to_owned()
}

/// Reads until EOF.
pub fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).unwrap();
    buf
}

/// A copy of `path` that `nobody` can reach (mode `mode`, in a world-readable directory of
/// its own): the checkout itself may sit under a directory only root can enter. Each file is
/// copied once per test binary, never over a copy that may be running.
pub fn public_copy(path: &std::path::Path, mode: u32) -> std::path::PathBuf {
    use std::{collections::HashMap, os::unix::fs::PermissionsExt, path::PathBuf, sync::Mutex};
    static COPIES: Mutex<Option<(PathBuf, HashMap<PathBuf, PathBuf>)>> = Mutex::new(None);
    let mut copies = COPIES.lock().unwrap();
    let (dir, done) = copies.get_or_insert_with(|| {
        let dir = tempfile::Builder::new()
            .prefix("tracer-test-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        (dir, HashMap::new())
    });
    if let Some(copy) = done.get(path) {
        return copy.clone();
    }
    let copy = dir.join(path.file_name().expect("a file"));
    std::fs::copy(path, &copy).expect("copy for nobody");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode)).unwrap();
    done.insert(path.to_owned(), copy.clone());
    copy
}

/// The tracer binary, runnable by `nobody`.
pub fn public_tracer() -> std::path::PathBuf {
    public_copy(std::path::Path::new(env!("CARGO_BIN_EXE_tracer")), 0o755)
}

/// Runs `cmd` to completion. A binary copied moments ago can be briefly "busy" (ETXTBSY)
/// while another test thread's fork still holds the copy's write descriptor: retried.
pub fn output(cmd: &mut std::process::Command) -> std::process::Output {
    for _ in 0..100 {
        match cmd.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                thread::sleep(Duration::from_millis(20));
            }
            result => return result.expect("run the command"),
        }
    }
    panic!("{cmd:?} stayed busy (ETXTBSY)");
}
