//! A running tracer with `--json`, whose stdout is parsed as it arrives.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Stdio},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use tracer::record::{Record, Summary};

use super::{interrupt, require_root, tracer_command, WAIT};

pub struct Tracer {
    child: Child,
    records: Arc<Mutex<Vec<Record>>>,
    stderr: Arc<Mutex<String>>,
    /// Says when the stdout reader has parsed the last line.
    stdout_done: mpsc::Receiver<()>,
}

impl Tracer {
    /// Starts the tracer (in the calling thread's network namespace) and waits until it has
    /// attached to the tracepoint.
    pub fn start(args: &[&str]) -> Tracer {
        require_root();
        let mut child = tracer_command()
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
        let (done_tx, stdout_done) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let record: Record = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("tracer printed a line that is not a record: {e}: {line}")
                });
                sink.lock().unwrap().push(record);
            }
            let _ = done_tx.send(());
        });
        let mut err = BufReader::new(child.stderr.take().expect("piped stderr"));
        let log = Arc::clone(&stderr);
        let (attached_tx, attached_rx) = mpsc::channel();
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
            stdout_done,
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

    /// Sends `signal` to the tracer.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, signal).expect("signal the tracer");
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
            assert!(
                Instant::now() <= deadline,
                "timed out waiting for {what}; received:\n{}",
                self.dump()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the tracer with SIGINT, waits for it, and returns its records and summary.
    /// The timeline of the connection from `local` to `remote`, once it ended.
    pub fn ended(
        &self,
        local: std::net::SocketAddr,
        remote: std::net::SocketAddr,
    ) -> tracer::record::TimelineRecord {
        self.wait_for(&format!("the timeline of {local} -> {remote}"), |rs| {
            rs.iter().find_map(|r| match r {
                Record::Timeline(t)
                    if (t.laddr, t.lport, t.raddr, t.rport)
                        == (local.ip(), local.port(), remote.ip(), remote.port())
                        && t.outcome != tracer::timeline::Outcome::Open =>
                {
                    Some(t.clone())
                }
                _ => None,
            })
        })
    }

    /// The transition to CLOSE of the socket of `timeline`.
    pub fn close_of(
        &self,
        timeline: &tracer::record::TimelineRecord,
    ) -> tracer::record::TransitionRecord {
        self.wait_for("its transition to CLOSE", |rs| {
            rs.iter().find_map(|r| match r {
                Record::Transition(t)
                    if t.skaddr == timeline.skaddr && t.new_state.name() == "CLOSE" =>
                {
                    Some(t.clone())
                }
                _ => None,
            })
        })
    }

    pub fn stop(mut self) -> (Vec<Record>, Summary) {
        let status = interrupt(&mut self.child);
        // Every line parsed (a slow guest takes a while over thousands), then stderr's end.
        let _ = self.stdout_done.recv_timeout(WAIT);
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
                Record::Summary(s) => Some(s.as_ref().clone()),
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

    /// Waits for the tracer to exit by itself (bounded by [`WAIT`]) and returns its records,
    /// exit status and stderr.
    pub fn wait_exit(mut self) -> (Vec<Record>, std::process::ExitStatus, String) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the tracer") {
                break status;
            }
            assert!(
                Instant::now() <= deadline,
                "the tracer did not exit within {WAIT:?}; stderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        };
        let _ = self.stdout_done.recv_timeout(WAIT);
        thread::sleep(Duration::from_millis(100));
        (self.records(), status, self.stderr())
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
