//! The `iter/task_file` program behind the owner lookups: the kernel calls it once for every
//! open file of every process (threads sharing their leader's table are skipped by the
//! kernel), and it writes a [`HeldFile`] (process, descriptor, inode, kind) for each socket
//! and each namespace file into the iterator's file, which userspace reads like a `/proc`
//! file. It replaces one `readlinkat` per descriptor of a `/proc/*/fd` walk.
//!
//! Struct members are read at the offsets the loader computed from the kernel's BTF
//! ([`OFFSETS_FILES`]); without them the program writes nothing (and userspace walks `/proc`).

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_seq_write;
use tracer_common::{
    HeldFile, HELD_FILE_SIZE, HELD_NAMESPACE, HELD_SOCKET, NSFS_MAGIC, OFFSETS_FILES,
};

use crate::{kernel, read_global, OFFSETS};

/// `S_IFMT` and `S_IFSOCK` (`include/uapi/linux/stat.h`).
const S_IFMT: u16 = 0o170_000;
const S_IFSOCK: u16 = 0o140_000;

/// `struct bpf_iter__task_file`: `meta`, `task`, `fd` (a `u32`, padded to 8 bytes), `file`.
const CTX_META: usize = 0;
const CTX_TASK: usize = 1;
const CTX_FD: usize = 2;
const CTX_FILE: usize = 3;

#[no_mangle]
#[link_section = "iter/task_file"]
pub fn held_files(ctx: *mut c_void) -> i32 {
    let ctx = ctx.cast::<u64>().cast_const();
    // SAFETY: the kernel hands the program a `struct bpf_iter__task_file`; the verifier checks
    // each load against its BTF (8-byte slots; the descriptor is the low `u32` of its slot).
    let (meta, task, fd, file) = unsafe {
        (
            *ctx.add(CTX_META),
            *ctx.add(CTX_TASK),
            *ctx.add(CTX_FD).cast::<u32>(),
            *ctx.add(CTX_FILE),
        )
    };
    // The last call of an iteration has no task and no file.
    if task == 0 || file == 0 || read_global(&OFFSETS.flags) & OFFSETS_FILES == 0 {
        return 0;
    }
    let inode: u64 = kernel(file, read_global(&OFFSETS.file_inode));
    if inode == 0 {
        return 0;
    }
    let mode: u16 = kernel(inode, read_global(&OFFSETS.inode_mode));
    let kind = if mode & S_IFMT == S_IFSOCK {
        HELD_SOCKET
    } else {
        let sb: u64 = kernel(inode, read_global(&OFFSETS.inode_sb));
        if sb == 0 || kernel::<u64>(sb, read_global(&OFFSETS.sb_magic)) != NSFS_MAGIC {
            return 0;
        }
        HELD_NAMESPACE
    };
    let record = HeldFile {
        inode: kernel(inode, read_global(&OFFSETS.inode_ino)),
        tgid: kernel(task, read_global(&OFFSETS.task_tgid)),
        fd,
        kind,
        reserved: 0,
    };
    // SAFETY: `meta` is the verifier-typed `struct bpf_iter_meta *`, whose first member is the
    // `struct seq_file *` the helper writes to; the record is on the stack, `HELD_FILE_SIZE`
    // bytes long. A full buffer makes the kernel call the program again for this file.
    unsafe {
        let seq = *(meta as *const u64);
        bpf_seq_write(
            seq as *mut _,
            core::ptr::addr_of!(record).cast::<c_void>(),
            HELD_FILE_SIZE as u32,
        );
    }
    0
}
