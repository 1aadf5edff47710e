//! What an observer wrote: transitions on the bench's port, counted per kind, and the losses
//! it reported; and how the counts compare with the generator's shape.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, Result};
use serde::Deserialize;

use crate::{churn, peer, runner::Mode};

/// Counts what the observer of `mode` wrote to `output` (and, for the peers, said on
/// stderr); for [`Mode::TracerExport`], the export file too.
pub fn capture(
    mode: Mode,
    output: &Path,
    errors: &Path,
    export: Option<&Path>,
    port: u16,
) -> Result<Capture> {
    let stderr = fs::read_to_string(errors).unwrap_or_default();
    match mode {
        Mode::TracerPython | Mode::TracerPythonPaced => count_python_reader(output),
        Mode::TracerExport => {
            let mut capture = count_tracer(output, port)?;
            let export = export.context("no export file")?;
            capture.export_captured = Some(count_tracer(export, port)?.captured);
            Ok(capture)
        }
        Mode::Tracer
        | Mode::TracerTracepoint
        | Mode::TracerTimelines
        | Mode::TracerScraped
        | Mode::TracerTrackReads => count_tracer(output, port),
        Mode::Tcpstates => count_tcpstates(output, &stderr, port),
        Mode::Bpftrace => count_bpftrace(output, &stderr, port),
        Mode::BpftraceCount => count_bpftrace_map(output, &stderr),
        Mode::None => Ok(Capture::default()),
    }
}

/// What an observer wrote.
#[derive(Debug, Default)]
pub struct Capture {
    pub captured: u64,
    /// "OLD->NEW" -> count.
    pub shape: BTreeMap<String, u64>,
    pub reported_lost: u64,
    pub reported_recursion_misses: Option<u64>,
    pub reported_buffer_full: u64,
    pub reported_output_dropped: Option<u64>,
    pub summary_seen: bool,
    /// Transitions on the port in the export file, with `--export`.
    pub export_captured: Option<u64>,
    /// What the observer's side said that the run should show.
    pub notes: Vec<String>,
}

impl Capture {
    /// Counts `n` transitions old -> new; allocates only for a kind not seen before.
    fn add(&mut self, old: &str, new: &str, n: u64) {
        self.captured += n;
        let seen = self.shape.iter_mut().find(|(kind, _)| {
            kind.len() == old.len() + 2 + new.len()
                && kind.starts_with(old)
                && kind[old.len()..].starts_with("->")
                && kind.ends_with(new)
        });
        match seen {
            Some((_, count)) => *count += n,
            None => {
                self.shape.insert(format!("{old}->{new}"), n);
            }
        }
    }
}

#[derive(Deserialize)]
struct TracerLine {
    #[serde(rename = "type")]
    kind: String,
    lport: Option<u16>,
    rport: Option<u16>,
    old_state: Option<String>,
    new_state: Option<String>,
    lost_ringbuf: Option<u64>,
    recursion_misses: Option<u64>,
    output_dropped: Option<u64>,
    decode_errors: Option<u64>,
    /// stdout's accounting by record type (tracers since the per-type accounting).
    stdout: Option<DestinationLine>,
}

#[derive(Deserialize)]
struct DestinationLine {
    dropped: DroppedLine,
}

#[derive(Deserialize)]
struct DroppedLine {
    transition: u64,
}

/// Counts the tracer's NDJSON in a file: transitions on `port`, and the loss counters of its
/// summary.
pub fn count_tracer(path: &Path, port: u16) -> Result<Capture> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    count_tracer_stream(BufReader::with_capacity(1 << 20, file), port, None)
}

