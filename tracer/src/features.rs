//! What the running kernel offers the tracer, detected once at start, logged with `-v`,
//! recorded in the header (`kernel_features`), and used to degrade feature by feature with a
//! stated reason instead of failing.
//!
//! Sources: `/sys/kernel/security/lockdown` (the lockdown LSM's mode), `/sys/kernel/btf/vmlinux`
//! (kernel BTF), tracefs event directories (which tracepoints exist), aya's feature probes
//! (BPF ring buffer: 5.8+; tracepoints attached through a bpf_link: 5.15+), and the loaded
//! program's fdinfo (`recursion_misses`: 5.12+).

use std::{fmt::Write as _, fs, path::Path};

use serde::{Deserialize, Serialize};

/// Where the lockdown LSM shows its mode, e.g. `none [integrity] confidentiality`.
pub const LOCKDOWN_FILE: &str = "/sys/kernel/security/lockdown";

/// Tracepoints the tracer uses or may use, as `category/name`.
pub const TRACEPOINTS: &[&str] = &[
    "sock/inet_sock_set_state",
    "tcp/tcp_send_reset",
    "tcp/tcp_receive_reset",
    "sock/inet_sk_error_report",
    "sock/sock_recv_length",
];

/// The kernel's offer, as the header records it. `None` where a fact could not be read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KernelFeatures {
    /// Lockdown mode (`none`, `integrity`, `confidentiality`); null without securityfs or
    /// the lockdown LSM.
    pub lockdown: Option<String>,
    /// Kernel BTF is available (`/sys/kernel/btf/vmlinux`).
    pub btf: bool,
    /// The BPF ring buffer map (Linux 5.8+); null when it could not be probed.
    pub ring_buffer: Option<bool>,
    /// Tracepoint programs attach through a bpf_link (5.15+) rather than a perf event ioctl.
    pub bpf_link: Option<bool>,
    /// The program's fdinfo reports `recursion_misses` (5.12+): runs the kernel skipped are
    /// counted. Null until the program is loaded.
    pub recursion_misses: Option<bool>,
    /// Tracepoints found in tracefs, from [`TRACEPOINTS`].
    pub tracepoints: Vec<String>,
    /// Tracepoints of [`TRACEPOINTS`] this kernel lacks.
    pub missing_tracepoints: Vec<String>,
    /// The tracepoints attached to learn why connections end (`tcp/tcp_send_reset`,
    /// `tcp/tcp_receive_reset`, `sock/inet_sk_error_report`): transitions to CLOSE carry
    /// `error` and `reset_by` from these only. Null in exports written before they were traced.
    pub cause_tracepoints: Option<Vec<String>>,
    /// The program attached: `tp_btf/inet_sock_set_state` (the BTF-enabled raw tracepoint)
    /// or `tracepoint/sock/inet_sock_set_state` (the classic one). Null until attached.
    pub hook: Option<String>,
    /// Why the classic tracepoint was attached when `--hook auto` tried `tp_btf` first (the
    /// kernel's refusal, or the BTF offsets it lacks); null otherwise.
    pub hook_fallback: Option<String>,
    /// Groups of kernel struct offsets the kernel's BTF did not give, and what is lost
    /// without each (the socket's fields for `tp_btf`, `netns`, the process name).
    pub missing_offsets: Vec<String>,
}

impl KernelFeatures {
    /// Reads what can be read without loading anything: lockdown, BTF, tracepoints (under
    /// `tracefs`, when it is mounted) and aya's probes.
    pub fn detect(tracefs: Option<&Path>) -> KernelFeatures {
        let mut features = KernelFeatures {
            lockdown: fs::read_to_string(LOCKDOWN_FILE)
                .ok()
                .and_then(|t| lockdown_mode(&t)),
            btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
            ring_buffer: aya::sys::is_map_supported(aya::maps::MapType::RingBuf).ok(),
            bpf_link: Some(aya::features().bpf_perf_link()),
            ..KernelFeatures::default()
        };
        if let Some(tracefs) = tracefs {
            for tp in TRACEPOINTS {
                if tracefs.join("events").join(tp).is_dir() {
                    features.tracepoints.push((*tp).to_owned());
                } else {
                    features.missing_tracepoints.push((*tp).to_owned());
                }
            }
        }
        features
    }

