//! Helper processes: programs other than the test that hold sockets, so the tracer has to name
//! them. [`HelperProcess`] runs one and talks to it a line at a time; the helper binaries are
//! `holder` (`tests/helpers/holder.rs`, by role), `stubborn-server` and `why-server`.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use super::WAIT;

/// A running helper: its stdin for commands, the lines it prints, and its end.
pub struct HelperProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl HelperProcess {
    /// Runs `command` (in the calling thread's network namespace) with stdin and stdout piped
    /// to the test and stderr inherited.
    pub fn spawn(mut command: Command) -> HelperProcess {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the helper {command:?}: {e}"));
        let stdin = child.stdin.take();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        HelperProcess {
            child,
            stdin,
            lines,
        }
    }

    /// `holder ROLE` with more environment (`HOLDER_PORT`, `HOLDER_NETNS`, `HOLDER_UNIX`).
    pub fn holder(role: &str, env: &[(&str, &str)]) -> HelperProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_holder"));
        command.arg(role).envs(env.iter().copied());
        HelperProcess::spawn(command)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The helper's comm, as the kernel has it.
    pub fn comm(&self) -> tracer::event::Name {
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid()))
            .unwrap()
            .trim()
            .into()
    }

    /// The next line the helper printed; fails after [`WAIT`].
    pub fn recv(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("the helper did not answer in time")
    }

    /// The next line it printed, if one comes within `wait`.
    pub fn line(&self, wait: Duration) -> Option<String> {
        self.lines.recv_timeout(wait).ok()
    }

    /// Sends one command line.
    pub fn send(&mut self, msg: &str) {
        let stdin = self.stdin.as_mut().expect("the helper's stdin is open");
        writeln!(stdin, "{msg}").unwrap();
        stdin.flush().unwrap();
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

impl Drop for HelperProcess {
    /// Closes its stdin (every helper ends on that), waits up to a second, then kills it: our
    /// own child, by its handle.
    fn drop(&mut self) {
        drop(self.stdin.take());
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port a helper printed as its first line.
pub fn port_of(helper: &HelperProcess) -> u16 {
    let line = helper.recv();
    line.trim()
        .parse()
        .unwrap_or_else(|e| panic!("the helper printed {line:?} instead of a port: {e}"))
}

/// A server that accepts one connection on `127.0.0.1`, greets it with `hello`, then neither
/// reads nor closes until told to (`tests/helpers/stubborn_server.rs`).
pub struct StubbornServer {
    process: HelperProcess,
    /// The port it listens on.
    pub port: u16,
}

impl StubbornServer {
    /// Starts the helper (in the calling thread's network namespace) and waits for its port.
    pub fn start() -> StubbornServer {
        let process = HelperProcess::spawn(Command::new(env!("CARGO_BIN_EXE_stubborn-server")));
        let port = port_of(&process);
        StubbornServer { process, port }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn comm(&self) -> tracer::event::Name {
        self.process.comm()
    }

    /// `close`: close with the data unread (the kernel sends a RST); `drain-close`: read to
    /// EOF first, then close (a normal close: LAST_ACK).
    pub fn send(&mut self, command: &str) {
        self.process.send(command);
    }

    /// Waits (bounded) for the helper to exit after a command; fails unless it exits 0.
    pub fn wait(self) {
        self.process.wait();
    }
}
