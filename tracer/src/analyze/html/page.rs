//! The HTML page: findings in words first, then the capture, the state diagram, the pile-up,
//! the Gantt, outcomes and dwell times. One file: styles and the small consistency check are
//! inline, and a Content-Security-Policy forbids every network load.

use std::fmt::Write as _;

use serde_json::json;

use super::{
    charts::{self, Figure},
    collect::{Collector, Edge, Reason, EDGE_SAMPLE, MAX_LOST},
    diagram, words,
};
use crate::{event::TcpState, record::AnalysisRecord, sink::Sink};

/// Findings listed one by one (all are counted).
pub const LISTED: usize = 20;
/// Processes described in words.
pub const PROCESSES: usize = 10;

const STYLE: &str = include_str!("style.css");
const CHECK: &str = include_str!("check.js");

/// The whole page.
pub fn render<S: Sink>(c: &Collector<S>, a: &AnalysisRecord) -> String {
    let mut out = String::with_capacity(256 * 1024);
    let title = format!(
        "TCP report: {} from {}",
        a.hostname.as_deref().unwrap_or("unknown host"),
        a.start_time.as_deref().unwrap_or("an unknown start")
    );
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"generator\" content=\"tracer {}\">\n<title>{}</title>\n<style>{STYLE}</style></head>\n\
         <body data-report=\"tracer-analyze-html\">\n<header><h1>{}</h1>\n",
        env!("CARGO_PKG_VERSION"),
        words::escape(&title),
        words::escape(&title)
    );
    out.push_str(&losses_banner(c, a));
    out.push_str("</header>\n<main>\n");
    let mut figures = 0;
    let mut notes: Vec<String> = Vec::new();
    out.push_str(&findings(c, a));
    out.push_str(&capture(c, a));
    out.push_str(&state_diagram(c, a, &mut notes));
    figures += 1;
    let pileup = charts::pileup(c, a);
    section(
        &mut out,
        "pileup",
        "CLOSE_WAIT pile-up by process",
        pileup.as_ref(),
        "No socket entered CLOSE_WAIT during the capture.",
        &mut figures,
        "",
    );
    if c.intervals_dropped > 0 {
        notes.push(format!(
            "The pile-up chart leaves out {} CLOSE_WAIT stays past the first {}.",
            c.intervals_dropped,
            c.intervals.len()
        ));
    }
    // The other states the run watched (`--stuck`), each with its own chart when present.
    for (state, pile) in &c.piles {
        let Some(figure) = charts::stuck_pileup(c, a, *state, pile) else {
            continue;
        };
        let name = state.name();
        section(
            &mut out,
            &format!("pileup-{}", name.to_lowercase()),
            &format!("{name} pile-up by process"),
            Some(&figure),
            "",
            &mut figures,
            "",
        );
        if pile.dropped > 0 {
            notes.push(format!(
                "The {name} pile-up chart leaves out {} stays past the first {}.",
                pile.dropped,
                pile.intervals.len()
            ));
        }
    }
    let gantt = charts::gantt(c, a);
    let used: Vec<TcpState> = {
        let mut s: Vec<TcpState> = charts::gantt_rows(c)
            .iter()
            .flat_map(|r| r.timeline.states.iter().map(|s| s.state))
            .collect();
        s.sort();
        s.dedup();
        s
    };
    let chosen = format!(
        "<p>Which connections: up to {per} per reason, each shown once, at most {rows} in all: {}. Chosen from {} connections.</p>{}",
        Reason::ALL.iter().map(|r| r.words()).collect::<Vec<_>>().join("; "),
        a.connections,
        charts::state_legend(&used),
        per = super::collect::GANTT_PER_REASON,
        rows = charts::GANTT_ROWS,
    );
    section(
        &mut out,
        "gantt",
        "Connections as timelines",
        gantt.as_ref(),
        "No connection was rebuilt.",
        &mut figures,
        &chosen,
    );
    let outcomes = charts::outcomes(a, &c.causes);
    section(
        &mut out,
        "outcomes",
        "How connections ended",
        outcomes.as_ref(),
        "No connection was rebuilt.",
        &mut figures,
        "",
    );
    let dwell = charts::dwell(c, a);
    section(
        &mut out,
        "dwell",
        "Time spent per state",
        dwell.as_ref(),
        "No time in a state was measured.",
        &mut figures,
        "<p>Percentiles are exact nearest-rank over every stay whose length is known.</p>",
    );
    out.push_str("</main>\n<footer>\n");
    if c.lost_records > MAX_LOST as u64 {
        notes.push(format!(
            "{} lost records were read; the first {MAX_LOST} are kept for this report.",
            c.lost_records
        ));
    }
    if !notes.is_empty() {
        out.push_str("<h2>How this report was bounded</h2><ul>");
        for n in &notes {
            let _ = write!(out, "<li>{}</li>", words::escape(n));
        }
        out.push_str("</ul>\n");
    }
    let _ = writeln!(
        out,
        "<p>Made by <code>tracer analyze --html</code> {} from the same analysis <code>tracer analyze</code> prints.</p>",
        env!("CARGO_PKG_VERSION")
    );
    let data = summary_json(c, a, figures);
    let _ = write!(
        out,
        "<p id=\"report-end\" data-figures=\"{figures}\">End of report. <span id=\"check\">The consistency check needs scripts; the numbers above do not.</span></p>\n\
         <script type=\"application/json\" id=\"report-data\">{}</script>\n<script>{CHECK}</script>\n</footer></body></html>\n",
        script_json(&data.to_string())
    );
    out
}

