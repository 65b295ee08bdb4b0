//! How the process allocates: one setting, made once at start.
//!
//! Transfers move data in parts of `partSize` (16 MiB by default), each a fresh buffer freed
//! once sent. glibc's malloc serves a request that large with its own `mmap` and returns it on
//! free, but each such free also *raises* its mmap threshold (up to 32 MiB), so from the second
//! part on, part buffers come from the heap arenas and stay mapped after they are freed: an
//! agent sat 84 MiB above idle after a 2 GiB upload (BENCHMARKS.md, "Agent transfers"). Fixing
//! the threshold at [`MMAP_THRESHOLD`] keeps every large buffer in its own mapping, returned to
//! the system when freed (+36 MiB in the same run: the parts in flight). Small allocations are
//! untouched.

/// Allocations of at least this many bytes get their own mapping, returned on free.
pub const MMAP_THRESHOLD: usize = 4 << 20;

/// Applies the allocator setting above. Call before any thread is started. A no-op where the C
/// library is not glibc.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; called at start, before other threads.
    unsafe {
        nix::libc::mallopt(
            nix::libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD as nix::libc::c_int,
        );
    }
}
