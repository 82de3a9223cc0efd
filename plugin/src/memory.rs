//! How the process hands memory back to the system (glibc's malloc on Linux; elsewhere these
//! do nothing). They live here because this crate is where Courier's unsafe FFI is allowed.

/// Allocations from this size up get pages of their own, returned to the system when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const LARGE_BLOCK: libc::c_int = 128 * 1024;

/// Makes every allocation of 128 KiB or more a mapping of its own, unmapped when freed, for
/// the life of the process. Call once, first thing in `main`.
///
/// glibc starts with this threshold but raises it to the size of each large block freed: after
/// the first 1 MiB message, blocks up to 1 MiB came from malloc's arenas, which keep freed
/// pages. One 1 MiB ORU through the example clinic then left the engine 11 MiB larger for
/// good and peaked 13 MiB above where it started; with the threshold held, 7 and 11 MiB
/// (`bench/targets.sh`). Ordinary messages are a few KiB and never reach it.
pub fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter under malloc's own lock; any thread may
    // call it at any time, and a refused value leaves the setting as it was.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE_BLOCK);
    }
}

/// Returns the pages malloc holds free (it keeps them for reuse otherwise), e.g. once a
/// plugin compile has freed its memory.
pub(crate) fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions: it only releases memory glibc holds as free,
    // under the arenas' own locks, so it is safe from any thread at any time.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}
