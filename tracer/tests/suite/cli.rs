//! The command line, as a user meets it: help, and every kind of bad value rejected with a
//! message naming it and exit code 2, before anything is loaded into the kernel. No root.

use assert_cmd::Command;

use crate::support;

fn tracer() -> Command {
    Command::from_std(support::tracer_command())
}

#[test]
fn help_has_examples() {
    let out = tracer()
        .arg("--help")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let help = String::from_utf8(out).unwrap();
    for needle in [
        "Examples:",
        "--close-wait-threshold",
        "--port",
        "--json",
        "tracer -p 8080",
    ] {
        assert!(
            help.contains(needle),
            "{needle} missing from --help:\n{help}"
        );
    }
}

#[test]
fn version() {
    tracer().arg("--version").assert().success();
}

/// Each bad value exits 2 with one line that names the offending token.
#[test]
fn bad_values_name_the_problem() {
    let cases: &[(&[&str], &str)] = &[
        (&["--port", "http"], "\"http\""),
        (&["--port=0"], "\"0\""),
        (&["--port", "65536"], "\"65536\""),
        (&["--port", "80,,443"], "\"\""),
        (&["--duration", "soon"], "\"soon\""),
        (
            &["--duration", "0s"],
            "--duration must be greater than zero",
        ),
        (&["--close-wait-threshold=-1s"], "--close-wait-threshold"),
        (&["--report-interval", "1 fortnight"], "--report-interval"),
        (&["--ring-buffer-size", "1000"], "1000"),
        (&["--ring-buffer-size", "99999999999999"], "99999999999999"),
        (&["--max-sockets", "0"], "--max-sockets"),
        (&["-4", "-6"], "-4 and -6"),
    ];
    for (args, needle) in cases {
        let out = tracer().args(*args).assert().code(2).get_output().clone();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn clap_errors_are_usage_errors() {
    for args in [
        &["--no-such-flag"][..],
        &["--pid", "abc"],
        &["--max-sockets", "-5"],
        &["--port"],
    ] {
        let out = tracer().args(args).assert().code(2).get_output().clone();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
    }
}

#[test]
fn huge_and_binary_arguments_do_not_panic() {
    let huge = "9".repeat(100_000);
    tracer().args(["--port", &huge]).assert().code(2);
    tracer().args(["--duration", &huge]).assert().code(2);
    let binary = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&[0xff, 0xfe, b'x']);
    tracer().arg("--duration").arg(binary).assert().code(2);
}

/// `--metrics`: a bad address is a usage error; a port in use is named, exit 1; both before
/// the probe is loaded (so also without root, and without the eBPF object).
#[test]
fn metrics_address_errors_come_first() {
    let out = tracer()
        .args(["--metrics", "localhost:9464"])
        .assert()
        .code(2)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"localhost:9464\"") && stderr.contains("127.0.0.1:9464"),
        "{stderr}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = tracer()
        .args(["--metrics", &addr])
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&addr) && stderr.contains("already in use"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("attached") && !stderr.contains("eBPF"),
        "{stderr}"
    );
}

/// `tracer top` has its own help, rejects bad values like the stream, and refuses to start
/// without a terminal on stdout (before loading anything), naming the fix.
#[test]
fn top_needs_a_terminal_and_names_bad_values() {
    let help = tracer().args(["top", "--help"]).assert().success();
    let help = String::from_utf8(help.get_output().stdout.clone()).unwrap();
    for needle in ["--interval", "--port", "--pid", "--export", "Examples:"] {
        assert!(help.contains(needle), "{needle} missing:\n{help}");
    }
    let bad = tracer()
        .args(["top", "--interval", "soon"])
        .assert()
        .code(2);
    let stderr = String::from_utf8(bad.get_output().stderr.clone()).unwrap();
    assert!(
        stderr.contains("--interval") && stderr.contains("\"soon\""),
        "{stderr}"
    );
    let piped = tracer().arg("top").assert().code(1);
    let stderr = String::from_utf8(piped.get_output().stderr.clone()).unwrap();
    assert!(stderr.contains("needs a terminal on stdout"), "{stderr}");
}
