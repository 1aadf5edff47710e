//! The process's memory beyond what its data needs: the binary's allocator (mimalloc, set in
//! `main.rs`) keeps freed pages, and backs its arenas with 2 MiB transparent huge pages where
//! the host allows them. Both inflate the peak RSS that issue 12 bounds (40 MiB with default
//! settings; `cargo xtask bench` measures it).

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`, inherited by its
/// children). Call first thing in `main`.
///
/// At full churn, 20 of the 50 MiB peak RSS were huge pages the allocator had asked for and
/// barely filled; without them the peak was 36 MiB for the same CPU per event (measured with
/// `cargo xtask bench --modes none,tracer`, docs/bench.md). Best effort: a failure changes
/// nothing but the peak.
pub fn no_huge_pages() {
    // Before the logger exists: nothing to say either way.
    let _ = nix::sys::prctl::set_thp_disable(true);
}

/// Hands the pages the allocator keeps after a large, short-lived parse back to the OS.
///
/// The kernel's BTF (5.5 MB on disk, ~22 MiB once parsed by aya) is parsed at start and freed;
/// mimalloc would keep those pages resident, and the ring buffer mapped after them (twice its
/// size, all resident at once) would add to them in the peak RSS. Where mimalloc is not the
/// global allocator (unit tests), this only sweeps mimalloc's own, unused heap.
pub fn release_freed() {
    // SAFETY: `mi_collect` takes no pointers and frees only memory no allocation refers to.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
