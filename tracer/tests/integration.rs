//! The tracer's integration tests: one test binary (`cargo test --test integration`) with one
//! shared [`support`] module.
//!
//! - [`suite::cli`], [`suite::analyze`], [`suite::analyze_fuzz`]: the
//!   command line, `tracer analyze` and the export, through the binary; [`suite::schema`]:
//!   docs/schema.md against the records written. No root.
//! - [`suite::privileged`], [`suite::privileged_export`], [`suite::reliability`],
//!   [`suite::accounting`], [`suite::tracepoint`], [`suite::hooks`]: the real eBPF program on the real kernel. They need root and BPF,
//!   so they are `#[ignore]`d for a plain `cargo test`; `cargo xtask test` runs them as root,
//!   one at a time, each in a network namespace of its own ([`support::NetNs`]), and they
//!   fail, never skip, without root.

mod suite;
mod support;
