//! The only module that talks to the kernel through aya: load the eBPF object, set its
//! filters and the struct offsets from the kernel's BTF, attach one of its programs to
//! `sock:inet_sock_set_state` (the BTF-enabled raw tracepoint, or the classic tracepoint where
//! that is refused), and hand out the ring buffer and the loss counters.

use std::{
    fs, io,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
};

use aya::{
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, Iter, ProgramError, TracePoint},
    Btf, Ebpf, EbpfError, EbpfLoader,
};
use tracer_common::{
    KernelOffsets, EVENTS_MAP, FILTER_FAMILY_GLOBAL, FILTER_NETNS_GLOBAL, FILTER_PORTS_GLOBAL,
    FILTER_PROTOCOL_GLOBAL, HELD_NAMESPACE, OFFSETS_FILES, OFFSETS_GLOBAL, OFFSETS_NETNS,
    OFFSETS_SOCK, PORTS_MAP, PROGRAM, PROGRAM_BTF, PROGRAM_HELD_FILES, STATS_MAP,
    STAT_RINGBUF_FULL, STAT_RUNS,
};

use crate::cause::probe::CauseProbes;
use crate::features::{lockdown_mode, KernelFeatures, LOCKDOWN_FILE};
use crate::{
    config::{HookChoice, KernelFilter},
    error::ProbeError,
    kernel_offsets, memlock, memory,
};

/// The program that was attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `tp_btf/inet_sock_set_state`: the kernel hands the program the `struct sock`.
    TpBtf,
    /// `tracepoint/sock/inet_sock_set_state`: the kernel first builds the tracepoint's record.
    Tracepoint,
}

impl Hook {
    /// The program's section name, as `bpftool` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Hook::TpBtf => "tp_btf/inet_sock_set_state",
            Hook::Tracepoint => "tracepoint/sock/inet_sock_set_state",
        }
    }
}

/// The eBPF object built by `cargo xtask build-ebpf`, embedded at compile time (empty when
/// it was not built: loading then fails with [`ProbeError::MissingObject`]).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf.o"));

/// The loaded and attached program. Dropping it detaches the program and frees its maps.
///
/// Made by [`Probe::load`], which also hands out the ring buffer of events; the probe itself
/// reads the loss counters ([`Probe::lost`], [`Probe::recursion_misses`]).
pub struct Probe {
    /// Owns the programs and their maps: kept so they stay loaded and attached.
    ebpf: Ebpf,
    stats: PerCpuArray<MapData, u64>,
    /// The program's fd, owned by `ebpf`, for its `/proc/self/fdinfo` entry.
    prog_fd: i32,
    /// What the kernel offers, as detected while loading.
    features: KernelFeatures,
    /// The programs that learn why connections end.
    causes: CauseProbes,
    hook: Hook,
    /// `--track-reads`: the last read of each socket, or why it could not be attached.
    reads: Option<Result<crate::reads::LastReads, String>>,
    /// The `iter/task_file` program loaded for [`Probe::held_files`], or why not.
    held_files: Result<(), String>,
}

const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

