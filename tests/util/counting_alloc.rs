//! A global allocator that counts allocations and the bytes they hold, shared by the
//! zero-allocation test, the storm-memory test and the fan-out bench (each includes this
//! file with `#[path]`).
//!
//! Allocation counts are per thread, so tests running side by side do not see each other's
//! allocations. Live bytes are per process (memory allocated on one thread is often freed on
//! another): a test that reads them must be the only thing running in its process.

#![allow(dead_code)] // each includer uses a different part

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Forwards to the system allocator, counting every allocation and the bytes held.
pub struct Counting;

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// Bytes asked for and not yet freed, over the whole process.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Bytes the allocator set aside for them (`malloc_usable_size`: a chunk is rounded up, and a
/// large one is whole pages), over the whole process.
static HELD: AtomicUsize = AtomicUsize::new(0);

/// Allocations made so far by the calling thread.
pub fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Bytes allocated and not yet freed in this process, as asked for.
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Bytes the allocator holds for the live allocations of this process (what was asked for,
/// rounded up to its chunks).
pub fn held_bytes() -> usize {
    HELD.load(Ordering::Relaxed)
}

fn usable(ptr: *mut u8) -> usize {
    // SAFETY: `ptr` is a live allocation of the system allocator (glibc's malloc family).
    unsafe { libc::malloc_usable_size(ptr.cast()) }
}

fn gained(ptr: *mut u8, size: usize) {
    if !ptr.is_null() {
        LIVE.fetch_add(size, Ordering::Relaxed);
        HELD.fetch_add(usable(ptr), Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator; only counts calls and sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // try_with: during thread teardown the slot may be gone; such allocations are not ours.
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        let ptr = System.alloc(layout);
        gained(ptr, layout.size());
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        HELD.fetch_sub(usable(ptr), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Counted as an allocation, as the default (allocate, copy, free) would be; forwarded
        // as a realloc so that a large block still grows by remapping, as in the product.
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        let before = usable(ptr);
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            HELD.fetch_sub(before, Ordering::Relaxed);
            gained(new, new_size);
        }
        new
    }
}
