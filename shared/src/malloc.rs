//! How the process gets large blocks from the C allocator (glibc's `malloc`, which Rust's
//! default allocator uses). KV caches are large, come and go with sessions, and are mostly
//! untouched when new (a session reserves room for its whole answer). glibc serves blocks over
//! its mmap threshold straight from `mmap` (fresh zero pages, resident only once written, given
//! back on free), but by default it raises that threshold up to 32 MiB after such a block is
//! freed; from then on a session's cache comes from the heap, is resident in full once reused,
//! and stays resident after its session is evicted. Measured with `make bench-memory` (10,000
//! idle sessions, 256 MiB KV budget): the worker's resident memory grew by 1.18× the budget with
//! the default, see README for the figure with this fixed threshold.

/// Blocks of at least this many bytes always come from `mmap`.
pub const MMAP_THRESHOLD: usize = 256 << 10;

/// Fixes the mmap threshold at [`MMAP_THRESHOLD`] (which also stops glibc from moving it).
/// Call once at start, before threads allocate. Does nothing on other C libraries.
#[allow(unsafe_code)]
pub fn large_blocks_from_mmap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
    }
}