/// Counts the tracer's NDJSON as it streams by (a file, or a pipe from a running tracer), in
/// constant memory: one line is held at a time. When `seen` is given, it follows the count
/// of transitions on `port` as they are read.
pub fn count_tracer_stream(
    mut reader: impl BufRead,
    port: u16,
    seen: Option<&AtomicU64>,
) -> Result<Capture> {
    let mut capture = Capture::default();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches('\n');
        if let Some((lport, rport, old, new)) = quick_transition(line) {
            if lport == port || rport == port {
                capture.add(old, new, 1);
                if let Some(seen) = seen {
                    seen.store(capture.captured, Ordering::Relaxed);
                }
            }
            continue;
        }
        let Ok(record) = serde_json::from_str::<TracerLine>(line) else {
            continue;
        };
        match record.kind.as_str() {
            "transition" if record.lport == Some(port) || record.rport == Some(port) => {
                capture.add(
                    record.old_state.as_deref().unwrap_or("?"),
                    record.new_state.as_deref().unwrap_or("?"),
                    1,
                );
                if let Some(seen) = seen {
                    seen.store(capture.captured, Ordering::Relaxed);
                }
            }
            "summary" => {
                let recursion = record.recursion_misses.unwrap_or(0);
                let ringbuf = record.lost_ringbuf.unwrap_or(0);
                // Transitions stdout dropped (all records before the per-type accounting), and
                // records that could not be decoded (never expected).
                let stdout_dropped = record.stdout.map_or_else(
                    || record.output_dropped.unwrap_or(0),
                    |d| d.dropped.transition,
                );
                let dropped = stdout_dropped + record.decode_errors.unwrap_or(0);
                capture.summary_seen = true;
                capture.reported_recursion_misses = Some(recursion);
                capture.reported_buffer_full = ringbuf;
                capture.reported_output_dropped = Some(dropped);
                capture.reported_lost = ringbuf + recursion + dropped;
            }
            _ => {}
        }
    }
    Ok(capture)
}