impl Probe {
    /// Loads and attaches the program. Returns the probe and its ring buffer.
    pub fn load(filter: &KernelFilter) -> Result<(Probe, RingBuf<MapData>), ProbeError> {
        if OBJECT.is_empty() {
            return Err(ProbeError::MissingObject);
        }
        check_capabilities()?;
        // Lockdown's confidentiality mode hides tracefs and forbids tracing: say so, rather
        // than blame the mount (a second tracefs mount fails with EBUSY there).
        let lockdown = fs::read_to_string(LOCKDOWN_FILE)
            .ok()
            .and_then(|text| lockdown_mode(&text));
        if lockdown.as_deref() == Some("confidentiality") {
            return Err(ProbeError::Lockdown {
                mode: "confidentiality".to_owned(),
            });
        }
        let tracefs = ensure_tracefs()?;
        let tracepoint = tracefs.join("events/sock/inet_sock_set_state");
        if !tracepoint.exists() {
            return Err(ProbeError::MissingTracepoint { tracefs });
        }
        let mut features = KernelFeatures::detect(Some(&tracefs));
        if features.ring_buffer == Some(false) {
            return Err(ProbeError::NoRingBuffer);
        }
        memlock::raise();

        let (offsets, missing) =
            match kernel_offsets::from_file_in_child(Path::new(kernel_offsets::VMLINUX_BTF)) {
                Ok(resolved) => (resolved.offsets, resolved.missing),
                Err(e) => (KernelOffsets::default(), vec![e.to_string()]),
            };
        features.missing_offsets.clone_from(&missing);
        let missing = missing.join("; ");
        if filter.netns.is_some() && offsets.flags & OFFSETS_NETNS == 0 {
            return Err(ProbeError::NoNetnsOffsets { reason: missing });
        }
        let ports_on = u8::from(!filter.ports.is_empty());
        let netns = filter.netns.unwrap_or(0);
        // The loader parses the kernel's BTF for its relocations (~22 MiB of heap, freed when
        // the loader goes at the end of this statement); `attach` parses it again for the
        // `tp_btf` target only after that, so the two never sit in memory together.
        let mut ebpf = EbpfLoader::new()
            .override_global(FILTER_FAMILY_GLOBAL, &filter.family, true)
            .override_global(FILTER_PROTOCOL_GLOBAL, &filter.protocol, true)
            .override_global(FILTER_PORTS_GLOBAL, &ports_on, true)
            .override_global(FILTER_NETNS_GLOBAL, &netns, true)
            .override_global(OFFSETS_GLOBAL, &offsets, true)
            .map_max_entries(EVENTS_MAP, filter.ring_buffer_bytes)
            // Without --track-reads its map is never used: one entry, not 16,384 preallocated.
            .map_max_entries(
                tracer_common::reads::LAST_READS_MAP,
                if filter.track_reads {
                    tracer_common::reads::LAST_READS_ENTRIES
                } else {
                    1
                },
            )
            .load(OBJECT)
            .map_err(ebpf_error)?;

        match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => spawn_logger(logger),
            Err(e) => log::debug!("eBPF logs unavailable: {e}"),
        }

        memory::release_freed();
        // Parsed again (after the loader's copy is freed) for the programs that attach by BTF
        // id: the `tp_btf` program and the held-file iterator.
        let files = files_possible(&offsets);
        let btf = (filter.hook != HookChoice::Tracepoint || files.is_ok()).then(Btf::from_sys_fs);
        let (hook, prog_fd, fallback) =
            attach(&mut ebpf, filter.hook, &offsets, &missing, btf.as_ref())?;
        let held_files = files.and_then(|()| match &btf {
            Some(Ok(btf)) => load_held_files(&mut ebpf, btf).and_then(|()| pids_agree(&mut ebpf)),
            Some(Err(e)) => Err(format!("reading the kernel's BTF: {}", error_chain(e))),
            None => Err("the kernel's BTF was not read".to_owned()),
        });
        if let Err(why) = &held_files {
            log::info!("owner lookups walk /proc/*/fd: no held-file iterator ({why})");
        }
        drop(btf);
        // Before the ring buffer is mapped (twice its size, all resident at once): the freed
        // BTF pages and the ring never count together in the peak RSS.
        memory::release_freed();
        features.hook = Some(hook.name().to_owned());
        features.hook_fallback = fallback;
        // Why connections end: optional, each where the kernel has its tracepoint.
        let causes = CauseProbes::attach(&mut ebpf, &tracefs);
        features.cause_tracepoints = Some(causes.attached.clone());
        let reads = filter
            .track_reads
            .then(|| crate::reads::LastReads::attach(&mut ebpf, &tracefs));

