//! What the operator chose: the sort, the filter, the selected process, the open view, and
//! whether the display is paused. Pure: keys come in as [`Key`]s and change the [`Ui`].

use std::cmp::Ordering;

use super::model::{Holder, ProcessRow, Snapshot};

/// The orders of the stuck-sockets panel; `s` cycles through them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    /// The soonest descriptor exhaustion first, then the fastest growth, then the most sockets.
    #[default]
    Urgency,
    /// The most stuck sockets first.
    Count,
    /// The oldest stuck socket first.
    Oldest,
    /// The fastest growth first.
    Growth,
    /// By process name, then pid.
    Process,
}

impl Sort {
    /// The next order in the cycle.
    pub fn next(self) -> Self {
        match self {
            Sort::Urgency => Sort::Count,
            Sort::Count => Sort::Oldest,
            Sort::Oldest => Sort::Growth,
            Sort::Growth => Sort::Process,
            Sort::Process => Sort::Urgency,
        }
    }

    /// Its name, as the panel's title shows it.
    pub fn name(self) -> &'static str {
        match self {
            Sort::Urgency => "urgency",
            Sort::Count => "count",
            Sort::Oldest => "oldest",
            Sort::Growth => "growth",
            Sort::Process => "process",
        }
    }

    fn compare(self, a: &ProcessRow, b: &ProcessRow) -> Ordering {
        let growth = |r: &ProcessRow| r.growth_per_min.unwrap_or(0.0);
        let by_count = b.count.cmp(&a.count).then(b.oldest_ms.cmp(&a.oldest_ms));
        let order = match self {
            Sort::Urgency => match (a.forecast, b.forecast) {
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            }
            .then(growth(b).total_cmp(&growth(a)))
            .then(by_count),
            Sort::Count => by_count,
            Sort::Oldest => b.oldest_ms.cmp(&a.oldest_ms).then(b.count.cmp(&a.count)),
            Sort::Growth => growth(b).total_cmp(&growth(a)).then(by_count),
            Sort::Process => a.holder.comm.cmp(&b.holder.comm),
        };
        order.then_with(|| a.holder.cmp(&b.holder))
    }
}

/// A key the screen acts on (the terminal driver maps the terminal's keys to these).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// A character key (Ctrl-C aside, which is `Interrupt`).
    Char(char),
    /// Enter (Return).
    Enter,
    /// Escape.
    Esc,
    /// Up arrow.
    Up,
    /// Down arrow.
    Down,
    /// Backspace.
    Backspace,
    /// Ctrl-C: quits, whatever view is open.
    Interrupt,
}

/// Which view is open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// The overview.
    #[default]
    List,
    /// The selected process's stuck sockets.
    Detail,
    /// The key help, over the overview.
    Help,
    /// Typing a filter (the text so far).
    Filter(String),
}

/// What a key asks of the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Draw again.
    Redraw,
    /// Leave `tracer top`.
    Quit,
    /// Nothing changed.
    None,
}

/// The operator's choices.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ui {
    /// Order of the stuck-sockets panel.
    pub sort: Sort,
    /// Keep only processes whose name contains this (case-insensitive), or, when it is a
    /// number, whose pid or sockets' ports are this number; empty keeps all.
    pub filter: String,
    /// The open view.
    pub mode: Mode,
    /// The selected process (kept across refreshes by identity, not by position).
    pub selected: Option<Holder>,
    /// The display is frozen (the trace goes on).
    pub paused: bool,
}

impl Ui {
    /// The rows of `snapshot` this UI shows, filtered and in order.
    pub fn rows<'a>(&self, snapshot: &'a Snapshot) -> Vec<&'a ProcessRow> {
        let mut rows: Vec<&ProcessRow> = snapshot
            .processes
            .iter()
            .filter(|r| matches(&self.filter, r))
            .collect();
        rows.sort_by(|a, b| self.sort.compare(a, b));
        rows
    }

    /// The selected row among `rows`: the selected process, or else the first.
    pub fn selected_index(&self, rows: &[&ProcessRow]) -> Option<usize> {
        if rows.is_empty() {
            return None;
        }
        Some(
            self.selected
                .as_ref()
                .and_then(|h| rows.iter().position(|r| &r.holder == h))
                .unwrap_or(0),
        )
    }

    /// Acts on a key, given what the screen shows.
    pub fn key(&mut self, key: Key, snapshot: &Snapshot) -> Action {
        if key == Key::Interrupt {
            return Action::Quit;
        }
        if let Mode::Filter(text) = &mut self.mode {
            match key {
                Key::Char(c) => text.push(c),
                Key::Backspace => {
                    text.pop();
                }
                Key::Enter => {
                    self.filter = std::mem::take(text);
                    self.mode = Mode::List;
                }
                Key::Esc => self.mode = Mode::List,
                _ => return Action::None,
            }
            return Action::Redraw;
        }
        match key {
            Key::Char('q') => return Action::Quit,
            Key::Char('p') => self.paused = !self.paused,
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char('/') => self.mode = Mode::Filter(self.filter.clone()),
            Key::Char('?') => {
                self.mode = if self.mode == Mode::Help {
                    Mode::List
                } else {
                    Mode::Help
                };
            }
            Key::Esc => self.mode = Mode::List,
            Key::Enter if self.mode == Mode::List => {
                let rows = self.rows(snapshot);
                match self.selected_index(&rows) {
                    Some(i) => {
                        self.selected = Some(rows[i].holder.clone());
                        self.mode = Mode::Detail;
                    }
                    None => return Action::None,
                }
            }
            Key::Up | Key::Down if self.mode == Mode::List => {
                let rows = self.rows(snapshot);
                let Some(i) = self.selected_index(&rows) else {
                    return Action::None;
                };
                let i = if key == Key::Up {
                    i.saturating_sub(1)
                } else {
                    (i + 1).min(rows.len() - 1)
                };
                self.selected = Some(rows[i].holder.clone());
            }
            _ => return Action::None,
        }
        Action::Redraw
    }
}

/// Does `row` pass the filter?
fn matches(filter: &str, row: &ProcessRow) -> bool {
    let filter = filter.trim();
    if filter.is_empty() {
        return true;
    }
    if let Ok(n) = filter.parse::<u32>() {
        let port = u16::try_from(n).ok();
        return row.holder.pid == Some(n)
            || row
                .sockets
                .iter()
                .any(|(s, _)| port.is_some_and(|p| s.local.port() == p || s.remote.port() == p));
    }
    row.holder
        .comm
        .as_deref()
        .is_some_and(|c| c.to_lowercase().contains(&filter.to_lowercase()))
}