/// JSON text made safe inside `<script>`: every `<` (only ever inside strings: a process name
/// such as `<!--<script>` would otherwise change how the HTML parser ends the element) is
/// written as the JSON escape `\u003c`, which parses back to the same string.
fn script_json(json: &str) -> String {
    json.replace('<', "\\u003c")
}

fn losses_banner<S: Sink>(c: &Collector<S>, a: &AnalysisRecord) -> String {
    let mut problems = Vec::new();
    if a.lost > 0 {
        problems.push(format!(
            "the traced run lost {} (counted by the tracer: ring buffer full, runs the kernel skipped, undecodable, or dropped by the writer); timelines around those times may be missing transitions",
            words::plural(a.lost, "record", "records")
        ));
    }
    if let Some(s) = &c.summary {
        if s.evicted > 0 {
            problems.push(format!(
                "{} were evicted at --max-sockets; their timelines are cut short",
                words::plural(s.evicted, "socket", "sockets")
            ));
        }
    }
    if !a.clean_end {
        problems.push(
            "the input has no summary: the tracer did not stop cleanly, so its losses are unknown"
                .to_owned(),
        );
    }
    if a.warnings > 0 {
        problems.push(format!(
            "reading it gave {} (see the stderr of tracer analyze)",
            words::plural(a.warnings, "warning", "warnings")
        ));
    }
    if problems.is_empty() {
        return "<p class=\"ok\" id=\"losses\" data-lost=\"0\">Complete capture: no record was lost, and the tracer stopped cleanly.</p>\n".to_owned();
    }
    format!(
        "<p class=\"warn\" id=\"losses\" role=\"alert\" data-lost=\"{}\"><strong>Lossy or incomplete capture:</strong> {}.</p>\n",
        a.lost,
        words::escape(&problems.join("; "))
    )
}