        if !filter.ports.is_empty() {
            let mut ports: Array<_, u64> =
                Array::try_from(ebpf.map_mut(PORTS_MAP).ok_or_else(|| {
                    aya_error("finding the port map", io::Error::other(PORTS_MAP))
                })?)
                .map_err(|e| aya_error("opening the port map", e))?;
            for (word, bits) in port_bitmap(&filter.ports) {
                ports
                    .set(word, bits, 0)
                    .map_err(|e| aya_error("filling the port map", e))?;
            }
        }
        let stats = PerCpuArray::try_from(
            ebpf.take_map(STATS_MAP)
                .ok_or_else(|| aya_error("finding the stats map", io::Error::other(STATS_MAP)))?,
        )
        .map_err(|e| aya_error("opening the stats map", e))?;
        let ring =
            RingBuf::try_from(ebpf.take_map(EVENTS_MAP).ok_or_else(|| {
                aya_error("finding the ring buffer", io::Error::other(EVENTS_MAP))
            })?)
            .map_err(|e| aya_error("opening the ring buffer", e))?;
        features.recursion_misses = Some(
            fs::read_to_string(format!("/proc/self/fdinfo/{prog_fd}"))
                .is_ok_and(|info| fdinfo_field(&info, "recursion_misses").is_some()),
        );
        log::info!("{}", features.describe());
        Ok((
            Probe {
                ebpf,
                stats,
                prog_fd,
                features,
                causes,
                hook,
                reads,
                held_files,
            },
            ring,
        ))
    }

    /// A fresh run of the held-file iterator: a file to read to its end, a
    /// [`tracer_common::HeldFile`] record (24 bytes) for every socket and namespace file
    /// descriptor of every process, as the kernel walks them. `None` where the iterator is not loaded (see
    /// [`Probe::load`]'s `-v` line) or the kernel refuses a run (said once; the iterator is
    /// not tried again): the caller walks `/proc`.
    pub fn held_files(&mut self) -> Option<fs::File> {
        self.held_files.as_ref().ok()?;
        match run_held_files(&mut self.ebpf) {
            Ok(file) => Some(file),
            Err(e) => {
                // Said once: later lookups walk /proc without asking the kernel again.
                log::warn!("held-file iterator: {e}; owner lookups walk /proc/*/fd from now on");
                self.held_files = Err(e);
                None
            }
        }
    }

    /// Events dropped in the kernel because the ring buffer was full, summed over CPUs.
    pub fn lost(&self) -> u64 {
        self.stat(STAT_RINGBUF_FULL)
    }

    /// Runs of the transition program so far, summed over CPUs, whatever its filters kept
    /// (`-v` prints it at the end: set beside a count of the host's transitions made by other
    /// means, it tells a transition the kernel never handed the program from one it dropped).
    pub fn runs(&self) -> u64 {
        self.stat(STAT_RUNS)
    }

    /// Slot `slot` of the `STATS` map, summed over CPUs (0 if unreadable).
    fn stat(&self, slot: u32) -> u64 {
        self.stats
            .get(&slot, 0)
            .map_or(0, |per_cpu| per_cpu.iter().sum())
    }

    /// How often the kernel skipped our program because it was already running on that CPU
    /// (`recursion_misses` in the program's fdinfo); `None` on kernels that do not report it
    /// (before 5.12).
    pub fn recursion_misses(&self) -> Option<u64> {
        let path = format!("/proc/self/fdinfo/{}", self.prog_fd);
        fs::read_to_string(path)
            .ok()
            .and_then(|info| fdinfo_field(&info, "recursion_misses"))
    }

    /// The programs that learn why connections end, and their loss counter.
    pub fn causes(&self) -> &CauseProbes {
        &self.causes
    }

    /// `--track-reads`: the map of last reads, when it was asked for and attached.
    pub fn reads(&self) -> Option<&crate::reads::LastReads> {
        self.reads.as_ref().and_then(|r| r.as_ref().ok())
    }

    /// `--track-reads` was asked for and could not be attached: why.
    pub fn reads_refused(&self) -> Option<&str> {
        self.reads
            .as_ref()
            .and_then(|r| r.as_ref().err())
            .map(String::as_str)
    }

    /// What the kernel offers, as detected while loading (see [`KernelFeatures`]).
    pub fn features(&self) -> &KernelFeatures {
        &self.features
    }

    /// The program that was attached.
    pub fn hook(&self) -> Hook {
        self.hook
    }
}

