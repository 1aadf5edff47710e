//! The peer: bpftrace from Debian's packages, running a tcpstates-style script (one line per
//! transition, with the time spent in the previous state, like bcc's and libbpf-tools'
//! `tcpstates`), filtered in the kernel to the bench's port exactly as our tracer's `-p` is.
//! Also a count-only script that streams nothing, to show where the floor is.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::util::{apt_install, first_line, which};

/// One line per transition: `nsecs skaddr pid comm saddr sport daddr dport old new delta_us`.
/// The fields are copied to variables first: bpftrace 0.17's code reads the tracepoint
/// context again after `printf`, which newer verifiers reject ("dereference of modified ctx
/// ptr").
pub const STREAM_SCRIPT: &str = r#"// tcpstates-style: every TCP state transition on port $1, printed as it happens.
BEGIN { printf("READY\n"); }

tracepoint:sock:inet_sock_set_state
/args->protocol == 6 && (args->sport == $1 || args->dport == $1)/
{
  $sk = (uint64)args->skaddr;
  $old = args->oldstate;
  $new = args->newstate;
  $sport = args->sport;
  $dport = args->dport;
  $last = @last[$sk];
  $delta = $last ? (nsecs - $last) / 1000 : 0;
  if (args->family == 2) {
    printf("%llu %llx %d %s %s %d %s %d %d %d %llu\n", nsecs, $sk, pid, comm,
      ntop(2, args->saddr), $sport, ntop(2, args->daddr), $dport, $old, $new, $delta);
  } else {
    printf("%llu %llx %d %s %s %d %s %d %d %d %llu\n", nsecs, $sk, pid, comm,
      ntop(10, args->saddr_v6), $sport, ntop(10, args->daddr_v6), $dport, $old, $new, $delta);
  }
  if ($new == 7) { delete(@last[$sk]); } else { @last[$sk] = nsecs; }
}

END { clear(@last); }
"#;

/// Counts transitions per (old, new) in the kernel and prints the map at exit only.
pub const COUNT_SCRIPT: &str = r#"// count-only: no per-event output; the map is printed at exit.
BEGIN { printf("READY\n"); }

tracepoint:sock:inet_sock_set_state
/args->protocol == 6 && (args->sport == $1 || args->dport == $1)/
{
  @transitions[args->oldstate, args->newstate] = count();
}
"#;

/// bpftrace, found on PATH or installed from Debian's packages.
pub struct Bpftrace {
    pub binary: PathBuf,
    pub version: String,
}

/// Finds bpftrace, installing Debian's package when `install` allows. `Err` says why there
/// is no peer.
pub fn bpftrace(install: bool) -> Result<Bpftrace, String> {
    let binary = match which("bpftrace") {
        Some(path) => path,
        None if !install => return Err("bpftrace is not installed (--no-install)".into()),
        None => {
            if let Err(e) = apt_install("bpftrace") {
                return Err(format!("installing bpftrace failed: {e:#}"));
            }
            which("bpftrace").ok_or("bpftrace installed but not on PATH")?
        }
    };
    let version =
        first_line(Command::new(&binary).arg("--version")).unwrap_or_else(|| "unknown".into());
    Ok(Bpftrace { binary, version })
}

/// Writes a script where bpftrace can read it.
pub fn write_script(dir: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path)
}

/// (old, new) state numbers of one streamed line on `port`. `comm` may hold spaces, so the
/// fields after it are taken from the end.
pub fn parse_stream_line(line: &str, port: u16) -> Option<(u32, u32)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 11 || fields[0].parse::<u64>().is_err() {
        return None;
    }
    let end = &fields[fields.len() - 7..];
    let sport: u16 = end[1].parse().ok()?;
    let dport: u16 = end[3].parse().ok()?;
    if sport != port && dport != port {
        return None;
    }
    Some((end[4].parse().ok()?, end[5].parse().ok()?))
}

/// One entry of the count map printed at exit: `@transitions[7, 2]: 100000`.
pub fn parse_count_line(line: &str) -> Option<(u32, u32, u64)> {
    let rest = line.trim().strip_prefix("@transitions[")?;
    let (key, count) = rest.split_once("]:")?;
    let (old, new) = key.split_once(',')?;
    Some((
        old.trim().parse().ok()?,
        new.trim().parse().ok()?,
        count.trim().parse().ok()?,
    ))
}

/// Events bpftrace says it lost (`Lost N events`), in any of its output.
pub fn reported_lost(text: &str) -> u64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("Lost ")?;
            rest.strip_suffix(" events")?.trim().parse::<u64>().ok()
        })
        .sum()
}

/// (old, new) state names of one line of libbpf-tools `tcpstates` on `port` (as local or
/// remote port): `SKADDR PID COMM LADDR LPORT RADDR RPORT OLD -> NEW MS`, with `TIME` first
/// under `-T`. COMM may hold spaces, so the fields are taken from the end.
pub fn parse_tcpstates_line(line: &str, port: u16) -> Option<(&str, &str)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let end = fields.get(fields.len().checked_sub(7)?..)?;
    let [lport, _raddr, rport, old, arrow, new, ms] = end else {
        return None;
    };
    if *arrow != "->" || ms.parse::<f64>().is_err() {
        return None;
    }
    let (lport, rport) = (lport.parse::<u16>().ok()?, rport.parse::<u16>().ok()?);
    (lport == port || rport == port).then_some((*old, *new))
}

