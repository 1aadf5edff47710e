//! What the matrix runs: the core test set, the tests that stay on the host and why, the boot
//! limit, and the scenarios each kernel boots (the tests, then the hostile kernels).

use clap::ValueEnum;

/// The privileged tests run on the kernels between the oldest and the newest booted (`--suite
/// auto`, what CI runs) or on all (`--suite core`): client and server transitions on IPv4 and
/// IPv6, the CLOSE_WAIT report with its owner, a socket stuck before start, reset, refused
/// connect, `kill -9` leaving nothing behind, both kernel hooks (tp_btf and the classic
/// tracepoint) agreeing, the forced classic tracepoint end to end, namespaces and thread names
/// read by the kernel side, what the socket itself says (the lock's owner, the peer's FIN:
/// `struct sock` layouts differ), and the socket-file iterator of the owner lookups. The oldest and newest kernel run every test.
pub const CORE_TESTS: &[&str] = &[
    "ipv4_client_and_server_sequences",
    "ipv6_client_and_server_sequences",
    "close_wait_is_reported_with_the_server_process",
    "close_wait_from_before_the_tracer_started",
    "reset_connection",
    "refused_connect",
    "kill_9_leaves_nothing_attached",
    "header_and_summary_state_what_the_kernel_offers",
    // Why connections end: what each kernel reports differs (5.10 has no error reports).
    "suite::causes::",
    "ipv4_tp_btf_and_tracepoint_report_the_same_transitions",
    "the_binary_names_its_hook_and_obeys_the_choice",
    "same_four_tuple_in_two_namespaces_live",
    "process_name_and_thread_name_are_kept_apart",
    "suite::context::",
    // The owner lookups' descriptor walk reads struct file and struct inode.
    "the_iterator_lists_the_sockets_and_namespaces_procfs_lists",
];

/// Seconds one boot may take by default: the full suite takes about 10 minutes under software
/// emulation on 2 CPUs (on 5.10 and 7.3, with other builds beside it); the rest is margin.
pub const BOOT_LIMIT_S: u64 = 1500;

/// Tests that cannot hold inside an emulated guest, with the reason the table shows. They run
/// on the host (`cargo xtask test`'s privileged stage).
pub const GUEST_SKIPS: &[(&str, &str)] = &[
    (
        "top_shows_a_real_leak_and_gives_the_terminal_back",
        "needs tmux (a real terminal), which the guest image does not carry; runs on the host",
    ),
    (
        "top_gives_the_terminal_back_on_ctrl_c_and_sigterm",
        "needs tmux (a real terminal), which the guest image does not carry; runs on the host",
    ),
    (
        "a_stalled_reader_does_not_block_the_kernel_side",
        "under software emulation the churn cannot outrun the output queue in its stall; runs on the host",
    ),
    (
        "browser_renders_the_fixture_report",
        "needs Chromium, which the guest image does not carry; runs on the host",
    ),
    (
        "real_capture_of_the_classic_leak",
        "renders its report in Chromium, which the guest image does not carry; runs on the host",
    ),
    (
        "overload_counts_every_loss_exactly_and_recovers",
        "under emulation the kernel drops transitions before the program runs, with no counter \
         saying so (seen on 6.1: 20 of 20,012 with recursion_misses 0; the silent loss of issue \
         12); exact on the host",
    ),
    (
        "a_stalled_reader_loses_only_counted_stdout_records_and_never_export_ones",
        "assumes the ring buffer never overflows during its burst, which it does under emulation; runs on the host",
    ),
    (
        "prometheus_sees_a_close_wait_leak_and_its_alert",
        "needs a Prometheus server, which the guest image does not carry; runs on the host",
    ),
    (
        "alert_rules_pass_promtool",
        "needs promtool, which the guest image does not carry; runs on the host",
    ),
    (
        "diagnosis_of_an_interpreter_degrades_to_thread_states_and_its_frames",
        "needs a Python interpreter, which the guest image does not carry; runs on the host",
    ),
    (
        "container_image_builds_with_podman",
        "needs podman, which the guest image does not carry; runs on the host",
    ),
];