/// Loads and attaches the program `choice` asks for; returns it, its fd, and why `tp_btf`
/// was not used when [`HookChoice::Auto`] fell back to the classic tracepoint (a refused
/// `tp_btf` program, or a kernel BTF without the socket offsets).
fn attach(
    ebpf: &mut Ebpf,
    choice: HookChoice,
    offsets: &KernelOffsets,
    missing: &str,
    btf: Option<&Result<Btf, aya::BtfError>>,
) -> Result<(Hook, i32, Option<String>), ProbeError> {
    let mut fallback = None;
    if choice != HookChoice::Tracepoint {
        let result = if offsets.flags & OFFSETS_SOCK == 0 {
            Err(ProbeError::NoSocketOffsets {
                reason: missing.to_owned(),
            })
        } else {
            match btf {
                Some(Ok(btf)) => attach_btf(ebpf, btf),
                Some(Err(e)) => Err(aya_error(
                    "reading the kernel's BTF",
                    io::Error::other(error_chain(e)),
                )),
                None => Err(aya_error(
                    "reading the kernel's BTF",
                    io::Error::other("not read"),
                )),
            }
        };
        match result {
            Ok(fd) => return Ok((Hook::TpBtf, fd, None)),
            Err(e) if choice == HookChoice::TpBtf => return Err(e),
            Err(e) => {
                let why = error_chain(&e);
                log::info!(
                    "tp_btf/inet_sock_set_state unavailable ({why}); using the classic tracepoint"
                );
                fallback = Some(why);
            }
        }
    }
    attach_classic(ebpf).map(|fd| (Hook::Tracepoint, fd, fallback))
}

/// Whether the held-file iterator can be loaded: it needs its struct offsets.
fn files_possible(offsets: &KernelOffsets) -> Result<(), String> {
    if offsets.flags & OFFSETS_FILES == 0 {
        return Err("no struct file/inode offsets in the kernel's BTF".to_owned());
    }
    Ok(())
}

/// The `iter/task_file` program in the object.
fn held_files_program(ebpf: &mut Ebpf) -> Result<&mut Iter, String> {
    ebpf.program_mut(PROGRAM_HELD_FILES)
        .ok_or_else(|| format!("no program {PROGRAM_HELD_FILES} in the eBPF object"))?
        .try_into()
        .map_err(|e| format!("reading the program: {e}"))
}

/// One run of the loaded held-file iterator: its file, to read to the end.
fn run_held_files(ebpf: &mut Ebpf) -> Result<fs::File, String> {
    let program = held_files_program(ebpf)?;
    let id = program.attach().map_err(|e| error_chain(&e))?;
    let link = program.take_link(id).map_err(|e| error_chain(&e))?;
    link.into_file().map_err(|e| error_chain(&e))
}

/// Whether the iterator names processes as this tracer's `/proc` does. The kernel gives each
/// process's pid in the initial pid namespace; a tracer in a pid namespace of its own (a
/// container without the host's pids, `unshare -p`) sees other numbers in `/proc`, and a
/// lookup would name the wrong processes. Checked on a namespace file held open for it: the
/// iterator must list it under this process's pid.
fn pids_agree(ebpf: &mut Ebpf) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let marker = fs::File::open("/proc/self/ns/net")
        .map_err(|e| format!("opening /proc/self/ns/net: {e}"))?;
    let inode = marker
        .metadata()
        .map_err(|e| format!("reading /proc/self/ns/net: {e}"))?
        .ino();
    let listed = crate::decode::read_held_files(run_held_files(ebpf)?)
        .map_err(|e| format!("reading a run: {e}"))?;
    let fd = u32::try_from(marker.as_raw_fd()).unwrap_or(u32::MAX);
    let me = std::process::id();
    let found = listed
        .iter()
        .any(|f| f.kind == HELD_NAMESPACE && f.fd == fd && f.inode == inode && f.tgid == me);
    if found {
        Ok(())
    } else {
        Err(
            "the kernel's pids are not this /proc's: the tracer runs in a pid namespace of its own"
                .to_owned(),
        )
    }
}

