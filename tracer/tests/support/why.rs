//! The `why-server` helper binary (`tests/helpers/why_server.rs`): servers stuck in the ways
//! the `diagnosis` explains (a deadlocked worker, a read from a silent database, an fd leak).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use super::WAIT;

/// A running `why-server`, its port, and the lines it prints after the port.
pub struct WhyServer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    pub port: u16,
}

impl WhyServer {
    /// Starts `why-server ARGS` (in the calling thread's network namespace) and waits for its
    /// port.
    pub fn start(args: &[&str]) -> WhyServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_why-server"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the why-server helper");
        let stdin = child.stdin.take();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = lines
            .recv_timeout(WAIT)
            .expect("the helper did not print its port in time");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("the helper printed {line:?} instead of a port: {e}"));
        WhyServer {
            child,
            stdin,
            lines,
            port,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line it printed, if one comes within `wait`.
    pub fn line(&self, wait: Duration) -> Option<String> {
        self.lines.recv_timeout(wait).ok()
    }
}

impl Drop for WhyServer {
    fn drop(&mut self) {
        // A line on stdin ends it; then only our own child, by its handle.
        if let Some(mut stdin) = self.stdin.take() {
            let _ = writeln!(stdin, "stop");
        }
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
