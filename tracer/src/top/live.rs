//! `tracer top` inside the event loop ([`crate::app::run_top`]): the records the engine makes
//! go to the [`Top`] (through the stream's `--pid` filter), every interval the model is sampled
//! and drawn, and the terminal's keys act on it.

use std::{io, time::Duration};

use super::{
    model::Health,
    terminal::{Input, Screen},
    ui::Action,
    Options, Top,
};
use crate::{
    metrics::process::fd_usages,
    record::{Header, Record},
    sink::Filter,
};

/// What a terminal event asks of the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Keep going.
    Continue,
    /// Leave: `q`, Ctrl-C, or the terminal is gone.
    Quit,
}

/// The live screen: the model and the terminal.
pub struct Live {
    top: Top,
    screen: Screen,
    filter: Filter,
    interval_ns: u64,
    sampled_ns: Option<u64>,
}

impl Live {
    /// Takes the terminal and shows an empty screen for the run `header` describes; records
    /// of other processes than `pids` (when given) are left out, as the stream leaves them out.
    ///
    /// # Errors
    /// When the terminal cannot be set up or drawn on.
    pub fn start(
        header: &Header,
        pids: &[u32],
        max_sockets: usize,
        options: &Options,
    ) -> io::Result<Self> {
        let mut top = Top::new(max_sockets);
        top.observe([&Record::Header(Box::new(header.clone()))]);
        let mut live = Self {
            top,
            screen: Screen::enter()?,
            filter: Filter {
                pids: pids.iter().copied().collect(),
                ..Filter::everything()
            },
            interval_ns: u64::try_from(options.interval.as_nanos()).unwrap_or(u64::MAX),
            sampled_ns: None,
        };
        live.screen.draw(&live.top)?;
        Ok(live)
    }

    /// Takes a batch of records as the engine made them.
    pub fn observe(&mut self, batch: &[Record]) {
        if self.filter.is_everything() {
            self.top.observe(batch);
        } else {
            for record in batch {
                if let Some(kept) = self.filter.apply(record) {
                    self.top.observe([&*kept]);
                }
            }
        }
    }

    /// Is a refresh due at `now_ns`?
    pub fn due(&self, now_ns: u64) -> bool {
        self.sampled_ns
            .is_none_or(|at| now_ns.saturating_sub(at) >= self.interval_ns)
    }

    /// Samples the model at `now_ns` (reading the holders' descriptors off the loop's thread)
    /// and draws it.
    ///
    /// # Errors
    /// When drawing fails.
    pub async fn refresh(&mut self, now_ns: u64, health: Health) -> io::Result<()> {
        let fds = fd_usages(self.top.pids()).await;
        self.top.sample(now_ns, health, &fds);
        self.sampled_ns = Some(now_ns);
        self.screen.draw(&self.top)
    }

    /// Waits for the terminal's next event and acts on it.
    ///
    /// # Errors
    /// When drawing fails.
    pub async fn input(&mut self) -> io::Result<Request> {
        match self.screen.next().await {
            Input::Key(key) => match self.top.key(key) {
                Action::Quit => return Ok(Request::Quit),
                Action::Redraw => self.screen.draw(&self.top)?,
                Action::None => {}
            },
            Input::Resize => self.screen.draw(&self.top)?,
            Input::Other => {}
            Input::Closed => return Ok(Request::Quit),
        }
        Ok(Request::Continue)
    }

    /// Gives the terminal back.
    ///
    /// # Errors
    /// When the terminal cannot be restored.
    pub fn leave(self) -> io::Result<()> {
        self.screen.leave()
    }
}

/// How long `--interval` is by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