/// Loads (without attaching) the `iter/task_file` program.
fn load_held_files(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), String> {
    held_files_program(ebpf)?
        .load("task_file", btf)
        .map_err(|e| format!("loading iter/task_file: {}", error_chain(&e)))
}

fn attach_btf(ebpf: &mut Ebpf, btf: &Btf) -> Result<i32, ProbeError> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut(PROGRAM_BTF)
        .ok_or_else(|| {
            aya_error(
                "finding the program in the eBPF object",
                io::Error::other(PROGRAM_BTF),
            )
        })?
        .try_into()
        .map_err(|e| aya_error("reading the program", e))?;
    program
        .load("inet_sock_set_state", btf)
        .map_err(|e| program_error(e, PROGRAM_BTF))?;
    program
        .attach()
        .map_err(|e| attach_error(e, "attaching to tp_btf/inet_sock_set_state"))?;
    Ok(program
        .fd()
        .map_err(|e| aya_error("reading the program fd", e))?
        .as_fd()
        .as_raw_fd())
}

fn attach_classic(ebpf: &mut Ebpf) -> Result<i32, ProbeError> {
    let program: &mut TracePoint = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| {
            aya_error(
                "finding the program in the eBPF object",
                io::Error::other(PROGRAM),
            )
        })?
        .try_into()
        .map_err(|e| aya_error("reading the program", e))?;
    program.load().map_err(|e| program_error(e, PROGRAM))?;
    program
        .attach("sock", "inet_sock_set_state")
        .map_err(|e| attach_error(e, "attaching to sock/inet_sock_set_state"))?;
    Ok(program
        .fd()
        .map_err(|e| aya_error("reading the program fd", e))?
        .as_fd()
        .as_raw_fd())
}

fn attach_error(e: ProgramError, action: &'static str) -> ProbeError {
    match e {
        ProgramError::SyscallError(ref s) if is_permission(&s.io_error) => ProbeError::Permission {
            action,
            source: Box::new(e),
        },
        other => aya_error(action, other),
    }
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// The non-zero words of the kernel's port bitmap: bit `port % 64` of word `port / 64`.
fn port_bitmap(ports: &[u16]) -> Vec<(u32, u64)> {
    let mut words: std::collections::BTreeMap<u32, u64> = std::collections::BTreeMap::new();
    for &port in ports {
        *words.entry(u32::from(port / 64)).or_default() |= 1u64 << (port % 64);
    }
    words.into_iter().collect()
}

/// A numeric field of a `/proc/<pid>/fdinfo/<fd>` file.
pub fn fdinfo_field(info: &str, name: &str) -> Option<u64> {
    info.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().parse().ok())?
    })
}

/// Capabilities needed to load and attach: CAP_BPF (39) and CAP_PERFMON (38), or CAP_SYS_ADMIN
/// (21) which implies both on older kernels.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn check_capabilities() -> Result<(), ProbeError> {
    let effective = procfs::process::Process::myself()
        .and_then(|me| me.status())
        .map(|status| status.capeff);
    match effective {
        Ok(caps) if !has_tracing_caps(caps) => Err(ProbeError::Permission {
            action: "loading the eBPF program",
            source: Box::new(io::Error::from(io::ErrorKind::PermissionDenied)),
        }),
        // Unreadable: let the kernel decide.
        _ => Ok(()),
    }
}

