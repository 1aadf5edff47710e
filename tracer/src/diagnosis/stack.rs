//! Where in the code: each blocked thread's user stack, unwound from the `pc`/`sp` its system
//! call shows (`/proc/PID/task/TID/syscall`) with the modules' DWARF CFI (`.eh_frame`, by
//! framehop; frame pointers where a module has none), reading the stack through
//! `/proc/PID/mem` (which the kernel grants only to a tracer passing its ptrace access check),
//! and symbolized with blazesym (function, file and line where debug information exists).
//! Every thread says why its walk stopped.

use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::{FileExt as _, MetadataExt as _},
    sync::Arc,
    time::Instant,
};

use blazesym::symbolize::{
    source::{Process, Source},
    Input, Symbolized, Symbolizer,
};
use procfs::process::{MMapPath, MemoryMap};

use super::{Diagnosis, Frame, Unavailable};

/// Frames walked at most per thread.
pub const MAX_FRAMES: usize = 48;

/// Bytes of stack read per thread, from its stack pointer up.
const STACK_BYTES: u64 = 256 * 1024;

/// Unwind sections of one file, shared between runs.
type Sections = framehop::ExplicitModuleSectionInfo<Arc<[u8]>>;

/// Loadable segments of a file: `(vaddr, file offset, file size)`.
type Segments = Arc<[(u64, u64, u64)]>;

/// Files' unwind sections kept at most (by path, size and modification time).
const SECTIONS_KEPT: usize = 256;

/// Walks and symbolizes stacks, keeping files' unwind sections between runs. Each run
/// symbolizes with a symbolizer of its own, dropped at its end: the debug information it
/// parses (50 MiB for a Python interpreter built with DWARF) would otherwise stay resident in
/// an agent whose memory is capped (`MemoryMax`, the DaemonSet's limit), growing with every
/// program diagnosed.
pub struct Stacks {
    sections: HashMap<(String, u64, i64), (Sections, Segments)>,
}

impl Stacks {
    /// No parsed files.
    pub fn new() -> Self {
        Self {
            sections: HashMap::new(),
        }
    }

    /// Fills `frames` and `stack_stop` of the listed threads of `d`, and `runtime`.
    pub fn fill(&mut self, d: &mut Diagnosis, deadline: Instant) {
        let pid = d.pid;
        d.runtime = runtime_of_exe(pid);
        if d.threads.iter().all(|t| t.sp.is_none()) {
            return;
        }
        let maps = match procfs::process::Process::new(i32::try_from(pid).unwrap_or(-1))
            .and_then(|p| p.maps())
        {
            Ok(maps) => maps.0,
            Err(e) => {
                stop_all(d, &format!("its memory map could not be read: {e}"));
                return;
            }
        };
        // The kernel opens /proc/PID/mem only for a tracer that passes its ptrace access
        // check (PTRACE_MODE_ATTACH): what it refuses is said, never worked around.
        let mem = match File::open(format!("/proc/{pid}/mem")) {
            Ok(mem) => Some(mem),
            Err(e) => {
                d.unavailable.push(Unavailable {
                    field: "frames".into(),
                    reason: format!("ptrace access to its memory refused: {e}"),
                });
                None
            }
        };
        let (unwinder, unread) = self.unwinder(pid, &maps);
        // Walk every listed thread, then symbolize all their addresses at once.
        let mut walked: Vec<(usize, Vec<u64>)> = Vec::new();
        for (i, t) in d.threads.iter_mut().enumerate() {
            let (Some(sp), Some(pc)) = (t.sp, t.pc) else {
                continue;
            };
            // The first thread is always walked (building the unwinder, which reads the
            // programs' unwind tables once, may take the budget on a slow machine).
            let (addrs, stop) = if i > 0 && Instant::now() >= deadline {
                (
                    vec![pc],
                    "the diagnosis time budget ran out: the program counter only".into(),
                )
            } else {
                match &mem {
                    Some(mem) => {
                        let (addrs, stop) = walk(&unwinder, mem, &maps, sp, pc);
                        // An end in a file whose unwind tables could not be read is no end.
                        let last = addrs.last().copied().unwrap_or(pc);
                        match unread.iter().find(|(range, _)| range.contains(&last)) {
                            Some((_, path)) if stop.starts_with("complete") => (
                                addrs,
                                format!(
                                    "stopped in {path}, whose file could not be read for its \
                                     unwind tables"
                                ),
                            ),
                            _ => (addrs, stop),
                        }
                    }
                    None => (
                        vec![pc],
                        "ptrace access to its memory refused: the program counter only".into(),
                    ),
                }
            };
            t.stack_stop = Some(stop);
            walked.push((i, addrs));
        }
        let all: Vec<u64> = walked.iter().flat_map(|(_, a)| a.iter().copied()).collect();
        let first: Vec<bool> = walked
            .iter()
            .flat_map(|(_, a)| (0..a.len()).map(|j| j == 0))
            .collect();
        let mut frames = symbolize(&Symbolizer::new(), pid, &all, &first, &maps).into_iter();
        for (i, addrs) in walked {
            d.threads[i].frames = frames.by_ref().take(addrs.len()).collect();
        }
        if d.runtime.is_none() {
            d.runtime = d
                .threads
                .iter()
                .flat_map(|t| &t.frames)
                .find_map(|f| f.module.as_deref().and_then(runtime_of))
                .map(str::to_owned);
        }
    }

