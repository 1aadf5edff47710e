//! `tracer top`: a live full-screen view of the host's connections, leaks and the tracer's
//! health, fed by the same engine and event loop as the stream ([`crate::app::run_top`]).
//!
//! Split in three:
//! - [`model`] (pure): what the screen holds, built from the engine's records
//!   ([`model::Model::observe`]) and sampled once an interval ([`model::Model::sample`]);
//!   rates and forecasts come from [`crate::forecast`];
//! - [`ui`] (pure): the operator's choices (sort, filter, selection, view, pause) and keys;
//! - [`render`]: ratatui widgets drawn from a [`model::Snapshot`] and the [`ui::Ui`];
//! - [`live`]: the glue the event loop calls;
//! - [`terminal`]: the thin driver (crossterm raw mode and alternate screen, restored on
//!   every way out, and the terminal's key events).

pub mod live;
pub mod model;
pub mod render;
pub mod terminal;
pub mod ui;

#[cfg(test)]
mod tests;

use std::{collections::HashMap, time::Duration};

use crate::{metrics::FdUsage, record::Record};
use model::{Health, Model, Snapshot};
use ui::{Action, Key, Ui};

/// Settings of `tracer top` on top of the trace's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// How often the screen is refreshed (`--interval`).
    pub interval: Duration,
}

/// The smallest terminal the screen fits in; a smaller one shows a one-line message.
pub const MIN_SIZE: (u16, u16) = (80, 24);

/// The screen's state: the model, the operator's choices and the snapshot on display.
#[derive(Debug)]
pub struct Top {
    model: Model,
    /// The operator's choices.
    pub ui: Ui,
    /// The latest sample.
    latest: Snapshot,
    /// What the screen shows: the latest sample, or the one on screen when paused.
    pub shown: Snapshot,
}

impl Top {
    /// A screen with nothing sampled yet; `max_sockets` as [`Model::new`].
    pub fn new(max_sockets: usize) -> Self {
        Self {
            model: Model::new(max_sockets),
            ui: Ui::default(),
            latest: Snapshot::default(),
            shown: Snapshot::default(),
        }
    }

    /// Takes records as the engine makes them.
    pub fn observe<'a>(&mut self, records: impl IntoIterator<Item = &'a Record>) {
        self.model.observe(records);
    }

    /// The processes whose descriptors [`Top::sample`] wants.
    pub fn pids(&self) -> Vec<u32> {
        self.model.pids()
    }

    /// Samples the model (see [`Model::sample`]); the screen shows it unless paused.
    pub fn sample(&mut self, now_ns: u64, health: Health, fds: &HashMap<u32, FdUsage>) {
        self.latest = self.model.sample(now_ns, health, fds);
        if !self.ui.paused {
            self.shown = self.latest.clone();
        }
    }

    /// Acts on a key; leaving pause shows the latest sample at once.
    pub fn key(&mut self, key: Key) -> Action {
        let action = self.ui.key(key, &self.shown);
        if !self.ui.paused {
            self.shown.clone_from(&self.latest);
        }
        action
    }
}
