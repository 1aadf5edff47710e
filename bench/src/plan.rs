//! The plan of a bench: the flags checked, the modes to run, the programs found (the tracer
//! and the generator beside the bench, bpftrace on PATH or installed), where results go.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    args::BenchArgs,
    churn::ChurnArgs,
    peer,
    runner::{Mode, PeerTools, Tools},
    util::{first_line, is_root, sibling_program, which, workspace_root},
};

/// What the bench will run, checked before anything runs.
pub struct Plan {
    pub args: BenchArgs,
    /// The modes of a round, in order, each once; without the peer when it is skipped.
    pub modes: Vec<Mode>,
    /// The results file (JSON).
    pub output: PathBuf,
    pub tools: Tools,
    /// The generator's flags for a run.
    pub churn: ChurnArgs,
    /// The commit measured (`-dirty` with uncommitted changes).
    pub git_commit: String,
    /// `bpftrace --version`, when the peer runs.
    pub bpftrace_version: Option<String>,
    /// Why a peer (bpftrace, tcpstates) or a mode (Python) does not run, when asked for and
    /// it cannot.
    pub peer_skipped: Option<String>,
}

impl Plan {
    pub fn new(args: &BenchArgs) -> Result<Self> {
        check(args)?;
        let mut modes = Vec::new();
        for &mode in &args.modes {
            if !modes.contains(&mode) {
                modes.push(mode);
            }
        }
        let output = workspace_root().join(&args.output);
        let dir = output
            .parent()
            .map_or_else(|| workspace_root().join("target/bench"), PathBuf::from);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        remove_stale_outputs(&dir);

        let (mut peer_tools, mut bpftrace_version, mut skipped) = (None, None, Vec::new());
        if modes.iter().any(|m| m.is_peer()) {
            match peer::bpftrace(!args.no_install) {
                Ok(found) => {
                    peer_tools = Some(PeerTools {
                        binary: found.binary,
                        stream_script: peer::write_script(
                            &dir,
                            "tcpstates.bt",
                            peer::STREAM_SCRIPT,
                        )?,
                        count_script: peer::write_script(&dir, "count.bt", peer::COUNT_SCRIPT)?,
                    });
                    bpftrace_version = Some(found.version);
                }
                Err(why) => {
                    eprintln!("bench: no peer: {why}");
                    modes.retain(|m| !m.is_peer());
                    skipped.push(why);
                }
            }
        }
        let mut tcpstates = None;
        if modes.contains(&Mode::Tcpstates) {
            match peer::tcpstates(!args.no_install) {
                Ok(path) => tcpstates = Some(path),
                Err(why) => {
                    eprintln!("bench: no tcpstates: {why}");
                    modes.retain(|&m| m != Mode::Tcpstates);
                    skipped.push(why);
                }
            }
        }
        let mut python = None;
        if modes.iter().any(|m| m.is_python()) {
            if let Some(path) = which("python3") {
                let script = peer::write_script(&dir, "reader.py", peer::PYTHON_READER)?;
                python = Some((path, script));
            } else {
                let why = "python3 is not on PATH: no tracer-python modes".to_owned();
                eprintln!("bench: {why}");
                modes.retain(|m| !m.is_python());
                skipped.push(why);
            }
        }
        Ok(Self {
            modes,
            output,
            tools: Tools {
                churn_exe: sibling_program("churn")?,
                tracer: sibling_program("tracer")?,
                peer: peer_tools,
                tcpstates,
                python,
                dir,
                keep: args.keep,
            },
            churn: ChurnArgs {
                connections: args.connections,
                load: args.load.clone(),
                destinations: 16,
                progress_every: (args.connections / 20).max(1),
                pin: !args.no_pin,
                port: 0,
                rate: 0,
                burst: 1_000,
            },
            // Read before the runs: the code measured is the code built now.
            git_commit: git_commit(),
            bpftrace_version,
            peer_skipped: (!skipped.is_empty()).then(|| skipped.join("; ")),
            args: args.clone(),
        })
    }

    /// The generator's flags for a run of `mode`: the plan's, paced for tracer-python-paced.
    pub fn churn_for(&self, mode: Mode) -> ChurnArgs {
        if mode == Mode::TracerPythonPaced {
            ChurnArgs {
                rate: self.args.python_rate,
                burst: self.args.python_burst,
                ..self.churn.clone()
            }
        } else {
            self.churn.clone()
        }
    }

    /// A soak of either kind was asked for.
    pub fn soaking(&self) -> bool {
        self.args.soak || self.args.soak_minutes.is_some()
    }

    /// The pause between runs.
    pub fn cooldown(&self) -> Duration {
        Duration::from_millis(self.args.cooldown_ms)
    }

    /// How long to wait for a quiet machine before a run.
    pub fn quiet_wait(&self) -> Duration {
        Duration::from_secs(self.args.quiet_wait_s)
    }
}

/// Fails on flags that cannot make a bench, and when not root.
fn check(args: &BenchArgs) -> Result<()> {
    if !is_root() {
        bail!("the bench loads eBPF programs and creates network namespaces: run it as root");
    }
    let soaking = args.soak || args.soak_minutes.is_some();
    if (args.rounds == 0 && !soaking && !args.html_report && !args.owner_scan)
        || args.connections == 0
    {
        bail!(
            "--rounds (unless soaking, timing the HTML report or the owner scan) and \
             --connections must be positive"
        );
    }
    if args.owner_scan
        && (args.scan_connections == 0 || args.scan_close_wait > args.scan_connections)
    {
        bail!(
            "--scan-connections must be positive and --scan-close-wait at most --scan-connections"
        );
    }
    if args.html_report && args.html_connections == 0 {
        bail!("--html-connections must be positive");
    }
    if args.python_rate == 0 || args.python_burst == 0 {
        bail!("--python-rate and --python-burst must be positive");
    }
    if args.soak_minutes == Some(0) || args.soak_chunk == 0 {
        bail!("--soak-minutes and --soak-chunk must be positive");
    }
    Ok(())
}

/// Removes observer outputs a killed bench left behind (`<mode>-r<round>-<port>.out|err`).
fn remove_stale_outputs(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = Mode::ALL
            .iter()
            .any(|m| name.starts_with(&format!("{}-r", m.name())))
            && (name.ends_with(".out") || name.ends_with(".err") || name.ends_with(".export"));
        if ours {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The commit checked out, `-dirty` when tracked files differ from it.
fn git_commit() -> String {
    let mut git = Command::new("git");
    git.arg("-C").arg(workspace_root()).args([
        "describe",
        "--always",
        "--dirty",
        "--abbrev=7",
        "--exclude=*",
    ]);
    first_line(&mut git).unwrap_or_else(|| "unknown".into())
}
