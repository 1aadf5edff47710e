//! The model from recorded event streams (the engine's records for scripted transitions), the
//! keys, and the screen against golden buffers (ratatui's `TestBackend`).

use std::{collections::HashMap, time::Duration};

use expect_test::{expect, Expect};
use ratatui::{backend::TestBackend, buffer::Buffer, style::Color, Terminal};

use super::{
    model::{Health, Holder, Model, ProcessRow, Snapshot, STATES},
    render,
    ui::{Action, Key, Mode, Sort, Ui},
    Top,
};
use crate::{
    engine::{Engine, Options},
    event::TcpState,
    metrics::FdUsage,
    record::{Header, Record},
    testing::{by, transition},
    timeline::Outcome,
    units::WallClock,
};

const S: u64 = 1_000_000_000;

/// A recorded stream: an engine fed with scripted transitions, its records kept in order.
struct Stream {
    engine: Engine,
    records: Vec<Record>,
}

impl Stream {
    fn new() -> Self {
        let engine = Engine::new(
            Options {
                timelines: true,
                close_wait_threshold_ns: S,
                ..Options::default()
            },
            WallClock::fixed(0),
        );
        let header = Record::Header(Box::new(Header {
            hostname: "box".into(),
            kernel: "6.1.0-test".into(),
            monotonic_start_ns: 0,
            ..crate::export::header(
                crate::record::RunOptions::default(),
                WallClock::fixed(0),
                0,
                true,
            )
        }));
        Self {
            engine,
            records: vec![header],
        }
    }

    /// Socket `n` of process `pid`: connects (owner learnt from the system call), then its peer
    /// closes, leaving it in CLOSE_WAIT from `at`.
    fn leak(&mut self, at: u64, n: u64, pid: u32, comm: &str) {
        let local = format!("127.0.0.1:{}", 40000 + n);
        for (dt, old, new) in [(0, 7, 2), (1, 2, 1), (2, 1, 8)] {
            let t = by(
                transition(at + dt, 0x1000 + n, &local, "127.0.0.1:8080", old, new),
                pid,
                comm,
            );
            self.engine.transition(t, &mut self.records);
        }
    }

    /// A whole connection of socket `n` ending with `last -> CLOSE`.
    fn short(&mut self, at: u64, n: u64, path: &[(u32, u32)]) {
        let local = format!("127.0.0.1:{}", 50000 + n);
        for (i, &(old, new)) in path.iter().enumerate() {
            let t = transition(at + i as u64, 0x9000 + n, &local, "127.0.0.1:443", old, new);
            self.engine.transition(t, &mut self.records);
        }
    }

    /// The CLOSE_WAIT reports due at `now` (no socket table: owners from system calls).
    fn tick(&mut self, now: u64) {
        let due = self.engine.due(now);
        self.engine.alert(&due, None, now, &mut self.records);
    }

    fn drain(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.records)
    }
}

fn health(events: u64) -> Health {
    Health {
        events,
        cpu_seconds: Some(0.5),
        rss_bytes: Some(12 << 20),
        ..Health::default()
    }
}