    /// An unwinder knowing every executable file mapped in the process, and the executable
    /// mappings whose files could not be read (address range, path).
    fn unwinder(&mut self, pid: u32, maps: &[MemoryMap]) -> (Unwinder, Vec<Unread>) {
        let mut unread = Vec::new();
        let mut unwinder = Unwinder::new();
        let mut files: HashMap<&std::path::Path, Vec<&MemoryMap>> = HashMap::new();
        for m in maps {
            if let MMapPath::Path(path) = &m.pathname {
                files.entry(path.as_path()).or_default().push(m);
            }
        }
        if self.sections.len() > SECTIONS_KEPT {
            self.sections.clear();
        }
        for (path, maps) in files {
            // Only the executable mappings: the code framehop looks up. A file may be mapped
            // more than once (a reader's own mmap of it): each is a module of its own.
            for m in maps
                .iter()
                .filter(|m| m.perms.contains(procfs::process::MMPermissions::EXECUTE))
            {
                let Some((file, meta)) = module_file(pid, m, path) else {
                    unread.push((m.address.0..m.address.1, path.display().to_string()));
                    continue;
                };
                let key = (
                    path.to_string_lossy().into_owned(),
                    meta.size(),
                    meta.mtime(),
                );
                let (sections, segments) = if let Some(known) = self.sections.get(&key) {
                    known.clone()
                } else {
                    let Some(read) = read_sections(&file) else {
                        unread.push((m.address.0..m.address.1, path.display().to_string()));
                        continue;
                    };
                    self.sections.insert(key.clone(), read.clone());
                    read
                };
                // The load bias: where the segment holding this mapping's file offset was
                // put, minus its virtual address.
                let Some(vaddr) = segments.iter().rev().find_map(|&(vaddr, offset, size)| {
                    let (page_offset, page_vaddr) = (offset & !0xfff, vaddr & !0xfff);
                    (page_offset..offset + size.max(1))
                        .contains(&m.offset)
                        .then(|| page_vaddr + (m.offset - page_offset))
                }) else {
                    continue;
                };
                let base_avma = m.address.0.wrapping_sub(vaddr);
                unwinder.add(framehop::Module::new(
                    key.0,
                    m.address.0..m.address.1,
                    base_avma,
                    sections,
                ));
            }
        }
        (unwinder, unread)
    }
}

/// An executable mapping whose file could not be read: its address range and path.
type Unread = (std::ops::Range<u64>, String);

