//! Struct member offsets for the `tp_btf` program (and the network namespace and process name
//! in every event), computed from the running kernel's BTF, `/sys/kernel/btf/vmlinux`.
//!
//! The programs read a few members of `struct sock`, `struct inet_sock`, `struct net` and
//! `struct task_struct`. Their offsets change with the kernel's version and configuration, so
//! they are looked up here at start-up and handed to the programs as a read-only global
//! ([`KernelOffsets`]). Each group of offsets is valid on its own: a kernel whose BTF lacks
//! one group still gets the others (see the `OFFSETS_*` flags).

use std::path::Path;

use btfparse::{Offset, TypeInformation, TypeVariant};
use tracer_common::{
    KernelOffsets, OFFSETS_FILES, OFFSETS_LEADER, OFFSETS_NETNS, OFFSETS_SOCK, OFFSETS_SOCK_STATE,
};

use crate::error::OffsetsError;

/// Where the kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The offsets found, and why each missing group is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub offsets: KernelOffsets,
    /// One entry per group left out of `offsets.flags`.
    pub missing: Vec<String>,
}

/// Reads and parses a BTF file (normally [`VMLINUX_BTF`]) and resolves the offsets.
pub fn from_file(path: &Path) -> Result<Resolved, OffsetsError> {
    let data = std::fs::read(path).map_err(|source| OffsetsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let btf = TypeInformation::new(&Bytes(&data)).map_err(|e| OffsetsError::Parse {
        path: path.to_owned(),
        reason: format!("{:?}: {}", e.kind(), e.message()),
    })?;
    Ok(resolve(&btf))
}

/// [`from_file`] in a child process: the parser holds the whole BTF of the kernel in memory
/// (about 60 MB for the ~150,000 types of a distribution kernel, 0.6 s of CPU), which would
/// otherwise stay in the tracer's peak RSS for its whole life. The child writes the offsets and
/// the missing groups to a pipe and exits; errors come back as [`OffsetsError::Child`].
pub fn from_file_in_child(path: &Path) -> Result<Resolved, OffsetsError> {
    use std::io::{Read as _, Write as _};

    let child_error = |reason: String| OffsetsError::Child { reason };
    let (read, write) = nix::unistd::pipe().map_err(|e| child_error(format!("pipe: {e}")))?;
    // SAFETY: the child only parses a file, allocates (glibc's malloc is fork-safe), writes to
    // its end of the pipe and exits with `_exit`, never returning into the caller.
    match unsafe { nix::unistd::fork() }.map_err(|e| child_error(format!("fork: {e}")))? {
        nix::unistd::ForkResult::Child => {
            drop(read);
            let message = std::panic::catch_unwind(|| encode(&from_file(path)))
                .unwrap_or_else(|_| b"Ethe BTF parser panicked".to_vec());
            let _ = std::fs::File::from(write).write_all(&message);
            // SAFETY: ends the child at once, without running the parent's exit handlers.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(write);
            let mut message = Vec::new();
            let read_result = std::fs::File::from(read).read_to_end(&mut message);
            let _ = nix::sys::wait::waitpid(child, None);
            read_result.map_err(|e| child_error(format!("reading the pipe: {e}")))?;
            decode(&message).ok_or_else(|| child_error("no answer".into()))?
        }
    }
}

/// `O` + the offsets as 21 little-endian `u32`s + the missing groups, one a line; or `E` +
/// the error's message.
fn encode(result: &Result<Resolved, OffsetsError>) -> Vec<u8> {
    match result {
        Ok(resolved) => {
            let mut out = b"O".to_vec();
            for word in words(&resolved.offsets) {
                out.extend_from_slice(&word.to_le_bytes());
            }
            out.extend_from_slice(resolved.missing.join("\n").as_bytes());
            out
        }
        Err(e) => [b"E".as_slice(), e.to_string().as_bytes()].concat(),
    }
}

fn decode(message: &[u8]) -> Option<Result<Resolved, OffsetsError>> {
    let (&kind, rest) = message.split_first()?;
    if kind == b'E' {
        return Some(Err(OffsetsError::Child {
            reason: String::from_utf8_lossy(rest).into_owned(),
        }));
    }
    let words_len = 4 * WORDS;
    let (bytes, missing) = (rest.get(..words_len)?, rest.get(words_len..)?);
    let mut w = [0u32; WORDS];
    for (word, chunk) in w.iter_mut().zip(bytes.chunks_exact(4)) {
        *word = u32::from_le_bytes(chunk.try_into().ok()?);
    }
    let missing = String::from_utf8_lossy(missing);
    Some(Ok(Resolved {
        offsets: KernelOffsets {
            flags: w[0],
            sk_family: w[1],
            sk_protocol: w[2],
            inet_sport: w[3],
            sk_dport: w[4],
            inet_saddr: w[5],
            sk_daddr: w[6],
            sk_v6_rcv_saddr: w[7],
            sk_v6_daddr: w[8],
            sk_net: w[9],
            net_inum: w[10],
            task_group_leader: w[11],
            task_comm: w[12],
            sk_lock_owned: w[13],
            sk_flags: w[14],
            file_inode: w[15],
            inode_mode: w[16],
            inode_ino: w[17],
            task_tgid: w[18],
            inode_sb: w[19],
            sb_magic: w[20],
            icsk_ulp_ops: w[21],
            task_flags: w[22],
        },
        missing: missing.lines().map(str::to_owned).collect(),
    }))
}

const WORDS: usize = 23;

fn words(o: &KernelOffsets) -> [u32; WORDS] {
    [
        o.flags,
        o.sk_family,
        o.sk_protocol,
        o.inet_sport,
        o.sk_dport,
        o.inet_saddr,
        o.sk_daddr,
        o.sk_v6_rcv_saddr,
        o.sk_v6_daddr,
        o.sk_net,
        o.net_inum,
        o.task_group_leader,
        o.task_comm,
        o.sk_lock_owned,
        o.sk_flags,
        o.file_inode,
        o.inode_mode,
        o.inode_ino,
        o.task_tgid,
        o.inode_sb,
        o.sb_magic,
        o.icsk_ulp_ops,
        o.task_flags,
    ]
}

/// Resolves every group of offsets in parsed BTF.
pub fn resolve(btf: &TypeInformation) -> Resolved {
    let mut offsets = KernelOffsets::default();
    let mut missing = Vec::new();
    let structs = Structs::new(btf);
    let mut group = |flag: u32, result: Result<(), OffsetsError>| match result {
        Ok(()) => offsets.flags |= flag,
        Err(e) => missing.push(e.to_string()),
    };
    let mut sock = KernelOffsets::default();
    group(OFFSETS_SOCK, sock_offsets(&structs, &mut sock));
    let mut netns = KernelOffsets::default();
    group(OFFSETS_NETNS, netns_offsets(&structs, &mut netns));
    let mut leader = KernelOffsets::default();
    group(OFFSETS_LEADER, leader_offsets(&structs, &mut leader));
    let mut state = KernelOffsets::default();
    group(OFFSETS_SOCK_STATE, sock_state_offsets(&structs, &mut state));
    let mut files = KernelOffsets::default();
    group(OFFSETS_FILES, file_offsets(&structs, &mut files));
    if offsets.flags & OFFSETS_SOCK != 0 {
        offsets.sk_family = sock.sk_family;
        offsets.sk_protocol = sock.sk_protocol;
        offsets.inet_sport = sock.inet_sport;
        offsets.sk_dport = sock.sk_dport;
        offsets.inet_saddr = sock.inet_saddr;
        offsets.sk_daddr = sock.sk_daddr;
        offsets.sk_v6_rcv_saddr = sock.sk_v6_rcv_saddr;
        offsets.sk_v6_daddr = sock.sk_v6_daddr;
    }
    if offsets.flags & OFFSETS_NETNS != 0 {
        offsets.sk_net = netns.sk_net;
        offsets.net_inum = netns.net_inum;
    }
    if offsets.flags & OFFSETS_LEADER != 0 {
        offsets.task_group_leader = leader.task_group_leader;
        offsets.task_comm = leader.task_comm;
        offsets.task_flags = leader.task_flags;
    }
    if offsets.flags & OFFSETS_SOCK_STATE != 0 {
        offsets.sk_lock_owned = state.sk_lock_owned;
        offsets.sk_flags = state.sk_flags;
        offsets.icsk_ulp_ops = state.icsk_ulp_ops;
    }
    if offsets.flags & OFFSETS_FILES != 0 {
        offsets.file_inode = files.file_inode;
        offsets.inode_mode = files.inode_mode;
        offsets.inode_ino = files.inode_ino;
        offsets.task_tgid = files.task_tgid;
        offsets.inode_sb = files.inode_sb;
        offsets.sb_magic = files.sb_magic;
    }
    Resolved { offsets, missing }
}

/// The members the kernel copies into the `inet_sock_set_state` record
/// (`include/trace/events/sock.h`): `struct sock` is the first member of `struct inet_sock`,
/// so offsets in either are offsets from the socket pointer.
fn sock_offsets(s: &Structs<'_>, o: &mut KernelOffsets) -> Result<(), OffsetsError> {
    o.sk_family = s.member("sock", "__sk_common.skc_family", 2)?;
    o.sk_protocol = s.member("sock", "sk_protocol", 2)?;
    o.sk_dport = s.member("sock", "__sk_common.skc_dport", 2)?;
    o.sk_daddr = s.member("sock", "__sk_common.skc_daddr", 4)?;
    o.sk_v6_rcv_saddr = s.member("sock", "__sk_common.skc_v6_rcv_saddr", 16)?;
    o.sk_v6_daddr = s.member("sock", "__sk_common.skc_v6_daddr", 16)?;
    o.inet_sport = s.member("inet_sock", "inet_sport", 2)?;
    o.inet_saddr = s.member("inet_sock", "inet_saddr", 4)?;
    if s.member("inet_sock", "sk", 0)? != 0 {
        return Err(OffsetsError::Layout {
            what: "struct inet_sock does not start with its struct sock".into(),
        });
    }
    Ok(())
}

fn netns_offsets(s: &Structs<'_>, o: &mut KernelOffsets) -> Result<(), OffsetsError> {
    o.sk_net = s.member("sock", "__sk_common.skc_net.net", 8)?;
    o.net_inum = s.member("net", "ns.inum", 4)?;
    Ok(())
}

fn leader_offsets(s: &Structs<'_>, o: &mut KernelOffsets) -> Result<(), OffsetsError> {
    o.task_group_leader = s.member("task_struct", "group_leader", 8)?;
    o.task_comm = s.member("task_struct", "comm", tracer_common::COMM_LEN)?;
    o.task_flags = s.member("task_struct", "flags", 4)?;
    Ok(())
}

/// The socket lock's `owned` flag (`socket_lock_t`, an `int` after the spinlock in every
/// kernel), the socket's flag word (`unsigned long`, in `struct sock_common`) and its upper
/// layer protocol (`struct inet_connection_sock`, which starts with the `struct sock`): what
/// `sock_owned_by_user()`, `sock_flag(sk, SOCK_DONE)` and `sk_is_mptcp()`'s subflow test read.
/// See [`crate::sock_state`].
fn sock_state_offsets(s: &Structs<'_>, o: &mut KernelOffsets) -> Result<(), OffsetsError> {
    o.sk_lock_owned = s.member("sock", "sk_lock.owned", 4)?;
    // `sk_flags` is `#define`d to `__sk_common.skc_flags` (in a union with `skc_listener`).
    o.sk_flags = s.member("sock", "__sk_common.skc_flags", 8)?;
    o.icsk_ulp_ops = s.member("inet_connection_sock", "icsk_ulp_ops", 8)?;
    if s.member("inet_connection_sock", "icsk_inet.sk", 0)? != 0 {
        return Err(OffsetsError::Layout {
            what: "struct inet_connection_sock does not start with its struct sock".into(),
        });
    }
    Ok(())
}

/// What the `iter/task_file` program reads of each descriptor: the file's inode, whether it
/// is a socket (`S_ISSOCK(i_mode)`) or a namespace file (its superblock's magic), its number,
/// and the process holding it.
fn file_offsets(s: &Structs<'_>, o: &mut KernelOffsets) -> Result<(), OffsetsError> {
    o.file_inode = s.member("file", "f_inode", 8)?;
    o.inode_mode = s.member("inode", "i_mode", 2)?;
    o.inode_ino = s.member("inode", "i_ino", 8)?;
    o.task_tgid = s.member("task_struct", "tgid", 4)?;
    o.inode_sb = s.member("inode", "i_sb", 8)?;
    o.sb_magic = s.member("super_block", "s_magic", 8)?;
    Ok(())
}

/// Struct lookups by name (a BTF name can also belong to a function or a variable).
struct Structs<'a> {
    btf: &'a TypeInformation,
}