/// Tests one kernel of the matrix cannot run, as Debian built it: (kernel, test, reason).
/// They run on the host and on the other kernels.
pub const KERNEL_SKIPS: &[(&str, &str, &str)] = &[
    (
        "5.10",
        "an_mptcp_subflow_says_so_at_its_close",
        "Debian's 5.10 cloud kernel is built without CONFIG_MPTCP; runs on the host and 6.1-7.3",
    ),
    (
        "5.10",
        "an_mptcp_connection_has_one_timeline_per_socket_and_no_repeated_steps",
        "Debian's 5.10 cloud kernel is built without CONFIG_MPTCP; runs on the host and 6.1-7.3",
    ),
    (
        "5.10",
        "an_mptcp_socket_left_in_close_wait_is_reported",
        "Debian's 5.10 cloud kernel is built without CONFIG_MPTCP; runs on the host and 6.1-7.3",
    ),
];

/// What a boot of `kernel`'s tests leaves out, with the reason the table shows.
pub fn skips(kernel: &str) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
    GUEST_SKIPS.iter().copied().chain(
        KERNEL_SKIPS
            .iter()
            .filter(move |(k, _, _)| *k == kernel)
            .map(|(_, test, why)| (*test, *why)),
    )
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    Full,
    Core,
    Auto,
}

/// What a boot checks.
#[derive(Clone, Copy)]
pub enum Check {
    /// The test binaries ran and every test passed.
    Tests,
    /// The tracer starts, attaches and exits 0.
    Starts,
    /// The tracer refuses to start and its error names `word`.
    Refuses(&'static str),
}

#[derive(Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub append: &'static str,
    pub check: Check,
}

pub const HOSTILE: &[Scenario] = &[
    Scenario {
        name: "lockdown",
        append: "lockdown=confidentiality tracer_vm.mode=smoke",
        check: Check::Refuses("lockdown"),
    },
    Scenario {
        name: "no-tracefs",
        append: "tracer_vm.mode=smoke tracer_vm.notracefs=1",
        check: Check::Starts,
    },
    Scenario {
        name: "jit-harden",
        append: "tracer_vm.mode=smoke tracer_vm.harden=1",
        check: Check::Starts,
    },
];

/// The boots of one kernel: its tests (every test on an `edge` kernel, the oldest or newest
/// booted, under `--suite auto`), then the hostile scenarios unless `no_hostile`. Each with its
/// kernel arguments and the SUITE column's word.
pub fn runs(
    kernel: &str,
    suite: Suite,
    filters: &[String],
    no_hostile: bool,
    edge: bool,
) -> Vec<(Scenario, String, &'static str)> {
    let full = match suite {
        Suite::Full => true,
        Suite::Core => false,
        Suite::Auto => edge,
    };
    let filter = if !filters.is_empty() {
        filters.join(",")
    } else if full {
        String::new()
    } else {
        CORE_TESTS.join(",")
    };
    let mut append = "tracer_vm.mode=tests".to_owned();
    let skips: Vec<&str> = skips(kernel).map(|(name, _)| name).collect();
    append.push_str(&format!(" tracer_vm.skip={}", skips.join(",")));
    if !filter.is_empty() {
        append.push_str(&format!(" tracer_vm.filter={filter}"));
    }
    let suite = if filter.is_empty() {
        "full"
    } else if filters.is_empty() {
        "core"
    } else {
        "filtered"
    };
    let tests = Scenario {
        name: "tests",
        append: "",
        check: Check::Tests,
    };
    let mut runs = vec![(tests, append, suite)];
    if !no_hostile {
        runs.extend(HOSTILE.iter().map(|s| (*s, s.append.to_owned(), "smoke")));
    }
    runs
}
