//! stdout as the output thread writes it: the raw file descriptor, unbuffered (the output
//! thread writes whole chunks), with a larger pipe when it is one.

use std::{fs::File, io, os::fd::AsFd as _};

use nix::{
    fcntl::{fcntl, FcntlArg},
    sys::stat::{fstat, SFlag},
};

/// Bytes of pipe asked for when stdout is a pipe (the kernel's default `pipe-max-size`): a
/// reader that falls behind for a moment finds more waiting in the pipe, and the writer makes
/// fewer, larger writes.
pub const PIPE_BYTES: i32 = 1 << 20;

/// A handle on stdout (a duplicate of fd 1) that writes straight to it, with the pipe enlarged
/// to [`PIPE_BYTES`] when stdout is a pipe (best effort: refused above
/// `/proc/sys/fs/pipe-max-size` without CAP_SYS_RESOURCE).
pub fn raw() -> io::Result<File> {
    let fd = io::stdout().as_fd().try_clone_to_owned()?;
    let is_pipe = fstat(&fd).is_ok_and(|st| {
        SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFIFO
    });
    if is_pipe {
        if let Err(e) = fcntl(&fd, FcntlArg::F_SETPIPE_SZ(PIPE_BYTES)) {
            log::debug!("could not enlarge the stdout pipe: {e}");
        }
    }
    Ok(File::from(fd))
}