impl<'a> Structs<'a> {
    fn new(btf: &'a TypeInformation) -> Self {
        Structs { btf }
    }

    fn id(&self, name: &str) -> Result<u32, OffsetsError> {
        let by_name = self
            .btf
            .id_of(name)
            .filter(|&id| matches!(self.btf.from_id(id), Some(TypeVariant::Struct(_))));
        by_name
            .or_else(|| {
                self.btf.get().iter().find_map(|(&id, ty)| {
                    (matches!(ty, TypeVariant::Struct(_))
                        && self.btf.name_of(id).as_deref() == Some(name))
                    .then_some(id)
                })
            })
            .ok_or_else(|| OffsetsError::Missing {
                what: format!("struct {name}"),
            })
    }

    /// Byte offset of `path` (members separated by dots, anonymous unions looked through) in
    /// `struct name`, checking the member is `size` bytes (0: any size).
    fn member(&self, name: &str, path: &str, size: usize) -> Result<u32, OffsetsError> {
        let what = || format!("struct {name} member {path}");
        let (tid, offset) = self
            .btf
            .offset_of(self.id(name)?, path)
            .map_err(|_| OffsetsError::Missing { what: what() })?;
        let Offset::ByteOffset(offset) = offset else {
            return Err(OffsetsError::Layout {
                what: format!("{} is a bit field", what()),
            });
        };
        if size != 0 {
            let found = self.btf.size_of(tid).ok();
            if found != Some(size) {
                return Err(OffsetsError::Layout {
                    what: format!("{} is {found:?} bytes, expected {size}", what()),
                });
            }
        }
        Ok(offset)
    }
}

