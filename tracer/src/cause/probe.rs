//! Loads and attaches the cause programs (`tcp:tcp_send_reset`, `tcp:tcp_receive_reset`,
//! `sock:inet_sk_error_report`), each only where the kernel has the tracepoint with the record
//! layout the program reads. What is left out is said once, at start, with the field it leaves
//! null; the transitions are traced either way.

use std::{fs, path::Path};

use aya::{
    maps::{MapData, PerCpuArray},
    programs::TracePoint,
    Ebpf,
};
use tracer_common::{
    cause::{
        error_report, receive_reset, send_reset, CAUSE_STATS_MAP, ERROR_REPORT_PROGRAM,
        RECEIVE_RESET_PROGRAM, SEND_RESET_PROGRAM,
    },
    tracepoint::Field,
};

/// One cause tracepoint: where it is, which program reads it, and what is lost without it.
struct CauseTracepoint {
    category: &'static str,
    name: &'static str,
    program: &'static str,
    fields: &'static [Field],
    without: &'static str,
}

/// The cause tracepoints, as `category/name` in [`crate::features::TRACEPOINTS`].
const CAUSES: [CauseTracepoint; 3] = [
    CauseTracepoint {
        category: "tcp",
        name: "tcp_send_reset",
        program: SEND_RESET_PROGRAM,
        fields: &send_reset::FIELDS,
        without: "`reset_by` cannot be \"local\"",
    },
    CauseTracepoint {
        category: "tcp",
        name: "tcp_receive_reset",
        program: RECEIVE_RESET_PROGRAM,
        fields: &receive_reset::FIELDS,
        without: "`reset_by` cannot be \"peer\"",
    },
    CauseTracepoint {
        category: "sock",
        name: "inet_sk_error_report",
        program: ERROR_REPORT_PROGRAM,
        fields: &error_report::FIELDS,
        without: "`error` stays null and a timeout cannot be told from other aborts",
    },
];

/// The error-report tracepoint, as `category/name`.
pub const ERROR_REPORT: &str = "sock/inet_sk_error_report";

/// The cause programs attached, and their loss counter.
pub struct CauseProbes {
    /// The tracepoints attached, as `category/name`.
    pub attached: Vec<String>,
    /// [`CAUSE_STATS_MAP`]; `None` when it could not be opened (then nothing is attached).
    stats: Option<PerCpuArray<MapData, u64>>,
}

impl CauseProbes {
    /// Attaches every cause program the kernel allows. Never fails: each one left out is
    /// logged (once, as a warning) with why and what it costs.
    pub fn attach(ebpf: &mut Ebpf, tracefs: &Path) -> CauseProbes {
        let stats = ebpf
            .take_map(CAUSE_STATS_MAP)
            .ok_or_else(|| "the eBPF object has no cause loss counter".to_owned())
            .and_then(|map| PerCpuArray::try_from(map).map_err(|e| e.to_string()));
        let stats = match stats {
            Ok(stats) => stats,
            Err(why) => {
                log::warn!(
                    "not tracing why connections end: {why}; `error` and `reset_by` stay null"
                );
                return CauseProbes {
                    attached: Vec::new(),
                    stats: None,
                };
            }
        };
        let mut attached = Vec::new();
        for tp in &CAUSES {
            match attach_one(ebpf, tracefs, tp) {
                Ok(()) => attached.push(format!("{}/{}", tp.category, tp.name)),
                Err(why) => log::warn!(
                    "not tracing {}:{}: {why}; {}",
                    tp.category,
                    tp.name,
                    tp.without
                ),
            }
        }
        CauseProbes {
            attached,
            stats: Some(stats),
        }
    }

    /// Causes lost because the ring buffer was full, summed over CPUs.
    pub fn lost(&self) -> u64 {
        self.stats
            .as_ref()
            .and_then(|s| s.get(&0, 0).ok())
            .map_or(0, |per_cpu| per_cpu.iter().sum())
    }

    /// `inet_sk_error_report` is attached: transitions to CLOSE may wait for their error.
    pub fn error_reports(&self) -> bool {
        self.attached.iter().any(|a| a == ERROR_REPORT)
    }
}

fn attach_one(ebpf: &mut Ebpf, tracefs: &Path, tp: &CauseTracepoint) -> Result<(), String> {
    attach_checked(ebpf, tracefs, (tp.category, tp.name), tp.program, tp.fields)
}

/// Loads `program` and attaches it to the classic tracepoint `category/name`, only where the
/// kernel has it with the record layout `fields` describe. The error says why not, as a phrase.
pub(crate) fn attach_checked(
    ebpf: &mut Ebpf,
    tracefs: &Path,
    (category, name): (&str, &str),
    program: &str,
    fields: &[Field],
) -> Result<(), String> {
    let format_path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let format = fs::read_to_string(&format_path)
        .map_err(|_| "this kernel does not have the tracepoint".to_owned())?;
    let wrong = super::format::mismatches(fields, &format);
    if !wrong.is_empty() {
        return Err(format!(
            "its record differs from the one the program reads ({})",
            wrong.join("; ")
        ));
    }
    let program: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("the eBPF object has no program {program}"))?
        .try_into()
        .map_err(|e| format!("reading the program: {e}"))?;
    program
        .load()
        .map_err(|e| format!("loading the program failed: {e}"))?;
    program
        .attach(category, name)
        .map_err(|e| format!("attaching failed: {e}"))?;
    Ok(())
}