/// Events libbpf-tools `tcpstates` said it lost (`lost N events on CPU #M` on stderr).
pub fn tcpstates_lost(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("lost ")?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// libbpf-tools `tcpstates`, found on PATH or in /usr/sbin, or installed from Debian's
/// `libbpf-tools` when `install` allows. `Err` says why it does not run.
pub fn tcpstates(install: bool) -> Result<PathBuf, String> {
    let find = || {
        which("tcpstates").or_else(|| {
            let sbin = PathBuf::from("/usr/sbin/tcpstates");
            sbin.exists().then_some(sbin)
        })
    };
    if let Some(path) = find() {
        return Ok(path);
    }
    if !install {
        return Err("tcpstates (libbpf-tools) is not installed (--no-install)".into());
    }
    apt_install("libbpf-tools").map_err(|e| format!("installing libbpf-tools failed: {e:#}"))?;
    find().ok_or_else(|| "libbpf-tools installed but no tcpstates".into())
}

/// A Python line reader, as a user's own script would be: reads the tracer's NDJSON from
/// stdin one line at a time with `json.loads`, counts transitions on the port given as its
/// first argument by kind, keeps the summary, and at the end writes the summary line, then
/// `OLD NEW COUNT` per kind.
pub const PYTHON_READER: &str = r#"import json, sys
from collections import Counter

port = int(sys.argv[1])
kinds = Counter()
summary = "{}"
for line in sys.stdin:
    record = json.loads(line)
    kind = record.get("type")
    if kind == "transition":
        if record["lport"] == port or record["rport"] == port:
            kinds[(record["old_state"], record["new_state"])] += 1
    elif kind == "summary":
        summary = line.strip()
print(summary)
for (old, new), n in sorted(kinds.items()):
    print(old, new, n)
"#;

/// The kernel's name for a TCP state number.
pub fn state_name(n: u32) -> String {
    const NAMES: [&str; 12] = [
        "ESTABLISHED",
        "SYN_SENT",
        "SYN_RECV",
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "CLOSE_WAIT",
        "LAST_ACK",
        "LISTEN",
        "CLOSING",
        "NEW_SYN_RECV",
    ];
    match n {
        1..=12 => NAMES[n as usize - 1].to_owned(),
        other => format!("UNKNOWN({other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_lines() {
        let line =
            "1044672095495 ffff8881018d2e40 29078 python3 127.0.0.1 5556 127.0.0.1 58132 10 3 0";
        assert_eq!(parse_stream_line(line, 5556), Some((10, 3)));
        assert_eq!(parse_stream_line(line, 80), None);
        let spaced = "1 ffff 12 Web Content 127.0.0.1 40000 127.0.0.1 5556 1 4 12";
        assert_eq!(parse_stream_line(spaced, 5556), Some((1, 4)));
        assert_eq!(parse_stream_line("Attaching 3 probes...", 5556), None);
        assert_eq!(parse_stream_line("READY", 5556), None);
    }

    #[test]
    fn count_lines_and_losses() {
        assert_eq!(
            parse_count_line("@transitions[7, 2]: 100000"),
            Some((7, 2, 100_000))
        );
        assert_eq!(parse_count_line("READY"), None);
        assert_eq!(reported_lost("x\nLost 12 events\nLost 3 events\n"), 15);
        assert_eq!(state_name(8), "CLOSE_WAIT");
        assert_eq!(state_name(0), "UNKNOWN(0)");
    }

    /// Lines as libbpf-tools 0.26 `tcpstates -T` wrote them on this machine.
    #[test]
    fn tcpstates_lines_and_losses() {
        let header = "TIME(s)  SKADDR           PID     COMM       LADDR           LPORT RADDR           RPORT OLDSTATE    -> NEWSTATE    MS";
        let syn = "18:19:22 ffff88811c490000 18540   python3    127.0.0.1       0     127.0.0.1       51319 CLOSE       -> SYN_SENT    0.000";
        let server = "18:19:22 ffff88811c491280 18540   my server  127.0.0.1       51319 127.0.0.1       46562 ESTABLISHED -> CLOSE_WAIT  0.232";
        assert_eq!(parse_tcpstates_line(header, 51319), None);
        assert_eq!(
            parse_tcpstates_line(syn, 51319),
            Some(("CLOSE", "SYN_SENT"))
        );
        assert_eq!(
            parse_tcpstates_line(server, 51319),
            Some(("ESTABLISHED", "CLOSE_WAIT"))
        );
        assert_eq!(parse_tcpstates_line(server, 80), None);
        assert_eq!(parse_tcpstates_line("", 80), None);
        let stderr = "lost 12 events on CPU #0\nlost 3 events on CPU #1\nsomething else\n";
        assert_eq!(tcpstates_lost(stderr), 15);
    }
}
