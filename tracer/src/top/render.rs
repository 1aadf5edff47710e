//! Draws the screen from a [`Snapshot`] and the [`Ui`] with ratatui widgets. No I/O: the
//! driver hands in a frame, the tests a `TestBackend`.

use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Cell, Clear, Paragraph, Row, Table, TableState},
    Frame,
};

use super::{
    model::{ProcessRow, Snapshot},
    ui::{Mode, Ui},
    MIN_SIZE,
};
use crate::{forecast::approx, printable::printable_or};

/// Colours, or none at all (`NO_COLOR`).
#[derive(Clone, Copy, Debug)]
struct Palette {
    color: bool,
}

impl Palette {
    fn fg(self, color: Color) -> Style {
        if self.color {
            Style::new().fg(color)
        } else {
            Style::new()
        }
    }

    fn title(self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    fn alarm(self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }
}

/// Draws the whole screen; `color` false draws without colours (`NO_COLOR`).
pub fn draw(frame: &mut Frame, snapshot: &Snapshot, ui: &Ui, color: bool) {
    let area = frame.area();
    if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 {
        let message = format!(
            "terminal too small ({}x{}): tracer top needs {}x{}; q quits",
            area.width, area.height, MIN_SIZE.0, MIN_SIZE.1
        );
        frame.render_widget(Paragraph::new(message), Rect { height: 1, ..area });
        return;
    }
    let p = Palette { color };
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(Paragraph::new(header_lines(snapshot, ui, p)), header);
    if ui.mode == Mode::Detail {
        detail(frame, body, snapshot, ui, p);
    } else {
        overview(frame, body, snapshot, ui, p);
    }
    frame.render_widget(Paragraph::new(footer_line(ui, p)), footer);
    if ui.mode == Mode::Help {
        help(frame, body, p);
    }
}

fn header_lines(s: &Snapshot, ui: &Ui, p: Palette) -> Vec<Line<'static>> {
    let mut first = vec![
        Span::styled("tracer top", p.title()),
        Span::raw(format!(
            "  host {}  kernel {}  up {}",
            s.host,
            s.kernel,
            age(u64::try_from(s.uptime.as_millis()).unwrap_or(u64::MAX))
        )),
    ];
    if ui.paused {
        first.push(Span::styled(
            "  PAUSED (p resumes)",
            p.fg(Color::Yellow).add_modifier(Modifier::REVERSED),
        ));
    }
    let h = &s.health;
    let loss = |label: &str, n: u64| {
        let style = if n > 0 { p.alarm() } else { Style::new() };
        Span::styled(format!("{label} {n}"), style)
    };
    let mut second = vec![
        Span::raw(format!("{:.0} events/s  lost: ", s.events_per_s)),
        loss("ring", h.lost_ringbuf),
        Span::raw("  "),
        loss("missed", h.recursion_misses),
        Span::raw("  "),
        loss("dropped", h.dropped),
    ];
    let cpu = s
        .cpu_percent
        .map_or_else(|| "-".to_owned(), |c| format!("{c:.1}%"));
    let rss = h.rss_bytes.map_or_else(
        || "-".to_owned(),
        |b| format!("{:.1} MiB", super::model::Health::mib(b)),
    );
    second.push(Span::raw(format!("  cpu {cpu}  rss {rss}")));
    vec![Line::from(first), Line::from(second)]
}

fn footer_line(ui: &Ui, p: Palette) -> Line<'static> {
    let key = |k: &'static str| Span::styled(k, p.title());
    let text = |t: &'static str| Span::raw(t);
    match &ui.mode {
        Mode::Filter(typed) => Line::from(vec![
            key("/"),
            Span::raw(format!("{typed}_")),
            text("   Enter apply  Esc cancel"),
        ]),
        Mode::Detail => Line::from(vec![
            key("Esc"),
            text(" back  "),
            key("p"),
            text(" pause  "),
            key("q"),
            text(" quit"),
        ]),
        Mode::List | Mode::Help => Line::from(vec![
            key("q"),
            text(" quit  "),
            key("p"),
            text(" pause  "),
            key("s"),
            text(" sort  "),
            key("/"),
            text(" filter  "),
            key("↑↓"),
            text(" select  "),
            key("Enter"),
            text(" details  "),
            key("?"),
            text(" help"),
        ]),
    }
}