    /// Kernel lockdown forbids what the tracer needs (`confidentiality` hides tracefs and
    /// forbids BPF reads of kernel memory).
    pub fn locked_down(&self) -> bool {
        self.lockdown.as_deref() == Some("confidentiality")
    }

    /// One line for `-v`: what is there, and what is not and what that costs.
    pub fn describe(&self) -> String {
        let yes = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        };
        let mut line = format!(
            "kernel features: lockdown {}, BTF {}, ring buffer {}, bpf_link attach {}, recursion_misses {}",
            self.lockdown.as_deref().unwrap_or("not available"),
            if self.btf { "yes" } else { "no" },
            yes(self.ring_buffer),
            yes(self.bpf_link),
            yes(self.recursion_misses),
        );
        if let Some(hook) = &self.hook {
            let _ = write!(line, "; hook {hook}");
        }
        if let Some(why) = &self.hook_fallback {
            let _ = write!(line, " (tp_btf refused: {why})");
        }
        if !self.missing_offsets.is_empty() {
            let _ = write!(
                line,
                "; BTF offsets missing: {}",
                self.missing_offsets.join("; ")
            );
        }
        if !self.missing_tracepoints.is_empty() {
            let _ = write!(
                line,
                "; missing tracepoints: {}",
                self.missing_tracepoints.join(", ")
            );
        }
        if self.recursion_misses == Some(false) {
            line.push_str("; runs the kernel skips cannot be counted on this kernel (summary says not available)");
        }
        line
    }
}

/// The selected mode of `/sys/kernel/security/lockdown`: the bracketed word.
pub fn lockdown_mode(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix('[').and_then(|w| w.strip_suffix(']')))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lockdown_mode_is_the_bracketed_word() {
        assert_eq!(
            lockdown_mode("[none] integrity confidentiality\n").as_deref(),
            Some("none")
        );
        assert_eq!(
            lockdown_mode("none integrity [confidentiality]\n").as_deref(),
            Some("confidentiality")
        );
        assert_eq!(lockdown_mode(""), None);
    }

    #[test]
    fn confidentiality_is_locked_down_integrity_is_not() {
        let mut f = KernelFeatures {
            lockdown: Some("integrity".into()),
            ..KernelFeatures::default()
        };
        assert!(!f.locked_down());
        f.lockdown = Some("confidentiality".into());
        assert!(f.locked_down());
    }

    #[test]
    fn describe_names_what_is_missing() {
        let f = KernelFeatures {
            lockdown: Some("none".into()),
            btf: true,
            ring_buffer: Some(true),
            bpf_link: Some(false),
            recursion_misses: Some(false),
            tracepoints: vec!["sock/inet_sock_set_state".into()],
            missing_tracepoints: vec!["sock/sock_recv_length".into()],
            cause_tracepoints: Some(vec!["tcp/tcp_send_reset".into()]),
            hook: Some("tracepoint/sock/inet_sock_set_state".into()),
            hook_fallback: Some("the verifier said no".into()),
            missing_offsets: Vec::new(),
        };
        let line = f.describe();
        assert!(line.contains("bpf_link attach no"), "{line}");
        assert!(
            line.contains("missing tracepoints: sock/sock_recv_length"),
            "{line}"
        );
        assert!(line.contains("not available"), "{line}");
        assert!(
            line.contains(
                "hook tracepoint/sock/inet_sock_set_state (tp_btf refused: the verifier said no)"
            ),
            "{line}"
        );
    }
}
