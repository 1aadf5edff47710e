//! Test helper (not a user tool): a server that listens on `127.0.0.1` (ephemeral port, printed
//! on stdout), accepts one connection, greets it with `hello`, then neither reads nor closes
//! until a command arrives on stdin: `close` closes with the data unread (the kernel sends a
//! RST), `drain-close` reads to EOF first (a normal close: LAST_ACK). Started by the
//! integration tests (`tests/support/helper.rs`) so that a process other than the test's
//! holds a socket in CLOSE_WAIT.

use std::{
    io::{self, BufRead as _, Read as _, Write as _},
    net::TcpListener,
    process::ExitCode,
};

fn main() -> ExitCode {
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stubborn-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let mut stdout = io::stdout();
    writeln!(stdout, "{}", listener.local_addr()?.port())?;
    stdout.flush()?;
    let (mut conn, _) = listener.accept()?;
    conn.write_all(b"hello")?;
    let mut command = String::new();
    io::stdin().lock().read_line(&mut command)?;
    match command.trim() {
        "close" => {}
        "drain-close" => {
            conn.read_to_end(&mut Vec::new())?;
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown command {other:?}: expected close or drain-close"),
            ))
        }
    }
    drop(conn);
    drop(listener);
    Ok(())
}