fn overview(frame: &mut Frame, area: Rect, s: &Snapshot, ui: &Ui, p: Palette) {
    let [top, stuck] = Layout::vertical([Constraint::Length(13), Constraint::Min(0)]).areas(area);
    let [states, transitions, ended] = Layout::horizontal([
        Constraint::Length(24),
        Constraint::Fill(1),
        Constraint::Length(28),
    ])
    .areas(top);

    let mut title = " Sockets by state ".to_owned();
    if s.untracked > 0 {
        title = format!(" Sockets by state ({} untracked) ", s.untracked);
    }
    let rows = s.states.iter().map(|(state, now, change)| {
        let change = match change {
            0 => String::new(),
            c => format!("{c:+}"),
        };
        Row::new(vec![
            Cell::from(state.name().into_owned()),
            Cell::from(Line::from(now.to_string()).right_aligned()),
            Cell::from(Line::from(change).right_aligned()),
        ])
    });
    let table = Table::new(
        rows,
        [
            Constraint::Length(11),
            Constraint::Length(5),
            Constraint::Length(4),
        ],
    )
    .block(Block::bordered().title(Span::styled(title, p.title())));
    frame.render_widget(table, states);

    let rows = s.transitions.iter().map(|(old, new, rate)| {
        Row::new(vec![
            Cell::from(format!("{}→{}", short(*old), short(*new))),
            Cell::from(Line::from(format!("{rate:.1}")).right_aligned()),
        ])
    });
    let table = Table::new(rows, [Constraint::Fill(1), Constraint::Length(6)])
        .block(Block::bordered().title(Span::styled(" Transitions/s ", p.title())));
    frame.render_widget(table, transitions);

    let room = usize::from(ended.height.saturating_sub(3));
    let rows = ended_rows(s, room).into_iter().map(|row| match row {
        EndedRow::Outcome(outcome, recent, total) => {
            let style = if recent > 0 && !matches!(outcome.name(), "active_close" | "passive_close")
            {
                p.fg(Color::Yellow)
            } else {
                Style::new()
            };
            Row::new(vec![
                Cell::from(ending(outcome)),
                Cell::from(Line::from(recent.to_string()).right_aligned()),
                Cell::from(Line::from(total.to_string()).right_aligned()),
            ])
            .style(style)
        }
        EndedRow::Cause(why, recent, total) => Row::new(vec![
            Cell::from(format!(" {why}")),
            Cell::from(Line::from(recent.to_string()).right_aligned()),
            Cell::from(Line::from(total.to_string()).right_aligned()),
        ])
        .style(p.fg(Color::DarkGray)),
    });
    let table = Table::new(
        rows,
        [
            Constraint::Fill(1),
            Constraint::Length(4),
            Constraint::Length(6),
        ],
    )
    .header(Row::new(vec![
        Cell::from("ended"),
        Cell::from(Line::from("1min").right_aligned()),
        Cell::from(Line::from("total").right_aligned()),
    ]))
    .block(Block::bordered().title(Span::styled(" Recently ended ", p.title())));
    frame.render_widget(table, ended);

    processes(frame, stuck, s, ui, p);
}

fn processes(frame: &mut Frame, area: Rect, s: &Snapshot, ui: &Ui, p: Palette) {
    let rows = ui.rows(s);
    let mut title = format!(" Stuck sockets by process · sort: {} ", ui.sort.name());
    if !ui.filter.is_empty() {
        title.push_str(&format!("· filter: {} ", ui.filter));
    }
    let block = Block::bordered().title(Span::styled(title, p.title()));
    if rows.is_empty() {
        let text = if s.processes.is_empty() {
            "no stuck sockets"
        } else {
            "no process matches the filter"
        };
        frame.render_widget(Paragraph::new(text).block(block), area);
        return;
    }
    let containers = rows.iter().any(|r| r.container.is_some());
    let lines = rows.iter().map(|r| {
        let urgent = r.forecast.is_some() || r.growth_per_min.is_some_and(|g| g > 0.0);
        let style = if urgent { p.alarm() } else { Style::new() };
        let mut cells = vec![
            Cell::from(
                r.holder
                    .pid
                    .map_or_else(|| "?".to_owned(), |p| p.to_string()),
            ),
            Cell::from(printable_or(r.holder.comm.as_deref(), "?").into_owned()),
        ];
        if containers {
            cells.push(Cell::from(r.container.as_deref().unwrap_or("-").to_owned()));
        }
        cells.extend([
            Cell::from(r.holder.state.name().into_owned()),
            Cell::from(Line::from(r.count.to_string()).right_aligned()),
            Cell::from(Line::from(age(r.oldest_ms)).right_aligned()),
            Cell::from(Line::from(growth(r.growth_per_min)).right_aligned()),
            Cell::from(Line::from(fds(r)).right_aligned()),
            Cell::from(
                Line::from(r.forecast.map_or_else(|| "-".to_owned(), approx))
                    .right_aligned()
                    .style(style),
            ),
        ]);
        Row::new(cells)
    });
    let mut widths = vec![Constraint::Length(7), Constraint::Fill(3)];
    let mut header = vec![Cell::from("PID"), Cell::from("PROCESS")];
    if containers {
        widths.push(Constraint::Fill(2));
        header.push(Cell::from("CONTAINER"));
    }
    widths.extend([
        Constraint::Length(10),
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(8),
    ]);
    header.extend([
        Cell::from("STATE"),
        Cell::from(Line::from("COUNT").right_aligned()),
        Cell::from(Line::from("OLDEST").right_aligned()),
        Cell::from(Line::from("GROW/MIN").right_aligned()),
        Cell::from(Line::from("FDS").right_aligned()),
        Cell::from(Line::from("FDS FULL").right_aligned()),
    ]);
    let table = Table::new(lines, widths)
        .header(Row::new(header).style(Style::new().add_modifier(Modifier::BOLD)))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
        .block(block);
    let mut state = TableState::default().with_selected(ui.selected_index(&rows));
    frame.render_stateful_widget(table, area, &mut state);
}