/// (lport, rport, old_state, new_state) of a transition line as the tracer writes it (by
/// hand, fields in a fixed order: `{"type":"transition",...,"lport":N,...,"rport":N,...,
/// "old_state":"S","new_state":"S",...}`), found without a JSON parser: a JSON parser is
/// too slow to follow a tracer at full churn on the same two cores. `None` for any other
/// line, which is then parsed as JSON. Keys are searched in order, before the first string
/// that could hold arbitrary text (`comm` comes after them), so they cannot match inside a
/// value.
fn quick_transition(line: &str) -> Option<(u16, u16, &str, &str)> {
    fn after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
        text.find(key).map(|at| &text[at + key.len()..])
    }
    fn number(text: &str) -> Option<(u16, &str)> {
        let end = text.find(|c: char| !c.is_ascii_digit())?;
        Some((text[..end].parse().ok()?, &text[end..]))
    }
    fn name(text: &str) -> Option<(&str, &str)> {
        let end = text.find('"')?;
        let value = &text[..end];
        value
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            .then_some((value, &text[end..]))
    }
    let rest = line.strip_prefix(r#"{"type":"transition","#)?;
    let (lport, rest) = number(after(rest, r#","lport":"#)?)?;
    let (rport, rest) = number(after(rest, r#","rport":"#)?)?;
    let (old, rest) = name(after(rest, r#","old_state":""#)?)?;
    let (new, rest) = name(after(rest, r#","new_state":""#)?)?;
    rest.ends_with('}').then_some((lport, rport, old, new))
}

/// Counts what the Python line reader wrote at the end: the tracer's summary line as it
/// read it, then `OLD NEW COUNT` per transition kind on the port.
fn count_python_reader(path: &Path) -> Result<Capture> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let summary = lines.next().unwrap_or_default();
    // The summary's accounting, read as the tracer's own file would be (port 0: no
    // transition on it).
    let mut capture = count_tracer_stream(summary.as_bytes(), 0, None)?;
    for line in lines {
        let mut fields = line.split_whitespace();
        if let (Some(old), Some(new), Some(n)) = (fields.next(), fields.next(), fields.next()) {
            capture.add(old, new, n.parse().context("a count")?);
        }
    }
    if !capture.summary_seen {
        capture
            .notes
            .push("the Python reader never saw the tracer's summary".into());
    }
    Ok(capture)
}

/// Counts libbpf-tools `tcpstates` output on `port` (`SKADDR PID COMM LADDR LPORT RADDR
/// RPORT OLD -> NEW MS`, COMM may hold spaces so fields are taken from the end) and the
/// `lost N events on CPU #M` lines it writes to stderr.
fn count_tcpstates(path: &Path, stderr: &str, port: u16) -> Result<Capture> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut capture = Capture::default();
    for line in BufReader::with_capacity(1 << 20, file).lines() {
        let line = line?;
        if let Some((old, new)) = peer::parse_tcpstates_line(&line, port) {
            capture.add(old, new, 1);
        }
    }
    capture.reported_lost = peer::tcpstates_lost(stderr);
    capture.reported_buffer_full = capture.reported_lost;
    Ok(capture)
}

fn count_bpftrace(path: &Path, stderr: &str, port: u16) -> Result<Capture> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut capture = Capture::default();
    let mut lost = peer::reported_lost(stderr);
    for line in BufReader::with_capacity(1 << 20, file).lines() {
        let line = line?;
        if let Some((old, new)) = peer::parse_stream_line(&line, port) {
            capture.add(&peer::state_name(old), &peer::state_name(new), 1);
        } else {
            lost += peer::reported_lost(&line);
        }
    }
    capture.reported_lost = lost;
    capture.reported_buffer_full = lost;
    Ok(capture)
}

fn count_bpftrace_map(path: &Path, stderr: &str) -> Result<Capture> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut capture = Capture::default();
    for (old, new, n) in text.lines().filter_map(peer::parse_count_line) {
        capture.add(&peer::state_name(old), &peer::state_name(new), n);
    }
    capture.reported_lost = peer::reported_lost(stderr) + peer::reported_lost(&text);
    capture.reported_buffer_full = capture.reported_lost;
    Ok(capture)
}

/// Transition kinds whose count differs from the generator's shape, over `connections`
/// connections and `listeners` runs of the generator (each with its own listener):
/// (old->new, expected, captured).
pub fn shape_mismatches(
    shape: &BTreeMap<String, u64>,
    connections: u64,
    listeners: u64,
) -> Vec<(String, u64, u64)> {
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for (old, new) in churn::SHAPE {
        *expected.entry(format!("{old}->{new}")).or_default() += connections;
    }
    for (old, new) in churn::LISTENER_SHAPE {
        *expected.entry(format!("{old}->{new}")).or_default() += listeners;
    }
    let mut out = Vec::new();
    for (kind, &want) in &expected {
        let got = shape.get(kind).copied().unwrap_or(0);
        if got != want {
            out.push((kind.clone(), want, got));
        }
    }
    for (kind, &got) in shape {
        if !expected.contains_key(kind) {
            out.push((kind.clone(), 0, got));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_of_exact_run_matches() {
        let mut shape = BTreeMap::new();
        for (old, new) in churn::SHAPE {
            *shape.entry(format!("{old}->{new}")).or_default() += 3;
        }
        for (old, new) in churn::LISTENER_SHAPE {
            shape.insert(format!("{old}->{new}"), 1);
        }
        assert!(shape_mismatches(&shape, 3, 1).is_empty());
        shape.insert("SYN_SENT->CLOSE".into(), 1);
        *shape.get_mut("FIN_WAIT1->FIN_WAIT2").unwrap() -= 1;
        assert_eq!(
            shape_mismatches(&shape, 3, 1),
            vec![
                ("FIN_WAIT1->FIN_WAIT2".into(), 3, 2),
                ("SYN_SENT->CLOSE".into(), 0, 1)
            ]
        );
    }

    /// Lines as the tracer writes them (a listener, a client, a server socket with no owner,
    /// an IPv6 socket whose comm holds a quote, the summary).
    const REAL_LINES: &str = concat!(
        r#"{"type":"transition","ts_ns":5153572962965,"time":"2026-11-25T09:16:28.060391Z","skaddr":"0xffff88812d44d340","family":"ipv4","laddr":"127.0.0.1","lport":9999,"raddr":"0.0.0.0","rport":0,"old_state":"CLOSE","new_state":"LISTEN","duration_ns":null,"pid":11121,"comm":"python3","ctx_pid":11121,"ctx_comm":"python3","cpu":1}"#,
        "\n",
        r#"{"type":"transition","ts_ns":5153576923393,"time":"2026-11-25T09:16:28.064351Z","skaddr":"0xffff88812d44b780","family":"ipv4","laddr":"127.0.0.1","lport":57998,"raddr":"127.0.0.1","rport":9999,"old_state":"SYN_SENT","new_state":"ESTABLISHED","duration_ns":65838,"pid":11121,"comm":"python3","ctx_pid":11121,"ctx_comm":"python3","cpu":1}"#,
        "\n",
        r#"{"type":"transition","ts_ns":5153576930363,"time":"2026-11-25T09:16:28.064358Z","skaddr":"0xffff88812d448940","family":"ipv4","laddr":"127.0.0.1","lport":9999,"raddr":"127.0.0.1","rport":57998,"old_state":"LISTEN","new_state":"SYN_RECV","duration_ns":null,"pid":null,"comm":null,"ctx_pid":11121,"ctx_comm":"python3","cpu":1}"#,
        "\n",
        r#"{"type":"transition","ts_ns":1,"time":"t","skaddr":"0x1","family":"ipv6","laddr":"::1","lport":443,"raddr":"::1","rport":40000,"old_state":"ESTABLISHED","new_state":"CLOSE_WAIT","duration_ns":5,"pid":7,"comm":"a\",\"lport\":9999","ctx_pid":7,"ctx_comm":"x","cpu":0}"#,
        "\n",
        r#"{"type":"summary","ts_ns":5155005411430,"time":"2026-11-25T09:16:29.492839Z","events":12,"transitions":12,"lost_ringbuf":3,"recursion_misses":0,"decode_errors":1,"evicted":0,"timelines":0,"close_wait_alerts":0,"close_wait_resolved":0,"output_dropped":2}"#,
        "\n",
    );

    #[test]
    fn quick_transition_agrees_with_json() {
        for line in REAL_LINES.lines() {
            let json: TracerLine = serde_json::from_str(line).unwrap();
            let quick = quick_transition(line);
            if json.kind == "transition" {
                assert_eq!(
                    quick,
                    Some((
                        json.lport.unwrap(),
                        json.rport.unwrap(),
                        json.old_state.as_deref().unwrap(),
                        json.new_state.as_deref().unwrap()
                    )),
                    "{line}"
                );
            } else {
                assert_eq!(quick, None);
            }
        }
        // Anything unusual goes to the JSON parser.
        assert_eq!(quick_transition(r#"{"type":"transition","lport":1}"#), None);
        let odd = REAL_LINES
            .lines()
            .next()
            .unwrap()
            .replace("LISTEN", "UNKNOWN(13)");
        assert_eq!(quick_transition(&odd), None);
    }

    #[test]
    fn counts_a_stream() {
        let seen = AtomicU64::new(0);
        let c = count_tracer_stream(REAL_LINES.as_bytes(), 9999, Some(&seen)).unwrap();
        assert_eq!(c.captured, 3);
        assert_eq!(seen.load(Ordering::Relaxed), 3);
        assert_eq!(c.reported_lost, 6);
        assert_eq!(c.reported_output_dropped, Some(3));
        assert_eq!(c.shape.get("LISTEN->SYN_RECV"), Some(&1));
        assert_eq!(c.shape.len(), 3);
    }

    #[test]
    fn counts_tracer_output() {
        let dir = std::env::temp_dir().join(format!("bench-count-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.ndjson");
        fs::write(
            &path,
            concat!(
                r#"{"type":"transition","lport":5000,"rport":0,"old_state":"CLOSE","new_state":"LISTEN"}"#, "\n",
                r#"{"type":"transition","lport":40000,"rport":5000,"old_state":"CLOSE","new_state":"SYN_SENT"}"#, "\n",
                r#"{"type":"transition","lport":40000,"rport":80,"old_state":"CLOSE","new_state":"SYN_SENT"}"#, "\n",
                r#"{"type":"lost","ringbuf":2,"recursion_misses":1}"#, "\n",
                r#"{"type":"summary","events":3,"lost_ringbuf":2,"recursion_misses":1,"output_dropped":4}"#, "\n",
            ),
        )
        .unwrap();
        let c = count_tracer(&path, 5000).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.captured, 2);
        assert_eq!(c.reported_lost, 7);
        assert_eq!(c.reported_recursion_misses, Some(1));
        assert!(c.summary_seen);
        assert_eq!(c.shape.get("CLOSE->SYN_SENT"), Some(&1));
    }
}
