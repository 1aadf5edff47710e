//! The `stubborn-server` helper binary (`tests/helpers/stubborn_server.rs`): a process other
//! than the test's that holds sockets, so the tracer has to name it.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use super::WAIT;

/// A server that accepts one connection on `127.0.0.1`, greets it with `hello`, then neither
/// reads nor closes until told to.
pub struct StubbornServer {
    child: Child,
    stdin: ChildStdin,
    /// The port it listens on.
    pub port: u16,
}

impl StubbornServer {
    /// Starts the helper (in the calling thread's network namespace) and waits for its port.
    pub fn start() -> StubbornServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_stubborn-server"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the stubborn-server helper");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(WAIT)
            .expect("the helper did not print its port in time");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("the helper printed {line:?} instead of a port: {e}"));
        StubbornServer { child, stdin, port }
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

    /// `close`: close with the data unread (the kernel sends a RST); `drain-close`: read to
    /// EOF first, then close (a normal close: LAST_ACK).
    pub fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits (bounded) for the helper to exit after a command; fails unless it exits 0.
    pub fn wait(mut self) {
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "helper did not exit");
            thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "helper failed: {status}");
    }
}

impl Drop for StubbornServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
