//! `tracer top` in a real terminal: tmux at a fixed size runs it while a real CLOSE_WAIT leak
//! sits in a known process; the screen is read with `capture-pane` and driven with
//! `send-keys`. Every wait is bounded.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use tracer::record::Record;

use crate::support::{self, NetNs, StubbornServer};

/// A tmux server of the test's own (its own socket), killed on drop.
struct Tmux {
    bin: PathBuf,
    socket: String,
}

/// Tmux servers started by this test binary: each gets a socket of its own.
static SERVERS: AtomicU32 = AtomicU32::new(0);

impl Tmux {
    /// A tmux server of its own, with a session `top` (100x30) running `tracer top ARGS` in a
    /// shell that then says how it exited and in which mode it left the terminal.
    fn start(args: &str) -> Tmux {
        let tmux = Tmux {
            bin: support::tool_from_debian("tmux", "tmux"),
            socket: format!(
                "tracer-top-test-{}-{}",
                std::process::id(),
                SERVERS.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let script = format!(
            "{} top {args}; echo \"top exited $?\"; stty -a | grep -w -e icanon -e -icanon; \
             sleep 600",
            support::tracer_binary().display(),
        );
        tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "100",
            "-y",
            "30",
            "sh",
            "-c",
            &script,
        ]);
        tmux.run(&["set-option", "-g", "escape-time", "0"]);
        tmux
    }