fn findings<S: Sink>(c: &Collector<S>, a: &AnalysisRecord) -> String {
    let mut out = format!(
        "<section id=\"findings\" data-findings=\"{}\"><h2>Findings</h2>\n",
        a.close_wait.len()
    );
    let threshold = words::duration(a.close_wait_threshold_ns);
    if a.close_wait.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"lead\">No socket stayed in CLOSE_WAIT for {threshold} or more over {}.</p>",
            words::plural(a.connections, "connection", "connections")
        );
    } else {
        let still = a.close_wait.iter().filter(|f| f.left_to.is_none()).count();
        let _ = write!(
            out,
            "<p class=\"lead\"><strong>{} stayed in CLOSE_WAIT for {threshold} or more</strong>, held by {}; {}.</p>\n<ul class=\"procs\">",
            words::plural(a.close_wait.len() as u64, "socket", "sockets"),
            words::plural(a.top_processes.len() as u64, "process", "processes"),
            match still {
                0 => "none was still there when the capture ended".to_owned(),
                n if n == a.close_wait.len() => "all were still there when the capture ended".to_owned(),
                n => format!("{n} of them still there when the capture ended"),
            },
        );
        for p in a.top_processes.iter().take(PROCESSES) {
            let mine: Vec<_> = a
                .close_wait
                .iter()
                .filter(|f| f.pid == p.pid && f.comm == p.comm)
                .collect();
            let open = mine.iter().filter(|f| f.left_to.is_none()).count();
            let closed = mine
                .iter()
                .filter(|f| f.left_to == Some(TcpState::LastAck))
                .count();
            let reset = mine.len() - open - closed;
            let mut parts = Vec::new();
            if open > 0 && a.lost > 0 {
                // The transition out of CLOSE_WAIT may be among the records lost.
                parts.push(format!(
                    "{open} not seen leaving CLOSE_WAIT (the capture lost records: some may have left it unseen)"
                ));
            } else if open > 0 {
                parts.push(format!(
                    "{open} never left CLOSE_WAIT during the capture (the process did not call close())"
                ));
            }
            if closed > 0 {
                parts.push(format!("{closed} closed late by the process (→ LAST_ACK)"));
            }
            if reset > 0 {
                parts.push(format!("{reset} reset while waiting (→ CLOSE)"));
            }
            let container = p
                .pid
                .and_then(|pid| c.containers.get(&pid))
                .map(|id| format!(" in container <code>{}</code>", words::escape(id)))
                .unwrap_or_default();
            let _ = write!(
                out,
                "<li><strong>{}</strong>{container} held {} in CLOSE_WAIT, the oldest for {}{}: {}.</li>",
                words::escape(&words::owner(p.pid, p.comm.as_deref())),
                words::plural(p.sockets, "socket", "sockets"),
                if mine
                    .iter()
                    .any(|f| f.age_at_least && f.age_ms == p.oldest_ms)
                {
                    "at least "
                } else {
                    ""
                },
                words::millis(p.oldest_ms),
                parts.join("; ")
            );
            // What the process was doing when reported (`diagnosis`), in the report's words.
            if let Some(d) = p.pid.and_then(|pid| c.diagnoses.get(&pid)) {
                let lines = crate::diagnosis::text::lines(d, false);
                if !lines.is_empty() {
                    out.truncate(out.len() - "</li>".len());
                    out.push_str("<ul class=\"why\">");
                    for line in lines {
                        let _ = write!(out, "<li>{}</li>", words::escape(&line));
                    }
                    out.push_str("</ul></li>");
                }
            }
        }
        if a.top_processes.len() > PROCESSES {
            let _ = write!(
                out,
                "<li>and {} more.</li>",
                words::plural(
                    (a.top_processes.len() - PROCESSES) as u64,
                    "process",
                    "processes"
                )
            );
        }
        out.push_str(
            "</ul>\n<table class=\"findings\"><caption>The sockets, longest in CLOSE_WAIT first",
        );
        if a.close_wait.len() > LISTED {
            let _ = write!(
                out,
                " (the first {LISTED} of {}; <code>tracer analyze --json</code> lists them all)",
                a.close_wait.len()
            );
        }
        out.push_str("</caption><thead><tr><th>in CLOSE_WAIT</th><th>held by</th><th>local ← peer</th><th>entered (since start)</th><th>then</th><th>reported live</th></tr></thead><tbody>");
        let t0 = c.start_ns();
        for f in a.close_wait.iter().take(LISTED) {
            let _ = write!(
                out,
                "<tr><td class=n>{}{}</td><td>{}</td><td>{} ← {}</td><td class=n>{}</td><td>{}</td><td>{}</td></tr>",
                if f.age_at_least { "≥ " } else { "" },
                words::millis(f.age_ms),
                words::escape(&words::owner(f.pid, f.comm.as_deref())),
                words::endpoint(f.laddr, f.lport),
                words::endpoint(f.raddr, f.rport),
                f.since_ns.map_or_else(|| "before the capture".to_owned(), |s| format!("+{}", words::duration(s.saturating_sub(t0)))),
                f.left_to.map_or_else(|| "still in CLOSE_WAIT".to_owned(), |s| format!("→ {s}")),
                if f.reported_live { "yes" } else { "no" },
            );
        }
        out.push_str("</tbody></table>\n");
    }
    out.push_str(&digests(c));
    out.push_str("</section>\n");
    out
}

