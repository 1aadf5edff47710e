//! The diagnosis in text: two or three short lines under a report, everything with `-v`.

use std::{borrow::Cow, fmt::Write as _};

use super::{Diagnosis, FdSocket, Frame, ThreadDiagnosis};
use crate::printable::printable;

/// Lines to print under a report (without indentation): the pressure line, the thread groups
/// with the first blocked thread, and where it is in the code. With `detail`, every listed
/// thread with its whole stack, and what could not be read.
pub fn lines(d: &Diagnosis, detail: bool) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(line) = super::pressure::line(d) {
        out.push(line);
    }
    if !d.thread_groups.is_empty() {
        let mut s = String::from("threads: ");
        for (i, g) in d.thread_groups.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "{} in {}", g.count, g.blocked_in);
        }
        if let Some(rt) = &d.runtime {
            let _ = write!(
                s,
                " (a {rt} runtime: its frames are the interpreter's or JIT's)"
            );
        }
        out.push(s);
    }
    if let Some(read) = &d.last_read {
        out.push(last_read(read));
    }
    let shown = if detail { d.threads.len() } else { 1 };
    for t in d.threads.iter().take(shown) {
        let frames: Vec<&Frame> = t.frames.iter().collect();
        if !detail {
            match first_known(&frames) {
                Some(f) => out.push(format!("{} at {}", thread(t), frame(f))),
                None => out.push(thread(t)),
            }
            continue;
        }
        out.push(thread(t));
        {
            for f in &frames {
                out.push(format!("    {}", frame(f)));
            }
            if let Some(stop) = &t.stack_stop {
                out.push(format!("    ({} frames; {stop})", t.frames.len()));
            }
            if !t.kernel_stack.is_empty() {
                out.push(format!("    kernel: {}", t.kernel_stack.join(" < ")));
            }
        }
    }
    if detail {
        for u in &d.unavailable {
            out.push(format!("unavailable: {}: {}", u.field, u.reason));
        }
    }
    out
}

/// `thread 4242 (worker-3) blocked in read() on fd 9: TCP 10.0.0.2:51000 -> 10.0.0.5:5432
/// ESTABLISHED`.
pub fn thread(t: &ThreadDiagnosis) -> String {
    let mut s = format!(
        "thread {} ({}) blocked in {}",
        t.tid,
        printable(&t.name),
        t.blocked_in
    );
    if let Some(fd) = t.fd {
        let _ = write!(s, " on fd {fd}");
        if t.on_stuck_socket {
            s.push_str(" (the stuck socket)");
        }
        match (&t.fd_socket, &t.fd_target) {
            (Some(sock), _) => {
                let _ = write!(s, ": {}", socket(sock));
            }
            (None, Some(target)) => {
                let _ = write!(s, ": {}", printable(target));
            }
            (None, None) => {}
        }
    }
    s
}

/// `last read 41.2 s ago (5 bytes) by thread 4242 (worker-3), which is now blocked in futex
/// wait`.
pub fn last_read(r: &crate::reads::LastReadReport) -> String {
    let mut s = format!(
        "last read {}.{} s ago ({}) by thread {} ({})",
        r.age_ms / 1000,
        r.age_ms % 1000 / 100,
        if r.bytes == 0 {
            "end of file".to_owned()
        } else {
            format!("{} bytes", r.bytes)
        },
        r.tid,
        printable(&r.thread)
    );
    if let Some(now) = &r.now_blocked_in {
        let _ = write!(s, ", which is now blocked in {now}");
    }
    s
}