#[test]
fn states_now_change_and_transition_rates() {
    let mut stream = Stream::new();
    let mut model = Model::new(100);
    model.observe(&stream.drain());
    model.sample(0, health(0), &HashMap::new());
    // Two connections established, one of them closed actively, in 2 s.
    stream.short(S, 1, &[(7, 2), (2, 1)]);
    stream.short(S, 2, &[(7, 2), (2, 1), (1, 4), (4, 5), (5, 7)]);
    model.observe(&stream.drain());
    let s = model.sample(2 * S, health(7), &HashMap::new());
    assert_eq!(s.states.len(), 11);
    let state = |st: TcpState| s.states.iter().find(|r| r.0 == st).copied().unwrap();
    assert_eq!(state(TcpState::Established), (TcpState::Established, 1, 1));
    assert_eq!(state(TcpState::SynSent), (TcpState::SynSent, 0, 0));
    assert_eq!(s.events_per_s, 3.5);
    assert_eq!(s.host, "box");
    assert_eq!(s.uptime, Duration::from_secs(2));
    // Two CLOSE -> SYN_SENT and two SYN_SENT -> ESTABLISHED in 2 s: 1 a second each, first.
    assert_eq!(
        &s.transitions[..2],
        &[
            (TcpState::SynSent, TcpState::Established, 1.0),
            (TcpState::Close, TcpState::SynSent, 1.0),
        ]
    );
    assert_eq!(s.transitions.len(), 5);
    let active = s
        .ended
        .iter()
        .find(|e| e.0 == Outcome::ActiveClose)
        .unwrap();
    assert_eq!(*active, (Outcome::ActiveClose, 1, 1));
    // The next interval: the established one goes straight to CLOSE, with no RST or error
    // seen (the scripted stream has no cause records): aborted.
    stream.short(3 * S, 1, &[(1, 7)]);
    model.observe(&stream.drain());
    let s = model.sample(4 * S, health(8), &HashMap::new());
    assert_eq!(
        s.states
            .iter()
            .find(|r| r.0 == TcpState::Established)
            .unwrap()
            .2,
        -1
    );
    assert_eq!(
        s.transitions,
        [(TcpState::Established, TcpState::Close, 0.5)]
    );
    let aborted = s.ended.iter().find(|e| e.0 == Outcome::Aborted).unwrap();
    assert_eq!(*aborted, (Outcome::Aborted, 1, 1));
    // A minute later, the endings have left the last minute but not the totals.
    let s = model.sample(70 * S, health(8), &HashMap::new());
    assert!(s.ended.iter().all(|e| e.1 == 0));
    assert_eq!(s.ended.iter().map(|e| e.2).sum::<u64>(), 2);
    assert!(s.transitions.is_empty());
}

#[test]
fn states_panel_is_bounded() {
    let mut stream = Stream::new();
    let mut model = Model::new(2);
    for n in 0..5 {
        stream.short(S, n, &[(7, 2)]);
    }
    model.observe(&stream.drain());
    let s = model.sample(S, health(0), &HashMap::new());
    assert_eq!(s.states.iter().map(|r| r.1).sum::<u64>(), 2);
    assert_eq!(s.untracked, 3);
    assert_eq!(STATES.len(), 11);
}

#[test]
fn a_leak_in_progress_has_its_growth_and_fd_forecast() {
    let mut stream = Stream::new();
    let mut model = Model::new(1000);
    // Process 7 leaks one socket a second; process 9 has two stuck, not growing.
    stream.leak(0, 1000, 9, "steady");
    stream.leak(0, 1001, 9, "steady");
    let mut last = None;
    for second in 0..=60 {
        let now = second * S;
        stream.leak(now, second, 7, "leaky");
        stream.tick(now + S / 2);
        model.observe(&stream.drain());
        let leaked = second; // reported: those past the 1 s threshold
        let fds = HashMap::from([
            (
                7,
                FdUsage {
                    open: 100 + leaked,
                    limit: Some(1024),
                },
            ),
            (
                9,
                FdUsage {
                    open: 10,
                    limit: Some(1024),
                },
            ),
        ]);
        last = Some(model.sample(now + S / 2, health(0), &fds));
    }
    let s = last.unwrap();
    let row = |pid| {
        s.processes
            .iter()
            .find(|r| r.holder.pid == Some(pid))
            .unwrap()
    };
    let leaky = row(7);
    assert_eq!(leaky.count, 60);
    assert_eq!(leaky.holder.comm.as_deref(), Some("leaky"));
    assert_eq!(leaky.holder.state, TcpState::CloseWait);
    let growth = leaky.growth_per_min.unwrap();
    assert!((growth - 60.0).abs() < 1e-6, "{growth}");
    // 160 of 1024 fds, 60 more a minute: 864 / 60 = 14.4 min.
    assert_eq!(leaky.forecast, Some(Duration::from_secs(864)));
    assert_eq!(leaky.oldest_ms, 60_499, "entered CLOSE_WAIT at 2 ns");
    assert_eq!(leaky.sockets.len(), 60);
    assert_eq!(leaky.sockets[0].0.local.port(), 40000, "oldest first");
    let steady = row(9);
    assert_eq!((steady.count, steady.forecast), (2, None));
    assert_eq!(steady.growth_per_min, Some(0.0));
    let ui = Ui::default();
    let order: Vec<Option<u32>> = ui.rows(&s).iter().map(|r| r.holder.pid).collect();
    assert_eq!(order, [Some(7), Some(9)], "the forecast first");
    assert_eq!(model.pids(), [7, 9]);
}