/// Can a process with these effective capabilities load and attach a tracepoint program?
fn has_tracing_caps(caps: u64) -> bool {
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

fn ensure_tracefs() -> Result<std::path::PathBuf, ProbeError> {
    for dir in [TRACEFS, DEBUGFS_TRACING] {
        match fs::metadata(Path::new(dir).join("events")) {
            Ok(meta) if meta.is_dir() => return Ok(dir.into()),
            // Mounted, but only root may enter it (tracefs is mode 0700): mounting it again
            // would not help.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(ProbeError::TracefsUnreadable {
                    dir: dir.into(),
                    source: e,
                });
            }
            _ => {}
        }
    }
    log::info!("tracefs is not mounted: mounting it at {TRACEFS}");
    nix::mount::mount(
        Some("nodev"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|errno| match errno {
        nix::errno::Errno::EPERM | nix::errno::Errno::EACCES => ProbeError::Permission {
            action: "mounting tracefs",
            source: Box::new(io::Error::from(errno)),
        },
        _ => ProbeError::Tracefs {
            source: io::Error::from(errno),
        },
    })?;
    Ok(TRACEFS.into())
}

fn spawn_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) {
    // SAFETY: the logger owns its ring buffer fd, open and unchanged for its whole life.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    };
    match registered.map_err(io::Error::from) {
        Ok(mut fd) => {
            tokio::spawn(async move {
                loop {
                    let Ok(mut guard) = fd.readable_mut().await else {
                        return;
                    };
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
            });
        }
        Err(e) => log::debug!("eBPF logs unavailable: {e}"),
    }
}

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES))
}

fn aya_error(
    action: &'static str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> ProbeError {
    ProbeError::Aya {
        action,
        source: Box::new(e),
    }
}

fn ebpf_error(e: EbpfError) -> ProbeError {
    let permission = match &e {
        EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. }) => {
            is_permission(io_error)
        }
        EbpfError::BtfError(_) => false,
        _ => std::error::Error::source(&e)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .is_some_and(is_permission),
    };
    if permission {
        memlock::denied("creating the eBPF maps", Box::new(e))
    } else {
        aya_error("loading the eBPF object", e)
    }
}

fn program_error(e: ProgramError, program: &str) -> ProbeError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            if is_permission(&io_error) && verifier_log.to_string().trim().is_empty() {
                memlock::denied("loading the eBPF program", Box::new(io_error))
            } else {
                ProbeError::Verifier {
                    program: program.to_owned(),
                    log: format!("{io_error}\n{verifier_log}"),
                    hint: "this kernel's verifier rejected the program; please report it with the log above and `uname -r`",
                }
            }
        }
        other => aya_error("loading the eBPF program", other),
    }
}

#[cfg(test)]
mod tests {
    use super::{fdinfo_field, has_tracing_caps, port_bitmap};

    #[test]
    fn capabilities() {
        assert!(has_tracing_caps(0x1ff_ffff_ffff));
        assert!(!has_tracing_caps(0));
        assert!(has_tracing_caps(1 << 21), "CAP_SYS_ADMIN alone");
        assert!(
            has_tracing_caps((1 << 39) | (1 << 38)),
            "CAP_BPF + CAP_PERFMON"
        );
        assert!(
            !has_tracing_caps(1 << 39),
            "CAP_BPF alone cannot attach a tracepoint"
        );
    }

    #[test]
    fn port_bitmap_words() {
        assert_eq!(
            port_bitmap(&[0, 63, 64, 443, 8080, 65535]),
            vec![
                (0, 1 | 1 << 63),
                (1, 1),
                (6, 1 << (443 % 64)),
                (126, 1 << (8080 % 64)),
                (1023, 1 << 63)
            ]
        );
        assert!(port_bitmap(&[]).is_empty());
    }

    #[test]
    fn reads_fdinfo_fields() {
        let info = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nrun_time_ns:\t1234\nrun_cnt:\t10\nrecursion_misses:\t3\n";
        assert_eq!(fdinfo_field(info, "recursion_misses"), Some(3));
        assert_eq!(fdinfo_field(info, "run_cnt"), Some(10));
        assert_eq!(fdinfo_field(info, "verified_insns"), None);
    }
}
