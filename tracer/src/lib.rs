//! tracer: every TCP state transition from the kernel's `sock:inet_sock_set_state`
//! tracepoint, per-connection timelines, and sockets stuck in CLOSE_WAIT with their owner.
//!
//! Only [`probe`] and [`app`] need root and a kernel; everything else is pure and tested from
//! recorded event streams.
//!
//! # Modules, in the order data flows through them
//!
//! | step | module | what it does |
//! |---|---|---|
//! | kernel | [`probe`], [`features`] | loads the eBPF program (aya), sets its filters, hands out the ring buffer and the loss counters; detects what the kernel offers |
//! | loop | [`app`] | the event loop: drains the ring buffer, ticks, reads `/proc` off the loop, stops |
//! | decode | [`decode`], [`event`] | ring buffer bytes into a [`event::Transition`] |
//! | causes | [`cause`] | why a connection ended: resets and error reports joined to the transition to CLOSE |
//! | engine | [`engine`] | transitions into records, with `timeline` (per-connection lives), `close_wait` (the detector) and `owner` (who holds a socket: syscall context and `/proc` scans) |
//! | records | [`record`] | the output schema (`docs/schema.md`) |
//! | sinks | [`sink`], [`output`] | records into text or NDJSON, on writer threads; `export` opens the `--export` file |
//! | offline | [`analyze`] | `tracer analyze`: reads an export back and replays it through the engine |
//! | settings | [`config`], [`defaults`], [`error`], [`units`] | validated settings, their defaults, typed errors, time formatting |
//! | live view | [`top`] | `tracer top`: the records as a full-screen view (pure model and keys, ratatui renderer, crossterm driver) |
//! | forecast | [`forecast`] | rates of growth and time to a limit (fd exhaustion), for reports and `tracer top` |
//!
//! The `tracer` binary (`src/bin/tracer`) parses the command line into a [`config::Config`]
//! and calls [`app::run`], [`app::run_top`] or [`analyze::analyze`].
#![warn(missing_docs)]

pub mod analyze;
pub mod app;
pub mod cause;
mod close_wait;
pub mod config;
mod container;
pub mod decode;
pub mod defaults;
pub mod delivery;
pub mod diagnosis;
pub mod engine;
pub mod error;
pub mod event;
mod export;
pub mod features;
pub mod forecast;
mod hash;
mod kernel_offsets;
mod memlock;
pub mod memory;
pub mod metrics;
mod netns;
pub mod output;
mod owner;
pub mod printable;
pub mod probe;
pub mod reads;
pub mod record;
pub mod sink;
mod sock_diag;
pub mod sock_state;
mod stdout;
mod stopping;
#[cfg(test)]
mod testing;
pub mod timeline;
pub mod top;
pub mod units;