/// BTF bytes in memory, as the parser reads them.
struct Bytes<'a>(&'a [u8]);

impl btfparse::Readable for Bytes<'_> {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).ok();
        let slice = start
            .and_then(|s| Some(s..s.checked_add(buffer.len())?))
            .and_then(|range| self.0.get(range));
        match slice {
            Some(bytes) => {
                buffer.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(btfparse::Error::new(
                btfparse::ErrorKind::IOError,
                "read past the end of the BTF data",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The live kernel's BTF: every machine this project supports has it (`CONFIG_DEBUG_INFO_BTF`
    /// on every Debian kernel, see docs); the test fails rather than skips without it.
    #[test]
    fn resolves_every_group_from_this_kernel() {
        let resolved = from_file(Path::new(VMLINUX_BTF)).unwrap();
        assert!(resolved.missing.is_empty(), "{:?}", resolved.missing);
        let o = resolved.offsets;
        assert_eq!(
            o.flags,
            OFFSETS_SOCK | OFFSETS_NETNS | OFFSETS_LEADER | OFFSETS_SOCK_STATE | OFFSETS_FILES
        );
        // The mode is a 2-byte umode_t and the inode number an unsigned long, aligned.
        assert!(o.inode_mode.is_multiple_of(2) && o.inode_ino.is_multiple_of(8));
        assert!(o.file_inode.is_multiple_of(8) && o.task_tgid.is_multiple_of(4));
        // struct sock_common starts with the addresses, then the ports: a layout unchanged
        // since Linux 2.6 (skc_daddr, skc_rcv_saddr, skc_hash, skc_dport, skc_num).
        assert_eq!(o.sk_daddr, 0);
        assert_eq!(o.sk_dport, 12);
        assert_eq!(o.sk_family, 16);
        // inet_sock's own members come after the whole struct sock.
        assert!(o.inet_saddr > o.sk_v6_rcv_saddr && o.inet_sport > o.sk_v6_rcv_saddr);
        assert!(o.sk_protocol > o.sk_family && o.sk_net > o.sk_family);
        assert_eq!(o.sk_v6_daddr % 4, 0);
        assert_eq!(o.task_comm % 8, 0);
        // The lock and the flag word come after sock_common, aligned for an int and a long.
        assert!(o.sk_lock_owned > o.sk_family && o.sk_lock_owned.is_multiple_of(4));
        assert!(
            o.sk_flags > o.sk_family
                && o.sk_flags < o.sk_lock_owned
                && o.sk_flags.is_multiple_of(8)
        );
        // inet_connection_sock's own members come after the whole struct inet_sock.
        assert!(o.icsk_ulp_ops > o.inet_saddr && o.icsk_ulp_ops.is_multiple_of(8));
    }

    /// `SOCK_DONE` and `SOCK_DEAD`, the bits the program tests in `sk_flags`, are where the
    /// constants say in this kernel's `enum sock_flags`.
    #[test]
    fn sock_flags_are_the_bits_the_program_tests() {
        use btfparse::Integer32Value;
        let data = std::fs::read(VMLINUX_BTF).unwrap();
        let btf = TypeInformation::new(&Bytes(&data)).unwrap();
        for (name, bit) in [
            ("SOCK_DONE", tracer_common::SOCK_DONE_BIT),
            ("SOCK_DEAD", tracer_common::SOCK_DEAD_BIT),
        ] {
            let value = btf
                .get()
                .values()
                .find_map(|ty| match ty {
                    TypeVariant::Enum(e) if e.name().as_deref() == Some("sock_flags") => e
                        .named_value_list()
                        .iter()
                        .find(|v| v.name == name)
                        .map(|v| match v.value {
                            Integer32Value::Signed(n) => i64::from(n),
                            Integer32Value::Unsigned(n) => i64::from(n),
                        }),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("enum sock_flags has {name}"));
            assert_eq!(value, i64::from(bit), "{name}");
        }
    }

    #[test]
    fn the_child_process_gives_the_same_answer() {
        let here = from_file(Path::new(VMLINUX_BTF)).unwrap();
        assert_eq!(from_file_in_child(Path::new(VMLINUX_BTF)).unwrap(), here);
        let e = from_file_in_child(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vmlinux"), "{e}");
    }

    #[test]
    fn answers_round_trip_through_the_pipe_encoding() {
        let resolved = Resolved {
            offsets: KernelOffsets {
                flags: 5,
                sk_family: 16,
                task_comm: 3000,
                sk_flags: 760,
                icsk_ulp_ops: 1424,
                ..KernelOffsets::default()
            },
            missing: vec!["the kernel's BTF has no struct net member ns.inum".into()],
        };
        assert_eq!(
            decode(&encode(&Ok(resolved.clone()))).unwrap().unwrap(),
            resolved
        );
        assert!(decode(b"").is_none());
        assert!(decode(b"O\x01").is_none(), "truncated offsets");
    }

    #[test]
    fn unreadable_or_bad_btf_is_an_error_naming_the_file() {
        let e = from_file(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vmlinux"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("vmlinux");
        std::fs::write(&bad, b"not btf at all").unwrap();
        let e = from_file(&bad).unwrap_err();
        assert!(e.to_string().contains("vmlinux"), "{e}");
    }
}
