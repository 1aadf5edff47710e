//! The analysis as text tables: the end of `tracer analyze` output.

use std::fmt::Write as _;

use crate::{printable::printable_or, record::AnalysisRecord, units::ms};

/// Findings listed one by one in text; the JSON record has them all.
const LISTED: usize = 20;
/// Processes listed in text.
const TOP: usize = 10;

/// Several lines, without a final newline.
pub fn render(r: &AnalysisRecord) -> String {
    let mut out = String::new();
    let _ = write_all(&mut out, r);
    out.truncate(out.trim_end().len());
    out
}

fn write_all(out: &mut String, r: &AnalysisRecord) -> std::fmt::Result {
    writeln!(
        out,
        "ANALYSIS host={} from {} to {}{}",
        r.hostname.as_deref().unwrap_or("-"),
        r.start_time.as_deref().unwrap_or("-"),
        r.end_time,
        if r.clean_end {
            ""
        } else {
            " (no summary: the tracer did not stop cleanly)"
        },
    )?;
    writeln!(
        out,
        "  {} connection(s), {} record(s) lost by the traced run, {} warning(s)",
        r.connections, r.lost, r.warnings
    )?;
    if !r.outcomes.is_empty() {
        writeln!(out, "\n{:<20} {:>8}", "OUTCOME", "COUNT")?;
        for o in &r.outcomes {
            writeln!(out, "{:<20} {:>8}", o.outcome.name(), o.count)?;
        }
    }
    if !r.dwell.is_empty() {
        writeln!(
            out,
            "\n{:<12} {:>8} {:>12} {:>12} {:>12} {:>12}",
            "STATE", "COUNT", "P50_MS", "P90_MS", "P99_MS", "MAX_MS"
        )?;
        for d in &r.dwell {
            writeln!(
                out,
                "{:<12} {:>8} {:>12} {:>12} {:>12} {:>12}",
                d.state,
                d.count,
                ms(d.p50_ns),
                ms(d.p90_ns),
                ms(d.p99_ns),
                ms(d.max_ns)
            )?;
        }
    }
    close_wait(out, r)
}

fn close_wait(out: &mut String, r: &AnalysisRecord) -> std::fmt::Result {
    let live = r.close_wait.iter().filter(|f| f.reported_live).count();
    writeln!(
        out,
        "\nCLOSE_WAIT for {}ms or more: {} socket(s), {} of them reported by the traced run",
        ms(r.close_wait_threshold_ns).trim_end_matches(".000"),
        r.close_wait.len(),
        live
    )?;
    if r.close_wait.is_empty() {
        return Ok(());
    }
    if r.lost > 0 && r.close_wait.iter().any(|f| f.left_to.is_none()) {
        writeln!(
            out,
            "(the traced run lost {} record(s): a socket shown still in CLOSE_WAIT may have left it in one of them)",
            r.lost
        )?;
    }
    writeln!(
        out,
        "{:<8} {:<16} {:>8} {:>12}",
        "PID", "COMM", "SOCKETS", "OLDEST_MS"
    )?;
    for p in r.top_processes.iter().take(TOP) {
        writeln!(
            out,
            "{:<8} {:<16} {:>8} {:>12}",
            p.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            printable_or(p.comm.as_deref(), "-"),
            p.sockets,
            p.oldest_ms
        )?;
    }
    if r.top_processes.len() > TOP {
        writeln!(out, "... {} more process(es)", r.top_processes.len() - TOP)?;
    }
    writeln!(out)?;
    for f in r.close_wait.iter().take(LISTED) {
        writeln!(
            out,
            "  {}{}ms pid={} comm={} {} <- {} {}{}",
            if f.age_at_least { ">=" } else { "" },
            f.age_ms,
            f.pid.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            printable_or(f.comm.as_deref(), "-"),
            endpoint(f.laddr, f.lport),
            endpoint(f.raddr, f.rport),
            f.left_to
                .map_or_else(|| "still in CLOSE_WAIT".to_owned(), |s| format!("-> {s}")),
            if f.reported_live {
                " (reported live)"
            } else {
                ""
            },
        )?;
    }
    if r.close_wait.len() > LISTED {
        writeln!(
            out,
            "  ... {} more (see --json)",
            r.close_wait.len() - LISTED
        )?;
    }
    Ok(())
}

fn endpoint(ip: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}
