//! A real browser for the report tests: Debian's `chromium`, installed with apt-get when it is
//! missing (as root, as CI runs), run headless with bounded time. Screenshots and reports are
//! kept under `target/tmp/html-report/` for a person to look at.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

/// How long one browser run may take.
const RUN: Duration = Duration::from_secs(90);
/// The page is laid out this wide; the screenshot is this tall (the whole report).
const WINDOW: &str = "--window-size=1100,4600";

/// Where the artefacts go: `target/tmp/html-report/`.
pub fn artefacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("html-report");
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn find_chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// The browser, installed from Debian's archive when missing.
pub fn chromium() -> PathBuf {
    if let Some(path) = find_chromium() {
        return path;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "chromium is missing and only root can install it: `apt-get install chromium`, or run `cargo xtask test` as root"
    );
    eprintln!("installing Debian's chromium for the browser test (apt-get install chromium)");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "chromium"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let updated = Command::new("apt-get").arg("update").status();
        assert!(updated.is_ok_and(|s| s.success()), "apt-get update failed");
        assert!(install(), "apt-get install chromium failed");
    }
    find_chromium().expect("chromium installed but not found in /usr/bin")
}

/// What a browser run printed.
struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs chromium headless on `page` with `args`, killed (by its pid) past [`RUN`]. Its output
/// goes to files, so a full pipe can never stall it.
fn run(page: &Path, args: &[&str]) -> Output {
    let profile = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (profile.path().join("stdout"), profile.path().join("stderr"));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .env("HOME", profile.path())
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + RUN;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within {RUN:?}");
        }
        thread::sleep(Duration::from_millis(100));
    };
    Output {
        success: status.success(),
        stdout: fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Renders `page` to `png` and checks it rendered: the page's own consistency check passed,
/// the browser logged no console message but that check's, and the screenshot is not blank.
pub fn check(page: &Path, png: &Path) -> PathBuf {
    let page = page.canonicalize().unwrap();
    let dom = run(
        &page,
        &["--enable-logging=stderr", "--v=0", "--dump-dom", WINDOW],
    );
    let (stdout, stderr) = (&dom.stdout, &dom.stderr);
    assert!(dom.success, "chromium --dump-dom failed:\n{stderr}");
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert_eq!(
        console.len(),
        1,
        "console messages:\n{}",
        console.join("\n")
    );
    assert!(
        console[0].contains("\"tracer-report-check: yes\""),
        "{}",
        console[0]
    );
    assert!(
        stdout.contains("data-consistent=\"yes\""),
        "the page's check did not pass"
    );
    assert!(stdout.contains("Consistency check passed"));
    let _ = fs::remove_file(png);
    let shot = run(&page, &[&format!("--screenshot={}", png.display()), WINDOW]);
    assert!(
        shot.success,
        "chromium --screenshot failed:\n{}",
        shot.stderr
    );
    assert_not_blank(png);
    png.to_owned()
}

/// A rendered report has plenty of ink and colour; a blank or failed page has neither.
fn assert_not_blank(png: &Path) {
    let decoder = png::Decoder::new(fs::File::open(png).expect("a screenshot"));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(
        info.width >= 1000 && info.height >= 1000,
        "{}x{}",
        info.width,
        info.height
    );
    let pixels = buf[..info.buffer_size()].chunks(channels);
    let (mut ink, mut total) = (0u64, 0u64);
    let mut colours = std::collections::HashSet::new();
    for p in pixels {
        total += 1;
        if p[..3].iter().any(|&c| c < 200) {
            ink += 1;
        }
        if colours.len() < 1000 {
            colours.insert((p[0] / 16, p[1] / 16, p[2] / 16));
        }
    }
    assert!(
        ink * 100 > total * 2,
        "only {ink} of {total} pixels are not white"
    );
    assert!(colours.len() > 20, "only {} colours", colours.len());
}