fn detail(frame: &mut Frame, area: Rect, s: &Snapshot, ui: &Ui, p: Palette) {
    let row = ui
        .selected
        .as_ref()
        .and_then(|h| s.processes.iter().find(|r| &r.holder == h));
    let Some(h) = ui.selected.as_ref() else {
        return;
    };
    let title = format!(
        " pid {} {} · {} ",
        h.pid.map_or_else(|| "?".to_owned(), |p| p.to_string()),
        printable_or(h.comm.as_deref(), "?"),
        h.state.name()
    );
    let block = Block::bordered().title(Span::styled(title, p.title()));
    let Some(row) = row else {
        let text = "it holds no stuck socket any more (Esc goes back)";
        frame.render_widget(Paragraph::new(text).block(block), area);
        return;
    };
    let inner = block.inner(area);
    frame.render_widget(block, area);
    // The diagnosis, when a report carried one: its slot is left out otherwise.
    let diagnosis: Vec<Line> = row
        .diagnosis
        .as_ref()
        .map(|d| crate::diagnosis::text::lines(d, false))
        .unwrap_or_default()
        .into_iter()
        .map(Line::from)
        .collect();
    let lines = u16::try_from(diagnosis.len()).unwrap_or(u16::MAX);
    let [summary, why, sockets] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(lines.min(inner.height / 2)),
        Constraint::Min(0),
    ])
    .areas(inner);
    frame.render_widget(Paragraph::new(diagnosis), why);
    let mut facts = vec![Span::raw(format!(
        "{} stuck · oldest {} · {} per min · fds {}",
        row.count,
        age(row.oldest_ms),
        growth(row.growth_per_min),
        fds(row)
    ))];
    if let Some(left) = row.forecast {
        facts.push(Span::styled(
            format!(" · fd limit in {}", approx(left)),
            p.alarm(),
        ));
    }
    let second = format!("container {}", row.container.as_deref().unwrap_or("-"));
    frame.render_widget(
        Paragraph::new(vec![Line::from(facts), Line::from(second)]),
        summary,
    );
    let lines = row.sockets.iter().map(|(socket, age_ms)| {
        let mut age_text = age(*age_ms);
        if socket.age_at_least {
            age_text.insert(0, '≥');
        }
        Row::new(vec![
            Cell::from(socket.local.to_string()),
            Cell::from(socket.remote.to_string()),
            Cell::from(Line::from(age_text).right_aligned()),
            Cell::from(
                Line::from(
                    socket
                        .recv_q
                        .map_or_else(|| "-".to_owned(), |q| q.to_string()),
                )
                .right_aligned(),
            ),
            Cell::from(
                Line::from(socket.fd.map_or_else(|| "-".to_owned(), |f| f.to_string()))
                    .right_aligned(),
            ),
            Cell::from(
                Line::from(
                    socket
                        .netns
                        .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                )
                .right_aligned(),
            ),
        ])
    });
    let table = Table::new(
        lines,
        [
            Constraint::Fill(1),
            Constraint::Fill(1),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(5),
            Constraint::Length(11),
        ],
    )
    .header(
        Row::new(vec![
            Cell::from("LOCAL"),
            Cell::from("REMOTE"),
            Cell::from(Line::from("AGE").right_aligned()),
            Cell::from(Line::from("RECV-Q").right_aligned()),
            Cell::from(Line::from("FD").right_aligned()),
            Cell::from(Line::from("NETNS").right_aligned()),
        ])
        .style(Style::new().add_modifier(Modifier::BOLD)),
    );
    frame.render_widget(table, sockets);
}

