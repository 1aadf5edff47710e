//! Small formatting helpers of the report: durations for people, HTML escaping, owners and
//! endpoints as the text output writes them.

use std::net::{IpAddr, SocketAddr};

/// A duration for a reader: `850ns`, `74µs`, `3.99ms`, `800ms`, `1.58s`, `2m05s`, `3h12m`.
pub fn duration(ns: u64) -> String {
    const US: u64 = 1_000;
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;
    match ns {
        n if n < US => format!("{n}ns"),
        n if n < 10 * US => format!("{:.1}µs", n as f64 / US as f64),
        n if n < MS => format!("{}µs", n / US),
        n if n < 10 * MS => format!("{:.2}ms", n as f64 / MS as f64),
        n if n < S => format!("{}ms", n / MS),
        n if n < 60 * S && n % S == 0 => format!("{}s", n / S),
        n if n < 60 * S => format!("{:.2}s", n as f64 / S as f64),
        n if n < 3600 * S => format!("{}m{:02}s", n / (60 * S), (n / S) % 60),
        n => format!("{}h{:02}m", n / (3600 * S), (n / (60 * S)) % 60),
    }
}

/// Milliseconds for a reader, as [`duration`].
pub fn millis(ms: u64) -> String {
    duration(ms.saturating_mul(1_000_000))
}

/// Text made safe for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `python3 (pid 9871)`, `pid 9871`, or `an unknown process`.
pub fn owner(pid: Option<u32>, comm: Option<&str>) -> String {
    match (pid, comm) {
        (Some(pid), Some(comm)) => format!("{comm} (pid {pid})"),
        (Some(pid), None) => format!("pid {pid}"),
        (None, Some(comm)) => comm.to_owned(),
        (None, None) => "an unknown process".to_owned(),
    }
}

/// Short form of [`owner`] for chart labels: `python3/9871`, or `unknown`.
pub fn owner_short(pid: Option<u32>, comm: Option<&str>) -> String {
    match (pid, comm) {
        (Some(pid), Some(comm)) => format!("{comm}/{pid}"),
        (Some(pid), None) => pid.to_string(),
        (None, Some(comm)) => comm.to_owned(),
        (None, None) => "unknown".to_owned(),
    }
}

pub fn endpoint(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

/// `1 socket`, `3 sockets`.
pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(850), "850ns");
        assert_eq!(duration(4_968), "5.0µs");
        assert_eq!(duration(74_060), "74µs");
        assert_eq!(duration(3_992_000), "3.99ms");
        assert_eq!(duration(800_152_000), "800ms");
        assert_eq!(duration(1_584_000_000), "1.58s");
        assert_eq!(duration(30_000_000_000), "30s");
        assert_eq!(duration(125_000_000_000), "2m05s");
        assert_eq!(duration(11_520_000_000_000), "3h12m");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(escape("a\u{0}b"), "a\u{fffd}b");
    }
}
