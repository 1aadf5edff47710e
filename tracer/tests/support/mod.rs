//! What the tests share: the tracer binary and its records, sockets on loopback, the network
//! namespace each privileged test runs in, and the helper processes. Every wait is bounded.

pub mod browser;
pub mod field;
mod helper;
mod live;
pub mod load;
mod netns;
mod tmpfs;
mod why;

use std::{
    collections::HashMap,
    io::Read as _,
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output},
    sync::{Mutex, OnceLock},
    thread,
    time::{Duration, Instant},
};

pub use helper::{HelperProcess, StubbornServer};
pub use live::Tracer;
pub use netns::NetNs;
pub use tmpfs::Tmpfs;
use tracer::record::{Record, TransitionRecord};
pub use why::WhyServer;

/// How long any single wait may take before the test fails. Generous, since a passing test
/// never waits this long: inside `cargo xtask vm-test`'s emulated guests a burst of a few
/// thousand connections takes tens of seconds to drain.
pub const WAIT: Duration = Duration::from_secs(90);

/// Fails unless running as root: privileged tests must never pass vacuously.
pub fn require_root() {
    let euid = nix::unistd::geteuid();
    assert!(
        euid.is_root(),
        "privileged tests need root and BPF (euid is {euid}); run them with `cargo xtask test` as root"
    );
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Names a tracer binary the tests run instead of the one `cargo test` built: `cargo xtask
/// vm-test` sets it to the release build, because under software emulation the unoptimized
/// binary's start-up (parsing the kernel's BTF) takes about ten seconds, in every test.
pub const BINARY_VAR: &str = "TRACER_TEST_BINARY";

/// The tracer binary under test: `$TRACER_TEST_BINARY` when set, else the one cargo built.
pub fn tracer_binary() -> PathBuf {
    std::env::var_os(BINARY_VAR).map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_tracer")),
        PathBuf::from,
    )
}

/// The tracer binary, with no logging configuration from the caller's environment.
pub fn tracer_command() -> Command {
    let mut cmd = Command::new(tracer_binary());
    cmd.env_remove("TRACER_LOG").env_remove("RUST_LOG");
    cmd
}

/// The recorded export every offline test starts from.
pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/export-v1.ndjson")
}

/// `tracer analyze ARGS INPUT`, run to its end.
pub fn analyze(args: &[&str], input: &Path) -> std::process::Output {
    tracer_command()
        .arg("analyze")
        .args(args)
        .arg(input)
        .output()
        .expect("run tracer analyze")
}

/// A program's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A file in `dir` holding the fixture's first `lines` lines, then `tail`.
pub fn edited(dir: &Path, lines: usize, tail: &str) -> PathBuf {
    let fixture = std::fs::read_to_string(fixture()).unwrap();
    let mut body: String = fixture
        .lines()
        .take(lines)
        .map(|l| format!("{l}\n"))
        .collect();
    body.push_str(tail);
    let path = dir.join("edited.ndjson");
    std::fs::write(&path, body).unwrap();
    path
}

/// NDJSON output parsed back with the library's own types; panics naming a bad line.
pub fn records(text: &str) -> Vec<Record> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Timelines and CLOSE_WAIT reports, in order: what `analyze` must rebuild exactly.
pub fn rebuilt(records: &[Record]) -> Vec<Record> {
    records
        .iter()
        .filter(|r| {
            matches!(
                r,
                Record::Timeline(_) | Record::CloseWait(_) | Record::CloseWaitResolved(_)
            )
        })
        .cloned()
        .collect()
}

/// Transitions touching `port` (local or remote).
pub fn transitions_on(records: &[Record], port: u16) -> Vec<TransitionRecord> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Transition(t) if t.lport == port || t.rport == port => Some(t.clone()),
            _ => None,
        })
        .collect()
}

/// The transitions of one socket, in order.
pub fn of_socket(
    transitions: &[TransitionRecord],
    skaddr: tracer::record::SkAddr,
) -> Vec<TransitionRecord> {
    transitions
        .iter()
        .filter(|t| t.skaddr == skaddr)
        .cloned()
        .collect()
}

/// `["CLOSE->SYN_SENT", ...]`.
pub fn path(transitions: &[TransitionRecord]) -> Vec<String> {
    transitions
        .iter()
        .map(|t| format!("{}->{}", t.old_state, t.new_state))
        .collect()
}

/// A listener on `addr` with an ephemeral port.
pub fn listen(addr: &str) -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind(addr).expect("bind a loopback listener");
    let local = listener.local_addr().unwrap();
    (listener, local)
}

/// A port with nothing listening on it (bound, then released).
pub fn dead_port(addr: &str) -> SocketAddr {
    let (listener, local) = listen(addr);
    drop(listener);
    local
}

/// Reads until EOF.
pub fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).unwrap();
    buf
}