fn digests<S: Sink>(c: &Collector<S>) -> String {
    let Some(last) = &c.last_digest else {
        return String::new();
    };
    let clock = |ts: u64| format!("+{}", words::duration(ts.saturating_sub(c.start_ns())));
    let procs = |d: &crate::record::DigestRecord| {
        d.processes
            .iter()
            .take(5)
            .map(|p| {
                format!(
                    "{}{} {} (oldest {})",
                    words::owner(p.pid, p.comm.as_deref()),
                    p.container
                        .as_ref()
                        .map(|id| format!(" in container {id}"))
                        .unwrap_or_default(),
                    p.count,
                    words::millis(p.oldest_age_ms)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = format!(
        "<p id=\"digests\">The live run wrote {} of the sockets still stuck. The last, at {}: {} stuck: {}.",
        words::plural(c.digests, "digest", "digests"),
        clock(last.ts_ns),
        last.stuck,
        words::escape(&procs(last))
    );
    if let Some(peak) = c.peak_digest.as_ref().filter(|p| p.ts_ns != last.ts_ns) {
        let _ = write!(
            out,
            " The largest, at {}: {} stuck: {}.",
            clock(peak.ts_ns),
            peak.stuck,
            words::escape(&procs(peak))
        );
    }
    out.push_str("</p>\n");
    out
}

fn capture<S: Sink>(c: &Collector<S>, a: &AnalysisRecord) -> String {
    let mut rows: Vec<(&str, String)> = Vec::new();
    let end = a.end_ts_ns.max(c.last_ns);
    match &c.header {
        Some(h) => {
            rows.push(("host", h.hostname.clone()));
            rows.push(("kernel", h.kernel.clone()));
            rows.push(("tracer", format!("{} (schema {})", h.version, h.schema)));
            rows.push((
                "time",
                format!(
                    "{} to {} ({})",
                    h.start_time,
                    a.end_time,
                    words::duration(end.saturating_sub(h.monotonic_start_ns))
                ),
            ));
            let o = &h.options;
            let ports = if o.ports.is_empty() {
                "every port".to_owned()
            } else {
                o.ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let family = o
                .family
                .map_or("IPv4 and IPv6".to_owned(), |f| format!("{f:?}"));
            let mut options = format!(
                "ports: {ports}; {family}; CLOSE_WAIT threshold {}; digests every {}; at most {} sockets; ring buffer {} KiB",
                words::duration(o.close_wait_threshold_ns),
                words::duration(o.report_interval_ns),
                o.max_sockets,
                o.ring_buffer_bytes / 1024
            );
            if let Some(d) = o.duration_ns {
                let _ = write!(options, "; stop after {}", words::duration(d));
            }
            if !o.pids.is_empty() {
                let _ = write!(options, "; only pids {:?}", o.pids);
            }
            if o.all_protocols {
                options.push_str("; all protocols");
            }
            rows.push(("options", options));
            rows.push((
                "input",
                match (h.written_to, h.complete) {
                    (Some(crate::record::WrittenTo::Stdout), true) => {
                        "stdout of tracer --json --timelines (every record, but what it dropped)"
                            .to_owned()
                    }
                    (_, false) => "stdout of tracer --json (only what it showed)".to_owned(),
                    (_, true) => "a complete export (--export)".to_owned(),
                },
            ));
        }
        None => rows.push((
            "header",
            "none: an older tracer's output, analysed with the default options".to_owned(),
        )),
    }
    rows.push((
        "read",
        format!(
            "{} transitions, {} connections rebuilt",
            c.transitions, a.connections
        ),
    ));
    match &c.summary {
        Some(s) => rows.push((
            "losses",
            format!(
                "ring buffer full {}; runs the kernel skipped {}; undecodable {}; sockets evicted {}; export dropped {}; stdout dropped {}",
                s.lost_ringbuf, s.recursion_misses.map_or_else(|| "not available".to_owned(), |n| n.to_string()), s.decode_errors, s.evicted, s.export_dropped, s.output_dropped
            ),
        )),
        None => rows.push(("losses", "unknown (no summary)".to_owned())),
    }
    if a.close_wait_threshold_ns
        != c.header.as_ref().map_or(a.close_wait_threshold_ns, |h| {
            h.options.close_wait_threshold_ns
        })
    {
        rows.push((
            "findings",
            format!(
                "recomputed at a CLOSE_WAIT threshold of {}",
                words::duration(a.close_wait_threshold_ns)
            ),
        ));
    }
    let mut out = String::from("<section id=\"capture\"><h2>The capture</h2><dl>");
    for (k, v) in rows {
        let _ = write!(out, "<dt>{k}</dt><dd>{}</dd>", words::escape(&v));
    }
    out.push_str("</dl></section>\n");
    out
}

/// The observed edges that RFC 793's figure does not draw, as text per source state.
fn other_edges<S: Sink>(c: &Collector<S>, from: TcpState) -> Vec<String> {
    c.edges
        .iter()
        .filter(|((f, t), _)| *f == from && !diagram::is_routed(*f, *t))
        .map(|((_, to), e)| {
            let what = if *to == TcpState::Close {
                " (reset/abort)"
            } else {
                ""
            };
            format!("→ {to}{what}: {}", diagram::label(e).join(" · "))
        })
        .collect()
}

fn state_diagram<S: Sink>(c: &Collector<S>, a: &AnalysisRecord, notes: &mut Vec<String>) -> String {
    let mut svg = String::new();
    let edge = |f: TcpState, t: TcpState| c.edges.get(&(f, t)).cloned();
    let other = |s: TcpState| other_edges(c, s);
    let drawn = diagram::draw(&mut svg, &edge, &other, a.close_wait.len()).is_ok();
    let sampled: Vec<String> = c
        .edges
        .iter()
        .filter(|(_, e)| e.sampled())
        .map(|((f, t), _)| format!("{f} → {t}"))
        .collect();
    if !sampled.is_empty() {
        notes.push(format!(
            "Percentiles marked ≈ on the diagram ({}) come from a uniform sample of {EDGE_SAMPLE} stays per edge.",
            sampled.join(", ")
        ));
    }
    let taken = c.edges.values().filter(|e| e.count > 0).count();
    let alt = format!(
        "The TCP state diagram of RFC 793, laid out as the RFC draws it, with {taken} of its edges observed. Each taken edge is labelled with how many times it was taken and the median (p50) and 99th percentile (p99) time spent in the state before it; edges never taken are faint. The active close runs down the left (solid), the simultaneous close through CLOSING (long dashes), the passive close down the right through CLOSE_WAIT (dotted). The table below lists every edge."
    );
    let mut table = String::from("<table class=\"edges\"><thead><tr><th>from</th><th>to</th><th>path</th><th>taken</th><th>p50 before</th><th>p99 before</th></tr></thead><tbody>");
    let mut row = |f: TcpState, t: TcpState, path: &str, e: Option<&Edge>| {
        let (p50, p99) = e
            .and_then(diagram::p50_p99)
            .map_or(("–".to_owned(), "–".to_owned()), |(a, b)| {
                (words::duration(a), words::duration(b))
            });
        let count = e.map_or(0, |e| e.count);
        let _ = write!(
            table,
            "<tr data-edge=\"{f}>{t}\" data-count=\"{count}\"{}><td>{f}</td><td>{t}</td><td>{path}</td><td class=n>{count}</td><td class=n>{p50}</td><td class=n>{p99}</td></tr>",
            if count == 0 { " class=\"faint\"" } else { "" }
        );
    };
    for r in &diagram::ROUTES {
        row(r.from, r.to, r.path.words(), c.edges.get(&(r.from, r.to)));
    }
    for ((f, t), e) in &c.edges {
        if !diagram::is_routed(*f, *t) {
            row(
                *f,
                *t,
                "not in RFC 793's figure (Linux reset or abort)",
                Some(e),
            );
        }
    }
    table.push_str("</tbody></table>");
    let figure = Figure { svg, alt, table };
    let mut out = String::new();
    let mut n = 0;
    section(
        &mut out,
        "diagram",
        "The TCP state machine as observed",
        drawn.then_some(&figure),
        "The diagram could not be drawn.",
        &mut n,
        "<p class=\"legend\"><span><b class=\"solid\"></b>active close</span> <span><b class=\"dashed\"></b>simultaneous close</span> <span><b class=\"dotted\"></b>passive close</span> <span><b class=\"faint\"></b>never taken</span> Line width grows with the count. The kernel never reports TIME_WAIT: it is inferred from CLOSING → CLOSE, and from FIN_WAIT2 → CLOSE when the peer's FIN had arrived (else the connection still waits in FIN_WAIT2, in a timewait socket).</p>",
    );
    out
}

/// A section with its figure (SVG with a title, a caption, and the numbers as a table).
fn section(
    out: &mut String,
    id: &str,
    heading: &str,
    figure: Option<&Figure>,
    empty: &str,
    figures: &mut usize,
    intro: &str,
) {
    let _ = writeln!(out, "<section id=\"{id}\"><h2>{heading}</h2>{intro}");
    match figure {
        Some(f) => {
            *figures += 1;
            let svg = f.svg.replacen(
                "<svg ",
                &format!("<svg role=\"img\" aria-labelledby=\"{id}-title\" class=\"chart\" "),
                1,
            );
            let svg = match svg.find('>') {
                Some(end) => format!(
                    "{}<title id=\"{id}-title\">{}</title>{}",
                    &svg[..=end],
                    words::escape(&f.alt),
                    &svg[end + 1..]
                ),
                None => svg,
            };
            let _ = write!(
                out,
                "<figure data-figure=\"{id}\">{svg}<figcaption>{}</figcaption></figure>\n<details><summary>The numbers</summary>{}</details>\n",
                words::escape(&f.alt),
                f.table
            );
        }
        None => {
            let _ = writeln!(out, "<p class=\"empty\">{}</p>", words::escape(empty));
        }
    }
    out.push_str("</section>\n");
}

/// The report's key numbers, for its own consistency check and for tests.
fn summary_json<S: Sink>(
    c: &Collector<S>,
    a: &AnalysisRecord,
    figures: usize,
) -> serde_json::Value {
    let edges: Vec<_> = c
        .edges
        .iter()
        .map(|((f, t), e)| {
            let (p50, p99) = diagram::p50_p99(e).map_or((None, None), |(a, b)| (Some(a), Some(b)));
            json!({"from": f.name(), "to": t.name(), "count": e.count, "p50_ns": p50, "p99_ns": p99, "sampled": e.sampled()})
        })
        .collect();
    let gantt: Vec<_> = charts::gantt_rows(c)
        .iter()
        .map(|r| json!({"skaddr": r.timeline.skaddr, "lport": r.timeline.lport, "rport": r.timeline.rport, "outcome": r.timeline.outcome.name(), "reasons": r.reasons.iter().map(|r| r.words()).collect::<Vec<_>>()}))
        .collect();
    json!({
        "connections": a.connections,
        "transitions": c.transitions,
        "lost": a.lost,
        "clean_end": a.clean_end,
        "findings": a.close_wait.len(),
        "findings_listed": a.close_wait.len().min(LISTED),
        "processes": a.top_processes.iter().map(|p| json!({"pid": p.pid, "comm": p.comm, "sockets": p.sockets, "oldest_ms": p.oldest_ms})).collect::<Vec<_>>(),
        "outcomes": a.outcomes.iter().map(|o| json!({"outcome": o.outcome.name(), "count": o.count})).collect::<Vec<_>>(),
        "edges": edges,
        "close_wait_stays": c.intervals.len(),
        "gantt": gantt,
        "figures": figures,
    })
}

#[cfg(test)]
mod tests {
    /// A name with `<!--<script>` or `</script>` cannot end the report's data element, and the
    /// data parses back the same.
    #[test]
    fn a_process_name_cannot_end_the_report_data_early() {
        let data = serde_json::json!({
            "processes": [{"comm": "<!--<script>"}, {"comm": "</script>"}, {"comm": "a<b"}]
        });
        let text = super::script_json(&data.to_string());
        assert!(!text.contains('<'), "{text}");
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, data);
    }
}