#[test]
fn resolved_sockets_leave_the_panel() {
    let mut stream = Stream::new();
    let mut model = Model::new(100);
    stream.leak(0, 1, 7, "leaky");
    stream.tick(2 * S);
    model.observe(&stream.drain());
    assert_eq!(
        model
            .sample(2 * S, health(0), &HashMap::new())
            .processes
            .len(),
        1
    );
    // The application closes it: CLOSE_WAIT -> LAST_ACK.
    let t = transition(3 * S, 0x1001, "127.0.0.1:40001", "127.0.0.1:8080", 8, 9);
    stream.engine.transition(t, &mut stream.records);
    model.observe(&stream.drain());
    assert!(model
        .sample(3 * S, health(0), &HashMap::new())
        .processes
        .is_empty());
    assert!(model.pids().is_empty());
}

fn row(
    pid: u32,
    comm: &str,
    count: usize,
    oldest_ms: u64,
    growth: Option<f64>,
    forecast: Option<u64>,
) -> ProcessRow {
    ProcessRow {
        holder: Holder {
            pid: Some(pid),
            comm: Some(comm.into()),
            state: TcpState::CloseWait,
        },
        container: None,
        count,
        oldest_ms,
        growth_per_min: growth,
        fds: None,
        forecast: forecast.map(Duration::from_secs),
        sockets: Vec::new(),
        diagnosis: None,
    }
}

fn snapshot_of(rows: Vec<ProcessRow>) -> Snapshot {
    Snapshot {
        processes: rows,
        ..Snapshot::default()
    }
}

#[test]
fn every_sort_and_the_filter() {
    let s = snapshot_of(vec![
        row(1, "nginx", 5, 90_000, Some(2.0), Some(600)),
        row(2, "java", 40, 10_000, Some(30.0), Some(60)),
        row(3, "bash", 80, 500_000, None, None),
        row(4, "apache", 3, 1_000, Some(50.0), None),
    ]);
    let mut ui = Ui::default();
    let order = |ui: &Ui| -> Vec<u32> { ui.rows(&s).iter().filter_map(|r| r.holder.pid).collect() };
    assert_eq!(order(&ui), [2, 1, 4, 3], "urgency: forecasts, then growth");
    let mut seen = vec![];
    for _ in 0..5 {
        assert_eq!(ui.key(Key::Char('s'), &s), Action::Redraw);
        seen.push((ui.sort, order(&ui)));
    }
    assert_eq!(
        seen,
        [
            (Sort::Count, vec![3, 2, 1, 4]),
            (Sort::Oldest, vec![3, 1, 2, 4]),
            (Sort::Growth, vec![4, 2, 1, 3]),
            (Sort::Process, vec![4, 3, 2, 1]),
            (Sort::Urgency, vec![2, 1, 4, 3]),
        ]
    );
    // "/" then typing: by name (case-insensitive), applied on Enter.
    ui.key(Key::Char('/'), &s);
    for c in "NGI".chars() {
        ui.key(Key::Char(c), &s);
    }
    assert_eq!(ui.mode, Mode::Filter("NGI".into()));
    assert_eq!(order(&ui), [2, 1, 4, 3], "not applied while typing");
    ui.key(Key::Enter, &s);
    assert_eq!(order(&ui), [1]);
    // A number is a pid or a port; Esc cancels an edit.
    ui.key(Key::Char('/'), &s);
    ui.key(Key::Backspace, &s);
    ui.key(Key::Backspace, &s);
    ui.key(Key::Backspace, &s);
    ui.key(Key::Char('3'), &s);
    ui.key(Key::Esc, &s);
    assert_eq!(ui.filter, "NGI");
    ui.filter = "3".into();
    assert_eq!(order(&ui), [3]);
    ui.filter.clear();
}

