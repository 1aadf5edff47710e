//! Driving one run of the churn generator (the `churn` binary): start it, learn its port,
//! tell it to go, follow its progress, reap it. Used by the per-run bench and by the soak.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{ChildStdin, ChildStdout, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    churn::{ChurnArgs, Message},
    sys::Proc,
};

/// A started generator, bound to its port and waiting for the go line.
pub struct Generator {
    proc: Proc,
    go: Option<ChildStdin>,
    messages: mpsc::Receiver<Result<Message>>,
    connections: u64,
    /// The port its listener is bound to.
    pub port: u16,
}

/// How a run of the generator ended.
pub struct Done {
    /// Connections completed (always all of those asked for).
    pub connections: u64,
    /// The churn's own time, from `listen()` to the last close, in ns.
    pub elapsed_ns: u64,
    /// Its CPU time (user + system), seconds.
    pub cpu_s: f64,
}

/// How long a run may take at worst: the churn at 1,000 connections/s plus a minute.
pub fn deadline(connections: u64) -> Duration {
    Duration::from_secs(60 + connections / 1_000)
}

impl Generator {
    /// Starts the generator and waits until it says its port.
    pub fn start(exe: &Path, args: &ChurnArgs) -> Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.args(args.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let (proc, mut child) = Proc::spawn("churn generator", &mut cmd, libc::SIGKILL)?;
        let go = child.stdin.take().context("churn stdin")?;
        let messages = read_messages(child.stdout.take().context("churn stdout")?);
        let port = match messages.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(Message::Ready { port })) => port,
            Ok(Ok(other)) => bail!("churn generator: expected its port, got {other:?}"),
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("churn generator did not report its port"),
        };
        if args.port != 0 && port != args.port {
            bail!("churn generator: asked for port {}, got {port}", args.port);
        }
        Ok(Self {
            proc,
            go: Some(go),
            messages,
            connections: args.connections,
            port,
        })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid
    }

    /// Starts the churn, then follows it to the end: `tick` gets the connections completed
    /// so far at least every `every`. Fails past the run's deadline, or when the generator
    /// fails or completes fewer connections than asked.
    pub fn run(mut self, every: Duration, mut tick: impl FnMut(u64)) -> Result<Done> {
        let mut go = self.go.take().context("the churn was already started")?;
        writeln!(go, "go").context("starting the churn")?;
        drop(go);
        let deadline = deadline(self.connections);
        let start = Instant::now();
        let mut progress = 0;
        let (completed, elapsed_ns) = loop {
            if start.elapsed() > deadline {
                bail!("the churn did not finish within {deadline:?}");
            }
            match self.next_message(every)? {
                Some(Message::Progress { progress: p, .. }) => progress = p,
                Some(Message::Done { done, elapsed_ns }) => break (done, elapsed_ns),
                Some(other) => bail!("churn generator: unexpected {other:?}"),
                None => {}
            }
            tick(progress);
        };
        let exit = self.proc.reap_within(Duration::from_secs(30))?;
        let cpu_s = match exit {
            Some(exit) if exit.success() => exit.cpu_s,
            Some(exit) => bail!("churn generator failed: {}", exit.describe()),
            None => bail!("churn generator did not exit"),
        };
        if completed != self.connections {
            bail!(
                "churn generator completed {completed} of {} connections",
                self.connections
            );
        }
        tick(completed);
        Ok(Done {
            connections: completed,
            elapsed_ns,
            cpu_s,
        })
    }

    /// The generator's next message within `wait` (`None`: nothing yet); a generator that
    /// stopped talking before it was done is an error.
    fn next_message(&mut self, wait: Duration) -> Result<Option<Message>> {
        match self.messages.recv_timeout(wait) {
            Ok(message) => message.map(Some),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let exit = self.proc.try_reap()?;
                bail!(
                    "the churn generator stopped before it was done ({})",
                    exit.map_or_else(|| "still running".into(), |e| e.describe())
                );
            }
        }
    }
}

/// The generator's messages, one JSON object a line, read on a thread of their own.
fn read_messages(stdout: ChildStdout) -> mpsc::Receiver<Result<Message>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let message = line.context("reading the churn generator").and_then(|l| {
                serde_json::from_str::<Message>(&l)
                    .with_context(|| format!("churn generator said {l:?}"))
            });
            if tx.send(message).is_err() {
                return;
            }
        }
    });
    rx
}