    /// Waits for `tracer top` to end, and checks that it gave the terminal back (main screen,
    /// canonical mode with echo) and printed the summary.
    fn ended(&self) -> String {
        let screen = self.wait_for("the exit and the terminal mode", |s| {
            s.contains("top exited") && s.contains("icanon")
        });
        assert!(screen.contains("top exited 0"), "{screen}");
        assert!(
            !screen.contains("Stuck sockets by process"),
            "alternate screen left:\n{screen}"
        );
        assert!(
            screen.contains(" events, ") && screen.contains(" transitions"),
            "the summary:\n{screen}"
        );
        let words: Vec<&str> = screen.split_whitespace().collect();
        assert!(
            words.contains(&"icanon") && words.contains(&"echo") && !words.contains(&"-icanon"),
            "the terminal is back in canonical mode with echo:\n{screen}"
        );
        assert_eq!(
            self.run(&["display-message", "-p", "-t", "top", "#{alternate_on}"])
                .trim(),
            "0"
        );
        screen
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(&self.bin)
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    /// Waits (bounded) until the screen satisfies `ok`; fails showing the last screen.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + support::WAIT;
        loop {
            let screen = self.screen();
            if ok(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} on the screen:\n{screen}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        self.run(&args);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new(&self.bin)
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// The line of the stuck-sockets panel that names `pid`, as its columns.
fn row_of(screen: &str, pid: u32) -> Option<Vec<String>> {
    let pid = pid.to_string();
    screen.lines().find_map(|line| {
        let cells: Vec<String> = line
            .trim_matches(|c: char| c == '│' || c.is_whitespace())
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        (cells.first() == Some(&pid) && cells.len() >= 4).then_some(cells)
    })
}

#[test]
#[ignore = "needs root and BPF"]
fn top_shows_a_real_leak_and_gives_the_terminal_back() {
    support::require_root();
    let _netns = NetNs::enter();
    let mut server = StubbornServer::start();
    let (port, pid, comm) = (server.port, server.pid(), server.comm());
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("top.ndjson");
    // The stream's filters apply, --netns too: this test's namespace only.
    let netns = support::field::current_netns();
    let tmux = Tmux::start(&format!(
        "-p {port} --netns {netns} --close-wait-threshold 300ms --interval 300ms --export {}",
        export.display()
    ));
    tmux.wait_for("empty tracer top", |s| s.contains("no stuck sockets"));

    // The leak: the client leaves, the server never reads nor closes.
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut greeting = [0u8; 5];
    client.read_exact(&mut greeting).unwrap();
    client.write_all(b"never read").unwrap();
    drop(client);

    // A row is complete with its eight columns (the screen may be read mid-draw).
    let screen = tmux.wait_for("the leaking process", |s| {
        row_of(s, pid).is_some_and(|r| r.len() >= 8) && s.contains("? help")
    });
    let row = row_of(&screen, pid).unwrap();
    assert_eq!(row[1], comm, "{screen}");
    assert_eq!(row[2], "CLOSE_WAIT", "{screen}");
    assert_eq!(row[3], "1", "one socket stuck:\n{screen}");
    assert!(
        screen.contains("tracer top") && screen.contains("events/s"),
        "{screen}"
    );
    assert!(
        screen.contains("CLOSE_WAIT") && screen.contains("Transitions/s"),
        "{screen}"
    );

    // Enter: the process's sockets with their 4-tuples.
    tmux.keys(&["Enter"]);
    let local = format!("127.0.0.1:{port}");
    tmux.wait_for("the detail view", |s| {
        s.contains(&format!("pid {pid} {comm}"))
            && s.contains(&local)
            && s.contains("1 stuck · oldest")
            && s.contains("Esc back")
    });

    // Esc: back to the list.
    tmux.keys(&["Escape"]);
    tmux.wait_for("the list again", |s| {
        s.contains("Stuck sockets by process") && row_of(s, pid).is_some()
    });

    // s: the next sort; / with the port: only this process, the filter in the title.
    tmux.keys(&["s"]);
    tmux.wait_for("the count sort", |s| s.contains("sort: count"));
    tmux.keys(&["/"]);
    tmux.keys(&["-l", &port.to_string()]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("the filter", |s| {
        s.contains(&format!("filter: {port}")) && row_of(s, pid).is_some()
    });

    // p: paused, and the trace goes on.
    tmux.keys(&["p"]);
    tmux.wait_for("PAUSED", |s| s.contains("PAUSED"));
    tmux.keys(&["p"]);
    tmux.wait_for("resumed", |s| {
        !s.contains("PAUSED") && s.contains("Stuck sockets")
    });

    // The server closes with the client's bytes unread: the kernel sends an RST, and the
    // ended panel says why the server's connection ended (the client's had already ended in
    // a timewait socket, which the RST finds with no state change).
    server.send("close");
    server.wait();
    tmux.wait_for("the reset and its cause", |s| s.contains(" RST sent "));

    // q: the terminal is given back (main screen, cooked mode) and the summary printed.
    tmux.keys(&["q"]);
    let screen = tmux.ended();
    assert!(
        screen.contains("1 CLOSE_WAIT alerts"),
        "the summary:\n{screen}"
    );

    // The export kept everything meanwhile.
    let records = support::records(&std::fs::read_to_string(Path::new(&export)).unwrap());
    assert!(
        matches!(records.first(), Some(Record::Header(h)) if h.complete && h.options.netns == Some(netns))
    );
    let transitions = support::transitions_on(&records, port);
    assert!(!transitions.is_empty());
    assert!(
        transitions.iter().all(|t| t.netns == Some(netns)),
        "{transitions:#?}"
    );
    assert!(records
        .iter()
        .any(|r| matches!(r, Record::CloseWait(c) if c.lport == port && c.pid == Some(pid))));
    assert!(matches!(records.last(), Some(Record::Summary(s)) if s.close_wait_alerts == 1));
}

/// Ctrl-C (a key in raw mode) and SIGTERM leave as `q` does: terminal back, summary printed.
#[test]
#[ignore = "needs root and BPF"]
fn top_gives_the_terminal_back_on_ctrl_c_and_sigterm() {
    support::require_root();
    let _netns = NetNs::enter();
    for signal in [false, true] {
        let tmux = Tmux::start("--interval 300ms");
        tmux.wait_for("tracer top", |s| s.contains("Stuck sockets by process"));
        if signal {
            // The pane runs the shell; tracer top is its only child.
            let shell = tmux.run(&["display-message", "-p", "-t", "top", "#{pane_pid}"]);
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", shell.trim()))
                    .unwrap();
            let pid: i32 = children.split_whitespace().next().unwrap().parse().unwrap();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
        } else {
            tmux.keys(&["C-c"]);
        }
        tmux.ended();
    }
}
