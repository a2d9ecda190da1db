//! Giving freed memory back to the system after a burst of watch events.
//!
//! glibc keeps what a program frees in its arenas, and returns pages only
//! from the top of a heap: after the first list of a large cluster (tens of
//! MB of JSON decoded into objects, then dropped once the index holds what
//! it needs) those pages stay resident although nothing uses them.
//! `malloc_trim` hands every arena's free pages back; live allocations do
//! not move.
// The one use of `unsafe` in the crate: a call into glibc with no pointers.
#![allow(unsafe_code)]

/// Returns the allocator's free pages to the system; whether any were
/// returned. Does nothing off glibc (other allocators return large free
/// blocks themselves).
pub fn give_back_freed() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers and works under glibc's own
        // arena locks; any thread may call it at any time.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