/// The file of a mapping, to read: `/proc/PID/map_files/START-END`, the mapped file itself
/// (even deleted, or in another mount namespace; opening it needs CAP_SYS_ADMIN or
/// CAP_CHECKPOINT_RESTORE), else `/proc/PID/root/PATH`, the path as the process sees it
/// (ptrace access), when it is still the mapped file (the same inode).
fn module_file(
    pid: u32,
    m: &MemoryMap,
    path: &std::path::Path,
) -> Option<(String, std::fs::Metadata)> {
    let mapped = format!("/proc/{pid}/map_files/{:x}-{:x}", m.address.0, m.address.1);
    if let Ok(meta) = std::fs::metadata(&mapped) {
        return Some((mapped, meta));
    }
    rooted(pid, m, path)
}

/// `/proc/PID/root/PATH` when it is the file mapped at `m` (the same inode).
fn rooted(pid: u32, m: &MemoryMap, path: &std::path::Path) -> Option<(String, std::fs::Metadata)> {
    let rooted = format!("/proc/{pid}/root{}", path.display());
    let meta = std::fs::metadata(&rooted).ok()?;
    (meta.ino() == m.inode).then_some((rooted, meta))
}

/// Symbolizes walked stacks: `first` marks each stack's program counter; return addresses are
/// looked up at the call, one byte before. Through the process's `map_files` (blazesym's
/// process source) where they can be opened; else file by file, at file offsets, through
/// [`module_file`].
fn symbolize(
    symbolizer: &Symbolizer,
    pid: u32,
    addrs: &[u64],
    first: &[bool],
    maps: &[MemoryMap],
) -> Vec<Frame> {
    let lookup: Vec<u64> = addrs
        .iter()
        .zip(first)
        .map(|(&a, &first)| if first { a } else { a.saturating_sub(1) })
        .collect();
    let map_files = maps
        .iter()
        .find(|m| matches!(m.pathname, MMapPath::Path(_)))
        .is_none_or(|m| {
            std::fs::metadata(format!(
                "/proc/{pid}/map_files/{:x}-{:x}",
                m.address.0, m.address.1
            ))
            .is_ok()
        });
    let symbols = if map_files {
        let source = Source::Process(Process::new(pid.into()));
        symbolizer
            .symbolize(&source, Input::AbsAddr(&lookup))
            .unwrap_or_else(|e| {
                log::debug!("symbolizing pid {pid}: {e}");
                Vec::new()
            })
    } else {
        by_file(symbolizer, pid, &lookup, maps)
    };
    addrs
        .iter()
        .enumerate()
        .map(|(i, &addr)| {
            let module = module_of(maps, addr);
            match symbols.get(i) {
                Some(Symbolized::Sym(sym)) => {
                    let code = sym.code_info.as_deref();
                    Frame {
                        addr,
                        function: Some(sym.name.to_string()),
                        file: code.map(|c| c.to_path().display().to_string()),
                        line: code.and_then(|c| c.line),
                        module,
                    }
                }
                _ => Frame {
                    module,
                    ..bare(addr)
                },
            }
        })
        .collect()
}

/// Symbolizes `lookup` file by file: each address at its offset in the file mapped there
/// ([`module_file`]); unknown where there is none.
fn by_file<'a>(
    symbolizer: &'a Symbolizer,
    pid: u32,
    lookup: &[u64],
    maps: &[MemoryMap],
) -> Vec<Symbolized<'a>> {
    let mut out: Vec<Symbolized<'a>> = lookup
        .iter()
        .map(|_| Symbolized::Unknown(blazesym::symbolize::Reason::UnknownAddr))
        .collect();
    let mut files: HashMap<String, Vec<(usize, u64)>> = HashMap::new();
    for (i, &addr) in lookup.iter().enumerate() {
        let Some(m) = maps
            .iter()
            .find(|m| (m.address.0..m.address.1).contains(&addr))
        else {
            continue;
        };
        let MMapPath::Path(path) = &m.pathname else {
            continue;
        };
        if let Some((file, _)) = module_file(pid, m, path) {
            let offset = addr - m.address.0 + m.offset;
            files.entry(file).or_default().push((i, offset));
        }
    }
    for (file, at) in files {
        let source = Source::Elf(blazesym::symbolize::source::Elf::new(file.as_str()));
        let offsets: Vec<u64> = at.iter().map(|&(_, offset)| offset).collect();
        match symbolizer.symbolize(&source, Input::FileOffset(&offsets)) {
            Ok(symbols) => {
                for ((i, _), symbol) in at.into_iter().zip(symbols) {
                    out[i] = symbol;
                }
            }
            Err(e) => log::debug!("symbolizing {file}: {e}"),
        }
    }
    out
}