#[test]
fn keys_select_open_and_leave() {
    let s = snapshot_of(vec![
        row(1, "nginx", 5, 90_000, None, None),
        row(2, "java", 40, 10_000, None, None),
    ]);
    let mut ui = Ui::default();
    assert_eq!(ui.key(Key::Char('x'), &s), Action::None);
    assert_eq!(ui.key(Key::Down, &s), Action::Redraw);
    assert_eq!(ui.selected.as_ref().and_then(|h| h.pid), Some(1));
    ui.key(Key::Down, &s);
    ui.key(Key::Up, &s);
    ui.key(Key::Up, &s);
    assert_eq!(
        ui.selected.as_ref().and_then(|h| h.pid),
        Some(2),
        "stops at the top"
    );
    ui.key(Key::Enter, &s);
    assert_eq!(ui.mode, Mode::Detail);
    ui.key(Key::Esc, &s);
    assert_eq!(ui.mode, Mode::List);
    ui.key(Key::Char('?'), &s);
    assert_eq!(ui.mode, Mode::Help);
    ui.key(Key::Char('?'), &s);
    assert_eq!(ui.mode, Mode::List);
    // q types into a filter; Ctrl-C quits from anywhere.
    ui.key(Key::Char('/'), &s);
    assert_eq!(ui.key(Key::Char('q'), &s), Action::Redraw);
    assert_eq!(ui.key(Key::Interrupt, &s), Action::Quit);
    ui.key(Key::Esc, &s);
    assert_eq!(ui.key(Key::Char('q'), &s), Action::Quit);
    let empty = Snapshot::default();
    assert_eq!(ui.key(Key::Enter, &empty), Action::None);
}

#[test]
fn pause_freezes_the_screen_not_the_model() {
    let mut stream = Stream::new();
    let mut top = Top::new(100);
    top.observe(&stream.drain());
    top.sample(S, health(1), &HashMap::new());
    assert_eq!(top.key(Key::Char('p')), Action::Redraw);
    stream.leak(S, 1, 7, "leaky");
    stream.tick(3 * S);
    top.observe(&stream.drain());
    top.sample(3 * S, health(4), &HashMap::new());
    assert!(top.shown.processes.is_empty(), "paused");
    assert_eq!(top.pids(), [7], "the model went on");
    top.key(Key::Char('p'));
    assert_eq!(top.shown.processes.len(), 1, "resumed at once");
}

// ---- the screen ----------------------------------------------------------------------------

fn screen(snapshot: &Snapshot, ui: &Ui, size: (u16, u16), color: bool) -> Buffer {
    let mut terminal = Terminal::new(TestBackend::new(size.0, size.1)).unwrap();
    terminal
        .draw(|f| render::draw(f, snapshot, ui, color))
        .unwrap();
    terminal.backend().buffer().clone()
}

