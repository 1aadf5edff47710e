//! `tracer analyze` and the export file's safety, through the binary. No root needed: when the
//! tests do run as root, the binary is run as `nobody` where it matters, to prove it.

use std::{
    fs,
    io::Write as _,
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use expect_test::expect_file;
use tracer::record::Record;

use crate::support::{
    self, analyze, edited, fixture, is_root, rebuilt, text, tracer_command as tracer,
};

const NOBODY: u32 = 65534;

fn run(args: &[&str]) -> Output {
    tracer().args(args).output().expect("run tracer")
}

fn records(stdout: &[u8]) -> Vec<Record> {
    support::records(&text(stdout))
}

#[test]
fn golden_text() {
    let out = analyze(&["--timelines"], &fixture());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
    expect_file!["../data/export-v1.analyze.txt"].assert_eq(&text(&out.stdout));
}

#[test]
fn golden_json() {
    let out = analyze(&["--json"], &fixture());
    assert!(out.status.success(), "{}", text(&out.stderr));
    expect_file!["../data/export-v1.analyze.ndjson"].assert_eq(&text(&out.stdout));
    // The output reads back with the library's own types.
    let records = records(&out.stdout);
    assert!(matches!(records.last(), Some(Record::Analysis(_))));
}

#[test]
fn rebuilt_timelines_equal_the_recorded_ones() {
    let recorded = records(&fs::read(fixture()).unwrap());
    let out = analyze(&["--json", "--timelines"], &fixture());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let analysed = records(&out.stdout);
    assert_eq!(rebuilt(&analysed), rebuilt(&recorded));
    assert_eq!(rebuilt(&recorded).len(), 19);
}

#[test]
fn reads_stdin() {
    let mut child = tracer()
        .args(["analyze", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let bytes = fs::read(fixture()).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&bytes));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, analyze(&[], &fixture()).stdout);
}

#[test]
fn needs_no_root() {
    let mut cmd = nobody_tracer();
    cmd.args(["analyze", "--timelines"])
        .arg(support::public_copy(&fixture(), 0o644));
    let out = support::output(&mut cmd);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, analyze(&["--timelines"], &fixture()).stdout);
}

#[test]
fn bad_line_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = edited(
        dir.path(),
        5,
        "{\"type\":\"transition\",\"ts_ns\":\"soon\"}\n",
    );
    let out = analyze(&[], &input);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("tracer: error: line 6: bad transition record: ts_ns: invalid type"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn truncated_last_line_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = fs::read_to_string(fixture()).unwrap();
    let cut = fixture.lines().nth(30).unwrap();
    let input = edited(dir.path(), 30, &cut[..cut.len() / 2]);
    let out = analyze(&[], &input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("warning: line 31: the last line is cut short"),
        "{err}"
    );
    assert!(err.contains("warning: no summary at the end"), "{err}");
    assert!(text(&out.stdout).contains("(no summary: the tracer did not stop cleanly)"));
}

#[test]
fn newer_schema_is_skipped_with_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = fs::read_to_string(fixture()).unwrap();
    let newer: String = fixture
        .lines()
        .map(|l| {
            let l = l.replace("\"cpu\":", "\"cgroup\":\"/system.slice/x\",\"cpu\":");
            format!("{l}\n{{\"type\":\"socket_stats\",\"rtt_us\":12}}\n")
        })
        .collect();
    let input = dir.path().join("newer.ndjson");
    fs::write(&input, newer).unwrap();
    let out = analyze(&["--json", "--timelines"], &input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("line 2: unknown record type \"socket_stats\""),
        "{err}"
    );
    assert!(
        err.contains("unknown field \"cgroup\" in a transition record"),
        "{err}"
    );
    assert!(err.contains("more warning(s) like those above"), "{err}");
    let expected = analyze(
        &["--json", "--timelines"],
        &fixture_path_for(&fixture, dir.path()),
    );
    assert_eq!(
        rebuilt(&records(&out.stdout)),
        rebuilt(&records(&expected.stdout))
    );
}

