//! The `why-server` helper binary (`tests/helpers/why_server.rs`): servers stuck in the ways
//! the `diagnosis` explains (a deadlocked worker, a read from a silent database, an fd leak).

use std::{process::Command, time::Duration};

use super::helper::{port_of, HelperProcess};

/// A running `why-server`, its port, and the lines it prints after the port.
pub struct WhyServer {
    process: HelperProcess,
    pub port: u16,
}

impl WhyServer {
    /// Starts `why-server ARGS` (in the calling thread's network namespace) and waits for its
    /// port. It ends when its stdin does (when it is dropped).
    pub fn start(args: &[&str]) -> WhyServer {
        let mut command = Command::new(env!("CARGO_BIN_EXE_why-server"));
        command.args(args);
        let process = HelperProcess::spawn(command);
        let port = port_of(&process);
        WhyServer { process, port }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The next line it printed, if one comes within `wait`.
    pub fn line(&self, wait: Duration) -> Option<String> {
        self.process.line(wait)
    }
}