fn help(frame: &mut Frame, area: Rect, p: Palette) {
    let lines = [
        ("q, Ctrl-C", "quit (the summary is printed)"),
        ("p", "pause the display (the trace goes on)"),
        ("s", "cycle the sort of stuck sockets"),
        ("/", "filter by process name, pid or port"),
        ("↑ ↓", "select a process"),
        ("Enter", "its stuck sockets"),
        ("Esc", "back"),
        ("?", "this help"),
    ];
    let text: Vec<Line> = lines
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:<10}"), p.title()),
                Span::raw(*what),
            ])
        })
        .collect();
    let height = u16::try_from(text.len()).unwrap_or(8) + 2;
    let width = 52.min(area.width);
    let popup = Rect {
        x: area.x + area.width.saturating_sub(width) / 2,
        y: area.y + area.height.saturating_sub(height) / 2,
        width,
        height: height.min(area.height),
    };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(text).block(Block::bordered().title(Span::styled(" Keys ", p.title()))),
        popup,
    );
}

/// A state's name, with ESTABLISHED shortened as `ss` does, to fit transitions in 80 columns.
fn short(state: crate::event::TcpState) -> std::borrow::Cow<'static, str> {
    match state {
        crate::event::TcpState::Established => "ESTAB".into(),
        other => other.name(),
    }
}

/// A line of the "Recently ended" panel: an outcome, or one of its causes under it.
#[derive(Clone, Debug, PartialEq)]
enum EndedRow<'a> {
    Outcome(crate::timeline::Outcome, u64, u64),
    Cause(&'a str, u64, u64),
}

/// The panel's lines in `room` rows: every outcome, each followed by its causes; when they do
/// not fit, the outcomes that never happened (and have no cause) go first, from the bottom.
fn ended_rows(s: &Snapshot, room: usize) -> Vec<EndedRow<'_>> {
    let mut groups: Vec<Vec<EndedRow<'_>>> = s
        .ended
        .iter()
        .map(|&(outcome, recent, total)| {
            let mut group = vec![EndedRow::Outcome(outcome, recent, total)];
            group.extend(
                s.causes
                    .iter()
                    .filter(|c| c.0 == outcome)
                    .map(|c| EndedRow::Cause(&c.1, c.2, c.3)),
            );
            group
        })
        .collect();
    let mut lines: usize = groups.iter().map(Vec::len).sum();
    while lines > room {
        let Some(i) = groups
            .iter()
            .rposition(|g| matches!(g[..], [EndedRow::Outcome(_, _, 0)]))
        else {
            break;
        };
        groups.remove(i);
        lines -= 1;
    }
    groups.into_iter().flatten().take(room).collect()
}

/// How a connection ended, in at most 14 columns.
fn ending(outcome: crate::timeline::Outcome) -> &'static str {
    use crate::timeline::Outcome;
    match outcome {
        Outcome::ActiveClose => "active close",
        Outcome::PassiveClose => "passive close",
        Outcome::SimultaneousClose => "simultaneous",
        Outcome::Reset => "reset",
        Outcome::Timeout => "timeout",
        Outcome::Aborted => "aborted",
        Outcome::ConnectFailed => "connect failed",
        Outcome::HandshakeFailed => "handshake fail",
        Outcome::ListenerClosed => "listener gone",
        Outcome::Open => "open",
    }
}

/// An age as `42s`, `3m05s`, `2h10m` or `4d03h`.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

fn growth(per_min: Option<f64>) -> String {
    match per_min {
        None => "-".to_owned(),
        Some(g) if g.abs() < 10.0 => format!("{g:+.1}"),
        Some(g) => format!("{g:+.0}"),
    }
}

fn fds(r: &ProcessRow) -> String {
    match r.fds {
        None => "-".to_owned(),
        Some(u) => match u.limit {
            Some(limit) => format!("{}/{limit}", u.open),
            None => format!("{}/∞", u.open),
        },
    }
}
