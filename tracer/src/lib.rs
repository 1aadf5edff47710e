//! tracer: every TCP state transition from the kernel's `sock:inet_sock_set_state`
//! tracepoint, per-connection timelines, and sockets stuck in CLOSE_WAIT with their owner.
//!
//! Only [`probe`] and [`app`] need root and a kernel; everything else is pure and tested from
//! recorded event streams.

pub mod analyze;
pub mod app;
mod close_wait;
pub mod config;
pub mod decode;
pub mod defaults;
pub mod engine;
pub mod error;
pub mod event;
mod export;
mod hash;
pub mod output;
mod owner;
pub mod probe;
pub mod record;
pub mod sink;
#[cfg(test)]
mod testing;
pub mod timeline;
pub mod units;