impl Default for Stacks {
    fn default() -> Self {
        Self::new()
    }
}

/// A frame with its address only.
fn bare(addr: u64) -> Frame {
    Frame {
        addr,
        function: None,
        file: None,
        line: None,
        module: None,
    }
}

fn stop_all(d: &mut Diagnosis, why: &str) {
    for t in &mut d.threads {
        if t.stack_stop.is_none() {
            t.stack_stop = Some(why.to_owned());
        }
    }
}

/// The file mapped at `addr`; `None` for anonymous memory.
fn module_of(maps: &[MemoryMap], addr: u64) -> Option<String> {
    maps.iter()
        .find(|m| (m.address.0..m.address.1).contains(&addr))
        .and_then(|m| match &m.pathname {
            MMapPath::Path(p) => Some(p.display().to_string()),
            MMapPath::Vdso => Some("[vdso]".into()),
            _ => None,
        })
}

/// The unwind sections of an ELF file, and its loadable segments as `(vaddr, file offset,
/// file size)`.
fn read_sections(path: &str) -> Option<(Sections, Segments)> {
    use object::{Object as _, ObjectSection as _, ObjectSegment as _};
    let data = std::fs::read(path).ok()?;
    let elf = object::File::parse(data.as_slice()).ok()?;
    let section = |name: &str| elf.section_by_name(name);
    let range = |name: &str| section(name).map(|s| s.address()..s.address() + s.size());
    let bytes = |name: &str| {
        section(name)
            .and_then(|s| s.data().ok())
            .map(Arc::<[u8]>::from)
    };
    let sections = Sections {
        base_svma: 0,
        text_svma: range(".text"),
        text: bytes(".text"),
        got_svma: range(".got"),
        eh_frame_svma: range(".eh_frame"),
        eh_frame: bytes(".eh_frame"),
        eh_frame_hdr_svma: range(".eh_frame_hdr"),
        eh_frame_hdr: bytes(".eh_frame_hdr"),
        debug_frame: bytes(".debug_frame"),
        ..Sections::default()
    };
    let segments: Segments = elf
        .segments()
        .map(|seg| {
            let (offset, size) = seg.file_range();
            (seg.address(), offset, size)
        })
        .collect();
    Some((sections, segments))
}

/// A language runtime named by a program or library path.
fn runtime_of(path: &str) -> Option<&'static str> {
    let name = path.rsplit('/').next().unwrap_or(path);
    [
        ("python", "python"),
        ("libjvm", "java"),
        ("java", "java"),
        ("node", "node"),
        ("ruby", "ruby"),
        ("perl", "perl"),
        ("php", "php"),
        ("beam", "erlang"),
        ("dotnet", "dotnet"),
        ("libcoreclr", "dotnet"),
    ]
    .into_iter()
    .find(|(prefix, _)| {
        name.starts_with(prefix)
            || name
                .strip_prefix("lib")
                .is_some_and(|n| n.starts_with(prefix))
    })
    .map(|(_, runtime)| runtime)
}

fn runtime_of_exe(pid: u32) -> Option<String> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    runtime_of(&exe.to_string_lossy()).map(str::to_owned)
}

#[cfg(target_arch = "x86_64")]
mod arch {
    pub type Unwinder = Inner;

    /// framehop's x86_64 unwinder over shared section data.
    pub struct Inner {
        unwinder: framehop::x86_64::UnwinderX86_64<std::sync::Arc<[u8]>>,
    }