/// Sends SIGINT to a child of ours and waits (bounded) for it to exit.
pub fn interrupt(child: &mut Child) -> ExitStatus {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal the tracer");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the tracer") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the tracer did not stop within {WAIT:?} of SIGINT");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The directory of [`public_copy`]'s copies, removed when the test binary exits.
static PUBLIC_DIR: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_public_copies() {
    if let Some(dir) = PUBLIC_DIR.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A copy of `path` that `nobody` can reach (mode `mode`, in a world-readable directory of
/// its own): the checkout itself may sit under a directory only root can enter. Each file is
/// copied once per test binary, never over a copy that may be running; the directory goes
/// when the test binary exits (each copy of the tracer is 160 MiB in a debug build).
pub fn public_copy(path: &Path, mode: u32) -> PathBuf {
    static COPIES: Mutex<Option<(PathBuf, HashMap<PathBuf, PathBuf>)>> = Mutex::new(None);
    let mut copies = COPIES.lock().unwrap();
    let (dir, done) = copies.get_or_insert_with(|| {
        let dir = tempfile::Builder::new()
            .prefix("tracer-test-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        if PUBLIC_DIR.set(dir.clone()).is_ok() {
            // SAFETY: registers a plain function, run by exit(3) when the test harness ends.
            let status = unsafe { libc::atexit(remove_public_copies) };
            assert_eq!(status, 0, "atexit");
        }
        (dir, HashMap::new())
    });
    if let Some(copy) = done.get(path) {
        return copy.clone();
    }
    let copy = dir.join(path.file_name().expect("a file"));
    std::fs::copy(path, &copy).expect("copy for nobody");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(mode)).unwrap();
    done.insert(path.to_owned(), copy.clone());
    copy
}

/// The tracer binary, runnable by `nobody`.
pub fn public_tracer() -> PathBuf {
    public_copy(&tracer_binary(), 0o755)
}

/// Runs `cmd` to completion. A binary copied moments ago can be briefly "busy" (ETXTBSY)
/// while another test thread's fork still holds the copy's write descriptor: retried.
pub fn output(cmd: &mut Command) -> Output {
    for _ in 0..100 {
        match cmd.output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                thread::sleep(Duration::from_millis(20));
            }
            result => return result.expect("run the command"),
        }
    }
    panic!("{cmd:?} stayed busy (ETXTBSY)");
}

/// Finds an executable on `PATH`.
pub fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The path of `tool`, installing Debian's `package` first when it is missing (as root; the
/// install waits at most 10 minutes, also for another apt to finish).
pub fn tool_from_debian(tool: &str, package: &str) -> std::path::PathBuf {
    if let Some(found) = which(tool) {
        return found;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "`{tool}` is missing: install Debian's `{package}` (apt-get install {package}), or run \
         the tests as root (`cargo xtask test`), which installs it"
    );
    eprintln!("installing Debian's {package} for `{tool}`");
    let install = || {
        Command::new("timeout")
            .args([
                "600",
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-install-recommends",
            ])
            .args(["-o", "DPkg::Lock::Timeout=300", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        // A fresh machine may have no package lists yet.
        let _ = Command::new("timeout")
            .args([
                "300",
                "apt-get",
                "update",
                "-q",
                "-o",
                "DPkg::Lock::Timeout=300",
            ])
            .status();
        assert!(install(), "apt-get install {package} failed");
    }
    which(tool).unwrap_or_else(|| panic!("{package} is installed but `{tool}` is not on PATH"))
}

/// Starts the tracer with stdout and stderr piped (for the tests that control how stdout is
/// read) and waits for it to report being attached (skipping the warnings before it); returns
/// the rest of its stderr.
pub fn spawn_piped<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
) -> (Child, std::io::BufReader<std::process::ChildStderr>) {
    use std::io::BufRead as _;
    require_root();
    let mut child = tracer_command()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the tracer binary");
    let mut err = std::io::BufReader::new(child.stderr.take().expect("piped stderr"));
    // Warnings about what the kernel lacks (5.10 has no error reports) can come first.
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = err.read_line(&mut line).expect("read the tracer's stderr");
        assert!(n > 0, "the tracer ended before attaching:\n{seen}");
        seen.push_str(&line);
        if line.contains("attached") {
            break;
        }
    }
    (child, err)
}

/// Stops a tracer whose stdout is piped: SIGINT, then its stdout read to the end (so a
/// stalled reader's backlog drains before the tracer can exit), then its exit status.
pub fn stop_piped(child: &mut Child) -> (ExitStatus, String) {
    use std::io::Read as _;
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("signal the tracer");
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut out)
        .expect("read the tracer's stdout");
    (child.wait().expect("wait for the tracer"), out)
}

/// The client sends, shuts down its write side, the server reads to EOF and closes, then the
/// client reads to EOF and closes (client: active close; server: CLOSE_WAIT then LAST_ACK).
pub fn exchange(mut client: TcpStream, mut server: TcpStream) {
    use std::io::Write as _;
    client.write_all(b"hello").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello");
    drop(server);
    client.read_to_end(&mut got).unwrap();
}

/// A new MPTCP socket (`socket(family, SOCK_STREAM, IPPROTO_MPTCP)`), `family` being
/// `libc::AF_INET` or `libc::AF_INET6`. Panics where the kernel has no MPTCP.
pub fn mptcp_socket(family: libc::c_int) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd as _;
    // SAFETY: a plain socket(2) call; the descriptor is owned from here on.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_MPTCP,
        )
    };
    assert!(
        fd >= 0,
        "socket({family}, SOCK_STREAM, IPPROTO_MPTCP): {} (a kernel built without \
         CONFIG_MPTCP, or net.mptcp.enabled = 0 in a new namespace)",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` was just opened and nothing else owns it.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}