fn text(buffer: &Buffer) -> String {
    let width = usize::from(buffer.area.width);
    let symbols: Vec<&str> = buffer
        .content
        .iter()
        .map(ratatui::buffer::Cell::symbol)
        .collect();
    symbols
        .chunks(width)
        .map(|line| line.concat().trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

fn check(snapshot: &Snapshot, ui: &Ui, expect: &Expect) {
    expect.assert_eq(&text(&screen(snapshot, ui, (80, 24), false)));
}

/// What the model shows after a recorded leak: 3 sockets of `stubborn` over 3 s.
fn leak_snapshot() -> Snapshot {
    let mut stream = Stream::new();
    let mut model = Model::new(100);
    let mut s = Snapshot::default();
    for second in 0..4 {
        stream.leak(second * S, second, 4242, "stubborn");
        stream.tick(second * S + S / 2);
        model.observe(&stream.drain());
        let fds = HashMap::from([(
            4242,
            FdUsage {
                open: 20 + second,
                limit: Some(1024),
            },
        )]);
        s = model.sample(second * S + S / 2, health(3 * second), &fds);
    }
    s
}

#[test]
fn golden_empty() {
    let mut stream = Stream::new();
    let mut model = Model::new(100);
    model.observe(&stream.drain());
    let s = model.sample(0, Health::default(), &HashMap::new());
    check(
        &s,
        &Ui::default(),
        &expect![[r"
            tracer top  host box  kernel 6.1.0-test  up 0s
            0 events/s  lost: ring 0  missed 0  dropped 0  cpu -  rss -
            ┌ Sockets by state ────┐┌ Transitions/s ───────────┐┌ Recently ended ──────────┐
            │ESTABLISHED     0     ││                          ││ended          1min  total│
            │SYN_SENT        0     ││                          ││active close      0      0│
            │SYN_RECV        0     ││                          ││passive close     0      0│
            │FIN_WAIT1       0     ││                          ││simultaneous      0      0│
            │FIN_WAIT2       0     ││                          ││reset             0      0│
            │TIME_WAIT       0     ││                          ││timeout           0      0│
            │CLOSE           0     ││                          ││aborted           0      0│
            │CLOSE_WAIT      0     ││                          ││connect failed    0      0│
            │LAST_ACK        0     ││                          ││handshake fail    0      0│
            │LISTEN          0     ││                          ││listener gone     0      0│
            │CLOSING         0     ││                          ││                          │
            └──────────────────────┘└──────────────────────────┘└──────────────────────────┘
            ┌ Stuck sockets by process · sort: urgency ────────────────────────────────────┐
            │no stuck sockets                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            └──────────────────────────────────────────────────────────────────────────────┘
            q quit  p pause  s sort  / filter  ↑↓ select  Enter details  ? help"]],
    );
}

#[test]
fn golden_leak_in_progress() {
    let s = leak_snapshot();
    let mut ui = Ui::default();
    check(
        &s,
        &ui,
        &expect![[r"
            tracer top  host box  kernel 6.1.0-test  up 3s
            3 events/s  lost: ring 0  missed 0  dropped 0  cpu 0.0%  rss 12.0 MiB
            ┌ Sockets by state ────┐┌ Transitions/s ───────────┐┌ Recently ended ──────────┐
            │ESTABLISHED     0     ││ESTAB→CLOSE_WAIT       1.0││ended          1min  total│
            │SYN_SENT        0     ││SYN_SENT→ESTAB         1.0││active close      0      0│
            │SYN_RECV        0     ││CLOSE→SYN_SENT         1.0││passive close     0      0│
            │FIN_WAIT1       0     ││                          ││simultaneous      0      0│
            │FIN_WAIT2       0     ││                          ││reset             0      0│
            │TIME_WAIT       0     ││                          ││timeout           0      0│
            │CLOSE           0     ││                          ││aborted           0      0│
            │CLOSE_WAIT      4   +1││                          ││connect failed    0      0│
            │LAST_ACK        0     ││                          ││handshake fail    0      0│
            │LISTEN          0     ││                          ││listener gone     0      0│
            │CLOSING         0     ││                          ││                          │
            └──────────────────────┘└──────────────────────────┘└──────────────────────────┘
            ┌ Stuck sockets by process · sort: urgency ────────────────────────────────────┐
            │PID     PROCESS           STATE      COUNT  OLDEST GROW/MIN       FDS FDS FULL│
            │4242    stubborn          CLOSE_WAIT     3      3s      +60   23/1024  ~17 min│
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            └──────────────────────────────────────────────────────────────────────────────┘
            q quit  p pause  s sort  / filter  ↑↓ select  Enter details  ? help"]],
    );
    ui.key(Key::Enter, &s);
    check(
        &s,
        &ui,
        &expect![[r"
            tracer top  host box  kernel 6.1.0-test  up 3s
            3 events/s  lost: ring 0  missed 0  dropped 0  cpu 0.0%  rss 12.0 MiB
            ┌ pid 4242 stubborn · CLOSE_WAIT ──────────────────────────────────────────────┐
            │3 stuck · oldest 3s · +60 per min · fds 23/1024 · fd limit in ~17 min         │
            │container -                                                                   │
            │LOCAL                 REMOTE                     AGE  RECV-Q    FD       NETNS│
            │127.0.0.1:40000       127.0.0.1:8080              3s       -     -           -│
            │127.0.0.1:40001       127.0.0.1:8080              2s       -     -           -│
            │127.0.0.1:40002       127.0.0.1:8080              1s       -     -           -│
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            └──────────────────────────────────────────────────────────────────────────────┘
            Esc back  p pause  q quit"]],
    );
}

#[test]
fn golden_losses_in_red() {
    let mut s = leak_snapshot();
    s.health.lost_ringbuf = 200;
    s.health.dropped = 3;
    let ui = Ui {
        paused: true,
        ..Ui::default()
    };
    check(
        &s,
        &ui,
        &expect![[r"
            tracer top  host box  kernel 6.1.0-test  up 3s  PAUSED (p resumes)
            3 events/s  lost: ring 200  missed 0  dropped 3  cpu 0.0%  rss 12.0 MiB
            ┌ Sockets by state ────┐┌ Transitions/s ───────────┐┌ Recently ended ──────────┐
            │ESTABLISHED     0     ││ESTAB→CLOSE_WAIT       1.0││ended          1min  total│
            │SYN_SENT        0     ││SYN_SENT→ESTAB         1.0││active close      0      0│
            │SYN_RECV        0     ││CLOSE→SYN_SENT         1.0││passive close     0      0│
            │FIN_WAIT1       0     ││                          ││simultaneous      0      0│
            │FIN_WAIT2       0     ││                          ││reset             0      0│
            │TIME_WAIT       0     ││                          ││timeout           0      0│
            │CLOSE           0     ││                          ││aborted           0      0│
            │CLOSE_WAIT      4   +1││                          ││connect failed    0      0│
            │LAST_ACK        0     ││                          ││handshake fail    0      0│
            │LISTEN          0     ││                          ││listener gone     0      0│
            │CLOSING         0     ││                          ││                          │
            └──────────────────────┘└──────────────────────────┘└──────────────────────────┘
            ┌ Stuck sockets by process · sort: urgency ────────────────────────────────────┐
            │PID     PROCESS           STATE      COUNT  OLDEST GROW/MIN       FDS FDS FULL│
            │4242    stubborn          CLOSE_WAIT     3      3s      +60   23/1024  ~17 min│
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            └──────────────────────────────────────────────────────────────────────────────┘
            q quit  p pause  s sort  / filter  ↑↓ select  Enter details  ? help"]],
    );
    let coloured = screen(&s, &ui, (80, 24), true);
    let line = text(&coloured).lines().nth(1).unwrap().to_owned();
    let at = |needle: &str| u16::try_from(line.find(needle).unwrap()).unwrap();
    assert_eq!(coloured[(at("ring 200"), 1)].fg, Color::Red);
    assert_eq!(coloured[(at("dropped 3"), 1)].fg, Color::Red);
    assert_eq!(coloured[(at("missed 0"), 1)].fg, Color::Reset);
    // NO_COLOR: not one cell coloured.
    let plain = screen(&s, &ui, (80, 24), false);
    assert!(plain
        .content
        .iter()
        .all(|c| c.fg == Color::Reset && c.bg == Color::Reset));
}

#[test]
fn golden_tiny_terminal() {
    let s = leak_snapshot();
    let buffer = screen(&s, &Ui::default(), (40, 3), true);
    let expected = Buffer::with_lines(["terminal too small (40x3): tracer top ne", "", ""]);
    assert_eq!(buffer, expected);
}

#[test]
fn golden_help() {
    let mut ui = Ui::default();
    ui.key(Key::Char('?'), &Snapshot::default());
    check(
        &Snapshot::default(),
        &ui,
        &expect![[r"
            tracer top  host   kernel   up 0s
            0 events/s  lost: ring 0  missed 0  dropped 0  cpu -  rss -
            ┌ Sockets by state ────┐┌ Transitions/s ───────────┐┌ Recently ended ──────────┐
            │                      ││                          ││ended          1min  total│
            │                      ││                          ││                          │
            │                      ││                          ││                          │
            │                      ││                          ││                          │
            │             ┌ Keys ────────────────────────────────────────────┐             │
            │             │q, Ctrl-C quit (the summary is printed)           │             │
            │             │p         pause the display (the trace goes on)   │             │
            │             │s         cycle the sort of stuck sockets         │             │
            │             │/         filter by process name, pid or port     │             │
            │             │↑ ↓       select a process                        │             │
            │             │Enter     its stuck sockets                       │             │
            └─────────────│Esc       back                                    │─────────────┘
            ┌ Stuck socket│?         this help                               │─────────────┐
            │no stuck sock└──────────────────────────────────────────────────┘             │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            └──────────────────────────────────────────────────────────────────────────────┘
            q quit  p pause  s sort  / filter  ↑↓ select  Enter details  ? help"]],
    );
}

/// A real capture (the export the offline tests start from) read back through the model: what
/// the screen would have shown at its end.
#[test]
fn the_recorded_export_as_the_screen_shows_it() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/export-v1.ndjson");
    let records: Vec<Record> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let Some(Record::Summary(summary)) = records.last() else {
        panic!("the export ends with its summary");
    };
    let mut model = Model::new(100);
    model.observe(&records);
    let s = model.sample(summary.ts_ns, health(summary.events), &HashMap::new());
    let stuck: Vec<(Option<u32>, Option<&str>, usize)> = s
        .processes
        .iter()
        .map(|r| (r.holder.pid, r.holder.comm.as_deref(), r.count))
        .collect();
    assert_eq!(
        stuck,
        [(Some(9871), Some("python3"), 1)],
        "3 reported, 2 resolved"
    );
    let ended: Vec<(&str, u64)> = s
        .ended
        .iter()
        .map(|e| (e.0.name(), e.2))
        .filter(|e| e.1 > 0)
        .collect();
    assert_eq!(
        ended,
        [
            ("active_close", 4),
            ("passive_close", 4),
            ("reset", 2),
            ("connect_failed", 1)
        ]
    );
    // The other 3 of its 14 timelines were still open: 2 ESTABLISHED, 1 in CLOSE_WAIT.
    let now: Vec<(TcpState, u64)> = s
        .states
        .iter()
        .filter(|r| r.1 > 0)
        .map(|r| (r.0, r.1))
        .collect();
    assert_eq!(now, [(TcpState::Established, 2), (TcpState::CloseWait, 1)]);
    assert_eq!(s.host, "vm");
}

/// A report's diagnosis shows in the detail view; without one its slot is left out.
#[test]
fn the_detail_shows_the_diagnosis_when_a_report_has_one() {
    let mut s = leak_snapshot();
    let d = crate::diagnosis::Diagnosis {
        pid: 4242,
        fds_open: Some(23),
        fds_limit: Some(1024),
        close_wait_held: Some(3),
        ..crate::diagnosis::Diagnosis::default()
    };
    let expected = crate::diagnosis::text::lines(&d, false);
    assert!(!expected.is_empty());
    let mut ui = Ui::default();
    ui.key(Key::Enter, &s);
    let without = text(&screen(&s, &ui, (100, 30), false));
    s.processes[0].diagnosis = Some(d);
    let with = text(&screen(&s, &ui, (100, 30), false));
    for line in &expected {
        assert!(with.contains(line.as_str()), "{line:?} missing:\n{with}");
        assert!(!without.contains(line.as_str()), "{without}");
    }
    assert!(with.contains("127.0.0.1:40000"), "{with}");
}

/// A timeline as the engine writes it, ended by `outcome` with `error` and `reset_by` (JSON
/// values).
fn ended(outcome: &str, error: &str, reset_by: &str) -> Record {
    serde_json::from_str(&format!(
        r#"{{"type":"timeline","ts_ns":1,"time":"1970-01-01T00:00:00.000000Z","skaddr":"0x1","family":"ipv4","laddr":"127.0.0.1","lport":1,"raddr":"127.0.0.1","rport":2,"pid":null,"comm":null,"from_birth":true,"outcome":"{outcome}","error":{error},"reset_by":{reset_by},"duration_ns":null,"states":[]}}"#
    ))
    .unwrap()
}

/// Why connections ended: each cause under its outcome, the most frequent first, in the last
/// minute and in total; the outcomes that never happened make room for them.
#[test]
fn endings_show_their_causes() {
    let mut model = Model::new(100);
    model.observe(&[
        ended("connect_failed", r#""ECONNREFUSED""#, r#""peer""#),
        ended("timeout", r#""ETIMEDOUT""#, "null"),
        ended("reset", "null", r#""peer""#),
        ended("active_close", "null", "null"),
    ]);
    model.sample(S, Health::default(), &HashMap::new());
    model.observe(&[
        ended("connect_failed", r#""ECONNREFUSED""#, r#""peer""#),
        ended("connect_failed", r#""ETIMEDOUT""#, "null"),
        ended("reset", "null", r#""local""#),
    ]);
    let s = model.sample(70 * S, Health::default(), &HashMap::new());
    let causes: Vec<(&str, &str, u64, u64)> = s
        .causes
        .iter()
        .map(|c| (c.0.name(), c.1.as_str(), c.2, c.3))
        .collect();
    assert_eq!(
        causes,
        [
            ("reset", "RST from peer", 0, 1),
            ("reset", "RST sent", 1, 1),
            ("timeout", "ETIMEDOUT", 0, 1),
            ("connect_failed", "ECONNREFUSED", 1, 2),
            ("connect_failed", "ETIMEDOUT", 1, 1),
        ]
    );
    check(
        &s,
        &Ui::default(),
        &expect![[r"
            tracer top  host   kernel   up 1m10s
            0 events/s  lost: ring 0  missed 0  dropped 0  cpu -  rss -
            ┌ Sockets by state ────┐┌ Transitions/s ───────────┐┌ Recently ended ──────────┐
            │ESTABLISHED     0     ││                          ││ended          1min  total│
            │SYN_SENT        0     ││                          ││active close      0      1│
            │SYN_RECV        0     ││                          ││passive close     0      0│
            │FIN_WAIT1       0     ││                          ││reset             1      2│
            │FIN_WAIT2       0     ││                          ││ RST from peer    0      1│
            │TIME_WAIT       0     ││                          ││ RST sent         1      1│
            │CLOSE           0     ││                          ││timeout           0      1│
            │CLOSE_WAIT      0     ││                          ││ ETIMEDOUT        0      1│
            │LAST_ACK        0     ││                          ││connect failed    2      3│
            │LISTEN          0     ││                          ││ ECONNREFUSED     1      2│
            │CLOSING         0     ││                          ││ ETIMEDOUT        1      1│
            └──────────────────────┘└──────────────────────────┘└──────────────────────────┘
            ┌ Stuck sockets by process · sort: urgency ────────────────────────────────────┐
            │no stuck sockets                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            │                                                                              │
            └──────────────────────────────────────────────────────────────────────────────┘
            q quit  p pause  s sort  / filter  ↑↓ select  Enter details  ? help"]],
    );
}