fn socket(s: &FdSocket) -> String {
    let end = |ip: std::net::IpAddr, port: u16| match ip {
        std::net::IpAddr::V4(v4) => format!("{v4}:{port}"),
        std::net::IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    format!(
        "TCP {} -> {} {}",
        end(s.laddr, s.lport),
        end(s.raddr, s.rport),
        s.state
    )
}

/// `lock_accounts (src/main.rs:55)`, `syscall in libc.so.6`, or the address.
pub fn frame(f: &Frame) -> String {
    let module = f
        .module
        .as_deref()
        .map(|m| printable(m.rsplit('/').next().unwrap_or(m)));
    let function = f.function.as_deref().map(printable);
    let file = f.file.as_deref().map(printable);
    match (function, file, f.line) {
        (Some(func), Some(file), Some(line)) => format!("{func} ({file}:{line})"),
        (Some(func), _, _) => format!("{func} in {}", module.unwrap_or(Cow::Borrowed("?"))),
        (None, _, _) => match module {
            Some(m) => format!("{:#x} in {m}", f.addr),
            None => format!("{:#x} (anonymous memory: JIT-compiled code?)", f.addr),
        },
    }
}

/// The innermost frame outside the C library and the Rust standard library's locking and
/// I/O plumbing: where the program itself waits. The innermost one when there is none.
fn first_known<'a>(frames: &[&'a Frame]) -> Option<&'a Frame> {
    let plumbing = |f: &Frame| {
        let module = f.module.as_deref().unwrap_or("");
        let func = f.function.as_deref().unwrap_or("");
        module.contains("/libc.so")
            || module.contains("/libc-")
            || module.contains("/libpthread")
            || func.starts_with("std::")
            || func.starts_with("core::")
            || func.starts_with("<std::")
            || func.starts_with("__")
    };
    frames
        .iter()
        .find(|f| f.function.is_some() && !plumbing(f))
        .or_else(|| frames.first())
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnosis::{ThreadGroup, Unavailable};

    fn diagnosis() -> Diagnosis {
        let f = |addr, function: Option<&str>, file: Option<&str>, line, module: &str| Frame {
            addr,
            function: function.map(str::to_owned),
            file: file.map(str::to_owned),
            line,
            module: Some(module.to_owned()),
        };
        Diagnosis {
            pid: 1234,
            fds_open: Some(812),
            fds_limit: Some(1024),
            close_wait_held: Some(800),
            close_wait_per_minute: Some(37.0),
            fd_limit_in_s: Some(343.0),
            threads_total: Some(14),
            thread_groups: vec![
                ThreadGroup {
                    blocked_in: "futex wait".into(),
                    count: 12,
                },
                ThreadGroup {
                    blocked_in: "read()".into(),
                    count: 1,
                },
                ThreadGroup {
                    blocked_in: "epoll_wait()".into(),
                    count: 1,
                },
            ],
            threads: vec![ThreadDiagnosis {
                tid: 4242,
                name: "worker-3".into(),
                state: "S".into(),
                blocked_in: "read()".into(),
                syscall: Some("read".into()),
                wchan: Some("wait_woken".into()),
                fd: Some(9),
                fd_socket: Some(FdSocket {
                    laddr: "10.0.0.2".parse().unwrap(),
                    lport: 51000,
                    raddr: "10.0.0.5".parse().unwrap(),
                    rport: 5432,
                    state: crate::event::TcpState::Established,
                }),
                fd_target: None,
                on_stuck_socket: false,
                pc: Some(0x7f00),
                sp: None,
                frames: vec![
                    f(
                        0x7f00,
                        Some("read"),
                        None,
                        None,
                        "/usr/lib/x86_64-linux-gnu/libc.so.6",
                    ),
                    f(
                        0x5500,
                        Some("std::net::TcpStream::read"),
                        None,
                        None,
                        "/srv/app",
                    ),
                    f(
                        0x5600,
                        Some("app::query"),
                        Some("src/db.rs"),
                        Some(41),
                        "/srv/app",
                    ),
                ],
                stack_stop: Some("complete: reached the outermost frame".into()),
                kernel_stack: vec!["wait_woken".into(), "sk_wait_data".into()],
            }],
            runtime: None,
            unavailable: vec![Unavailable {
                field: "syscall".into(),
                reason: "1 thread(s) unreadable".into(),
            }],
            ports: None,
            last_read: None,
        }
    }

    #[test]
    fn last_read_names_the_thread_and_what_it_does_now() {
        let mut d = diagnosis();
        d.last_read = Some(crate::reads::LastReadReport {
            age_ms: 41_200,
            pid: 1234,
            tid: 4242,
            thread: "worker-3".into(),
            bytes: 5,
            now_blocked_in: Some("futex wait".into()),
        });
        let text = lines(&d, false);
        assert_eq!(
            text[2],
            "last read 41.2 s ago (5 bytes) by thread 4242 (worker-3), which is now blocked in futex wait"
        );
        assert_eq!(text.len(), 4);
        let gone = crate::reads::LastReadReport {
            now_blocked_in: None,
            bytes: 0,
            ..d.last_read.clone().unwrap()
        };
        assert_eq!(
            last_read(&gone),
            "last read 41.2 s ago (end of file) by thread 4242 (worker-3)"
        );
    }

    #[test]
    fn short_form_is_three_lines() {
        expect_test::expect![[r"
            pid 1234 holds 812/1024 fds, 800 in CLOSE_WAIT, +37 CLOSE_WAIT/min: fd limit in ~6 min
            threads: 12 in futex wait, 1 in read(), 1 in epoll_wait()
            thread 4242 (worker-3) blocked in read() on fd 9: TCP 10.0.0.2:51000 -> 10.0.0.5:5432 ESTABLISHED at app::query (src/db.rs:41)"]]
        .assert_eq(&lines(&diagnosis(), false).join("\n"));
    }

    #[test]
    fn detail_lists_every_frame_and_what_is_missing() {
        expect_test::expect![[r"
            pid 1234 holds 812/1024 fds, 800 in CLOSE_WAIT, +37 CLOSE_WAIT/min: fd limit in ~6 min
            threads: 12 in futex wait, 1 in read(), 1 in epoll_wait()
            thread 4242 (worker-3) blocked in read() on fd 9: TCP 10.0.0.2:51000 -> 10.0.0.5:5432 ESTABLISHED
                read in libc.so.6
                std::net::TcpStream::read in app
                app::query (src/db.rs:41)
                (3 frames; complete: reached the outermost frame)
                kernel: wait_woken < sk_wait_data
            unavailable: syscall: 1 thread(s) unreadable"]]
        .assert_eq(&lines(&diagnosis(), true).join("\n"));
    }
}