fn fixture_path_for(body: &str, dir: &Path) -> PathBuf {
    let path = dir.join("plain.ndjson");
    fs::write(&path, body).unwrap();
    path
}

#[test]
fn empty_and_missing_inputs_fail() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.ndjson");
    fs::write(&empty, "").unwrap();
    let out = analyze(&[], &empty);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no records in the input"));
    let out = analyze(&[], &dir.path().join("missing.ndjson"));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot open"));
    let out = analyze(&["--close-wait-threshold", "soon"], &fixture());
    assert_eq!(out.status.code(), Some(2));
}

/// A directory anyone may write to, so the tracer can be run as `nobody` in it.
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// The tracer run as `nobody` (a copy `nobody` can reach), or as is when not root.
fn nobody_tracer() -> Command {
    if !is_root() {
        return tracer();
    }
    let mut cmd = Command::new(support::public_tracer());
    cmd.env_remove("TRACER_LOG")
        .env_remove("RUST_LOG")
        .uid(NOBODY)
        .gid(NOBODY);
    cmd
}

#[test]
fn export_refuses_an_existing_file_before_loading_ebpf() {
    let dir = open_dir();
    let path = dir.path().join("run.ndjson");
    fs::write(&path, "an earlier run\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o666)).unwrap();
    // As nobody, loading eBPF would fail with exit code 77: the file check comes first.
    let out = support::output(
        nobody_tracer()
            .arg("--export")
            .arg(&path)
            .args(["--duration", "1s"]),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("refusing to overwrite")
            && err.contains("run.ndjson")
            && err.contains("--force"),
        "{err}"
    );
    assert_eq!(fs::read_to_string(&path).unwrap(), "an earlier run\n");
}

#[test]
fn export_needs_export_for_force() {
    let out = run(&["--force"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn failed_start_leaves_no_export_behind() {
    // As nobody (when root) or as is (when not), the start fails as wanted.
    let dir = open_dir();
    let path = dir.path().join("new.ndjson");
    let out = support::output(
        nobody_tracer()
            .arg("--export")
            .arg(&path)
            .args(["--duration", "1s"]),
    );
    assert_ne!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        !path.exists(),
        "the export of a run that never started is removed"
    );
}

/// The analysis record at the end of `analyze --json` output.
fn analysis(args: &[&str], input: &Path) -> tracer::record::AnalysisRecord {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = analyze(&all, input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    match records(&out.stdout).pop() {
        Some(Record::Analysis(a)) => a,
        other => panic!("no analysis at the end: {other:?}"),
    }
}

#[test]
fn edited_timelines_are_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = fs::read_to_string(fixture()).unwrap();
    let edited: String = fixture
        .lines()
        .map(|l| l.replacen("\"outcome\":\"reset\"", "\"outcome\":\"active_close\"", 1) + "\n")
        .collect();
    let input = dir.path().join("edited.ndjson");
    fs::write(&input, edited).unwrap();
    let out = analyze(&[], &input);
    assert!(out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("2 rebuilt timeline(s) differ from those the traced run recorded"),
        "{err}"
    );
}

#[test]
fn pid_scopes_the_analysis() {
    let all = analysis(&[], &fixture());
    assert_eq!((all.connections, all.close_wait.len()), (14, 3));
    let ours = analysis(&["--pid", "9871"], &fixture());
    // Two server sockets never had a known owner.
    assert_eq!((ours.connections, ours.close_wait.len()), (12, 3));
    let none = analysis(&["--pid", "1"], &fixture());
    assert_eq!((none.connections, none.close_wait.len()), (0, 0));
}

#[test]
fn threshold_recomputes_close_wait() {
    let ages = |threshold: &str| -> Vec<u64> {
        analysis(&["--close-wait-threshold", threshold], &fixture())
            .close_wait
            .iter()
            .map(|f| f.age_ms)
            .collect()
    };
    assert_eq!(ages("300ms"), vec![1584, 1271, 800]);
    // The socket found at start-up is listed as the live run reported it, whatever the
    // threshold; the others are recomputed from their timelines.
    assert_eq!(ages("1s"), vec![1584, 1271]);
    assert_eq!(ages("1ms"), vec![1584, 1271, 800]);
    // Down to the 5 µs and 9 µs CLOSE_WAITs of connections closed at once.
    assert_eq!(ages("1us").len(), 5);
}

/// `tracer --json | tee x | tracer analyze -`: plain --json output has every transition, so it
/// analyses without a warning; with --pid it does not, and says so.
#[test]
fn stdout_streams() {
    let dir = tempfile::tempdir().unwrap();
    let recorded = fs::read_to_string(fixture()).unwrap();
    let stdout_of = |header_edit: &str, keep: &dyn Fn(&str) -> bool| -> PathBuf {
        let body: String = recorded
            .lines()
            .enumerate()
            .filter(|(i, l)| *i == 0 || keep(l))
            .map(|(i, l)| {
                let l = if i == 0 {
                    l.replace("\"complete\":true", "\"complete\":false")
                        .replace("\"written_to\":\"export\"", "\"written_to\":\"stdout\"")
                        .replace("\"pids\":[]", header_edit)
                } else {
                    l.to_owned()
                };
                l + "\n"
            })
            .collect();
        let path = dir
            .path()
            .join(format!("stdout{}.ndjson", header_edit.len()));
        fs::write(&path, body).unwrap();
        path
    };
    let plain = stdout_of("\"pids\":[]", &|l| !l.contains("\"type\":\"timeline\""));
    let out = analyze(&["--timelines"], &plain);
    assert!(out.status.success());
    assert_eq!(text(&out.stderr), "");
    assert_eq!(out.stdout, analyze(&["--timelines"], &fixture()).stdout);
    let one_pid = stdout_of("\"pids\":[9871]", &|l| !l.contains("\"pid\":null"));
    let out = analyze(&[], &one_pid);
    assert!(out.status.success());
    assert!(text(&out.stderr).contains("transitions are missing"));
}

/// A stream that says it is stdout counts stdout's drops as its losses, even when it holds
/// every record type (`--json --timelines`); an export counts the export's. Streams from before
/// `written_to` count a complete one as an export.
#[test]
fn a_stream_counts_the_drops_of_its_own_destination() {
    let dir = tempfile::tempdir().unwrap();
    let recorded = fs::read_to_string(fixture()).unwrap();
    let edited = |written_to: &str| -> PathBuf {
        let body: String = recorded
            .lines()
            .map(|l| {
                let l = if l.contains("\"type\":\"header\"") {
                    l.replace(
                        "\"complete\":true,\"written_to\":\"export\"",
                        &format!("\"complete\":true{written_to}"),
                    )
                } else {
                    l.replace("\"output_dropped\":0", "\"output_dropped\":1234")
                };
                l + "\n"
            })
            .collect();
        let path = dir.path().join(format!("w{}.ndjson", written_to.len()));
        fs::write(&path, body).unwrap();
        path
    };
    let stdout = analysis(&[], &edited(",\"written_to\":\"stdout\""));
    assert_eq!(stdout.lost, 1234);
    let out = analyze(&[], &edited(",\"written_to\":\"stdout\""));
    assert!(
        text(&out.stderr).contains("dropped by this stream's writer: 1234"),
        "{}",
        text(&out.stderr)
    );
    // A socket not seen leaving CLOSE_WAIT may have left it in a lost record: said so.
    assert!(
        text(&out.stdout).contains("may have left it in one of them"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(analysis(&[], &edited(",\"written_to\":\"export\"")).lost, 0);
    assert_eq!(analysis(&[], &edited("")).lost, 0);
}