    impl Inner {
        pub fn new() -> Self {
            Self {
                unwinder: framehop::x86_64::UnwinderX86_64::new(),
            }
        }

        pub fn add(&mut self, module: framehop::Module<std::sync::Arc<[u8]>>) {
            use framehop::Unwinder as _;
            self.unwinder.add_module(module);
        }

        /// Return addresses from `pc`/`sp` (no frame pointer known: CFI recovers it).
        pub fn frames(
            &self,
            pc: u64,
            sp: u64,
            bp: u64,
            read: &mut dyn FnMut(u64) -> Result<u64, ()>,
            max: usize,
        ) -> (Vec<u64>, String) {
            use framehop::Unwinder as _;
            let mut cache = framehop::x86_64::CacheX86_64::<_>::new();
            let regs = framehop::x86_64::UnwindRegsX86_64::new(pc, sp, bp);
            let mut read = |addr| read(addr);
            let mut iter = self.unwinder.iter_frames(pc, regs, &mut cache, &mut read);
            let mut out = Vec::new();
            loop {
                if out.len() >= max {
                    return (out, format!("stopped at the limit of {max} frames"));
                }
                match iter.next() {
                    Ok(Some(frame)) => out.push(frame.address()),
                    Ok(None) => return (out, "complete: reached the outermost frame".into()),
                    Err(e) => return (out, format!("unwinding stopped: {e}")),
                }
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod arch {
    pub type Unwinder = Inner;

    /// Unwinding is implemented for x86_64 only: other machines get the program counter.
    pub struct Inner;

    impl Inner {
        pub fn new() -> Self {
            Self
        }

        pub fn add(&mut self, _module: framehop::Module<std::sync::Arc<[u8]>>) {}

        pub fn frames(
            &self,
            pc: u64,
            _sp: u64,
            _bp: u64,
            _read: &mut dyn FnMut(u64) -> Result<u64, ()>,
            _max: usize,
        ) -> (Vec<u64>, String) {
            (
                vec![pc],
                "stack unwinding is implemented for x86_64 only: the program counter alone".into(),
            )
        }
    }
}

use arch::Unwinder;

/// The frame pointer register at the system call is not in `/proc/PID/task/TID/syscall` (and
/// reading it would mean stopping the thread with ptrace): it is recovered as the lowest frame
/// record on the stack above `sp` (a slot holding a higher stack address, the caller's frame
/// pointer or 0, followed by a return address into executable memory, whose own record checks
/// out the same way). Code compiled with frame pointers (the Rust standard library, for one)
/// needs it to be unwound; CFI-only code ignores it.
pub fn frame_pointer(
    read: &mut dyn FnMut(u64) -> Result<u64, ()>,
    sp: u64,
    top: u64,
    executable: &dyn Fn(u64) -> bool,
) -> Option<u64> {
    let record = |a: u64, read: &mut dyn FnMut(u64) -> Result<u64, ()>| -> Option<u64> {
        let (saved, ret) = (read(a).ok()?, read(a + 8).ok()?);
        (executable(ret) && (saved == 0 || (saved > a && saved < top))).then_some(saved)
    };
    (sp + 8..top.saturating_sub(16))
        .step_by(8)
        .take(4096)
        .find(|&a| match record(a, read) {
            Some(0) => true,
            Some(next) => record(next, read).is_some(),
            None => false,
        })
}

/// Walks one thread's stack: reads up to [`STACK_BYTES`] from `sp` (within its mapping) and
/// unwinds from `pc`.
fn walk(
    unwinder: &Unwinder,
    mem: &File,
    maps: &[MemoryMap],
    sp: u64,
    pc: u64,
) -> (Vec<u64>, String) {
    let end = maps
        .iter()
        .find(|m| (m.address.0..m.address.1).contains(&sp))
        .map_or(sp, |m| m.address.1);
    let len = end.saturating_sub(sp).min(STACK_BYTES);
    let mut stack = vec![0u8; usize::try_from(len).unwrap_or(0)];
    let n = match mem.read_at(&mut stack, sp) {
        Ok(n) => n,
        Err(e) => {
            return (
                vec![pc],
                format!("its stack could not be read through /proc/PID/mem: {e}"),
            )
        }
    };
    stack.truncate(n);
    let n = stack.len();
    let mut read = |addr: u64| -> Result<u64, ()> {
        let off = usize::try_from(addr.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
        let bytes = stack.get(off..off + 8).ok_or(())?;
        Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
    };
    let executable = |addr: u64| {
        maps.iter().any(|m| {
            m.perms.contains(procfs::process::MMPermissions::EXECUTE)
                && (m.address.0..m.address.1).contains(&addr)
        })
    };
    let bp = frame_pointer(&mut read, sp, sp + n as u64, &executable);
    let (frames, stop) = unwinder.frames(pc, sp, bp.unwrap_or(0), &mut read, MAX_FRAMES);
    if frames.is_empty() {
        (vec![pc], stop)
    } else {
        (frames, stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks in a channel receive (a futex wait) inside a function of its own.
    #[inline(never)]
    fn wait_in_a_named_function(rx: &std::sync::mpsc::Receiver<()>) {
        let _ = rx.recv();
    }

    #[test]
    fn our_own_blocked_thread_is_walked_and_symbolized() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let waiter = std::thread::Builder::new()
            .name("stack-waiter".into())
            .spawn(move || wait_in_a_named_function(&rx))
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let target = super::super::Target {
            pid: std::process::id(),
            ..Default::default()
        };
        let mut d = Diagnosis {
            pid: target.pid,
            ..Diagnosis::default()
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        super::super::threads::fill(&mut d, None, &target, deadline);
        Stacks::new().fill(&mut d, deadline);
        tx.send(()).unwrap();
        waiter.join().unwrap();
        let t = d
            .threads
            .iter()
            .find(|t| t.name == "stack-waiter")
            .unwrap_or_else(|| panic!("{d:#?}"));
        assert!(
            t.frames.iter().any(|f| f
                .function
                .as_deref()
                .is_some_and(|f| f.contains("wait_in_a_named_function"))),
            "{t:#?}"
        );
    }

    #[test]
    fn runtimes_are_named_by_their_files() {
        assert_eq!(runtime_of("/usr/bin/python3.11"), Some("python"));
        assert_eq!(
            runtime_of("/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"),
            Some("python")
        );
        assert_eq!(
            runtime_of("/usr/lib/jvm/java-17/lib/server/libjvm.so"),
            Some("java")
        );
        assert_eq!(runtime_of("/usr/sbin/nginx"), None);
    }

    /// Without `map_files` (the deploy files' capabilities cannot open them), a module is read
    /// through `/proc/PID/root` when it is still the mapped file, and symbolized file by file
    /// at file offsets: our own function is named so.
    #[test]
    fn modules_are_read_through_the_root_when_it_is_the_mapped_file() {
        let pid = std::process::id();
        let maps = procfs::process::Process::myself()
            .unwrap()
            .maps()
            .unwrap()
            .0;
        let here =
            modules_are_read_through_the_root_when_it_is_the_mapped_file as fn() as usize as u64;
        let m = maps
            .iter()
            .find(|m| (m.address.0..m.address.1).contains(&here))
            .unwrap();
        let MMapPath::Path(path) = &m.pathname else {
            panic!("{m:?}")
        };
        let (file, _) = rooted(pid, m, path).expect("our own binary through /proc/PID/root");
        assert!(file.starts_with(&format!("/proc/{pid}/root/")), "{file}");
        let mut other = m.clone();
        other.inode += 1;
        assert!(
            rooted(pid, &other, path).is_none(),
            "another file at that path"
        );
        let symbolizer = Symbolizer::new();
        let symbols = by_file(&symbolizer, pid, &[here], &maps);
        let Some(Symbolized::Sym(sym)) = symbols.first() else {
            panic!("{symbols:?}")
        };
        assert!(
            sym.name
                .contains("modules_are_read_through_the_root_when_it_is_the_mapped_file"),
            "{}",
            sym.name
        );
    }
}
