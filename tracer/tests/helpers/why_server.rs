//! Test helper (not a user tool): servers stuck in the ways `diagnosis` explains, for the
//! privileged tests of issue 14 (`tests/suite/diagnosis.rs`). Each listens on `127.0.0.1`
//! (ephemeral port, printed on stdout as the first line), and its main thread waits for a line
//! (or the end) on stdin, then exits.
//!
//! - `deadlock`: accepts one connection and hands it to thread `worker-1`, which greets it and
//!   then blocks for ever in [`lock_accounts`] on a mutex the main thread holds.
//! - `db-read DBPORT`: accepts one connection and hands it to `worker-1`, which connects to a
//!   "database" on `127.0.0.1:DBPORT` and blocks in `read()` on it.
//! - `leak NOFILE`: sets its `RLIMIT_NOFILE` to `NOFILE`, accepts connections and never closes
//!   them; when `accept()` fails with `EMFILE` it prints `EMFILE <CLOCK_MONOTONIC ns>`.

use std::{
    io::{self, BufRead as _, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::ExitCode,
    sync::{Arc, Mutex},
    thread,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["deadlock"] => deadlock(),
        ["db-read", port] => db_read(port),
        ["leak", nofile] => leak(nofile),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("usage: why-server deadlock | db-read DBPORT | leak NOFILE (got {args:?})"),
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("why-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Binds `127.0.0.1:0` and prints the port.
fn listen() -> io::Result<TcpListener> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut stdout = io::stdout();
    writeln!(stdout, "{}", listener.local_addr()?.port())?;
    stdout.flush()?;
    Ok(listener)
}

/// Blocks until stdin has a line or ends.
fn wait_for_stdin() -> io::Result<()> {
    io::stdin().lock().read_line(&mut String::new()).map(drop)
}

/// Takes the lock on the accounts: the function the report must name. Never inlined, so it
/// has a frame of its own.
#[inline(never)]
fn lock_accounts(accounts: &Mutex<u64>) -> u64 {
    let guard = accounts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *guard
}

fn deadlock() -> io::Result<()> {
    let listener = listen()?;
    let (mut conn, _) = listener.accept()?;
    let accounts = Arc::new(Mutex::new(0u64));
    let held = accounts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let shared = Arc::clone(&accounts);
    thread::Builder::new()
        .name("worker-1".into())
        .spawn(move || {
            let _ = conn.write_all(b"hello");
            let total = lock_accounts(&shared);
            // Never reached while main holds the lock: the connection stays open.
            drop(conn);
            total
        })?;
    wait_for_stdin()?;
    drop(held);
    Ok(())
}

fn db_read(port: &str) -> io::Result<()> {
    let port: u16 = port.parse().map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("DBPORT {port:?}: {e}"))
    })?;
    let listener = listen()?;
    let (conn, _) = listener.accept()?;
    thread::Builder::new()
        .name("worker-1".into())
        .spawn(move || -> io::Result<()> {
            let mut db = TcpStream::connect(("127.0.0.1", port))?;
            let mut answer = [0u8; 64];
            // The database never answers: blocked here, holding the client's connection.
            let _ = db.read(&mut answer)?;
            drop(conn);
            Ok(())
        })?;
    wait_for_stdin()
}

fn leak(nofile: &str) -> io::Result<()> {
    let nofile: u64 = nofile.parse().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("NOFILE {nofile:?}: {e}"),
        )
    })?;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, nofile, nofile)
        .map_err(io::Error::from)?;
    let listener = listen()?;
    let mut leaked = Vec::new();
    loop {
        match listener.accept() {
            Ok((conn, _)) => leaked.push(conn),
            Err(e) if e.raw_os_error() == Some(nix::libc::EMFILE) => {
                let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
                    .map_err(io::Error::from)?;
                let ns = u64::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000_000
                    + u64::try_from(now.tv_nsec()).unwrap_or(0);
                let mut stdout = io::stdout();
                writeln!(stdout, "EMFILE {ns} after {} connections", leaked.len())?;
                stdout.flush()?;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    wait_for_stdin()
}
