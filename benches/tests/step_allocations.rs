//! The filtered page-table-write #VE allocates nothing on the heap once the world is warm:
//! a counting global allocator (it forwards to the system allocator) counts the allocations
//! of 1 000 filtered writes, each instruction form, after a warm-up round of as many.

// A global allocator cannot be written without `unsafe`: these two forwarding functions are
// the only unsafe code in the workspace, and they exist only in this test binary.
#![allow(unsafe_code)]
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use vesim::guest::mm::bits;
use vesim::layout;
use vesim_benches::{filtered_write, pt_write_world};
use vesim_model::VcpuId;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded unchanged; the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_of(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    f();
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

#[test]
fn a_filtered_write_allocates_nothing_once_warm() {
    for form in 0..3 {
        let (mut w, pid) = pt_write_world(true, 1, 0);
        // Warm-up: the caches reach their size, and so does the event log (cleared below, so
        // that the counted writes' events fit in what it already holds).
        for i in 0..1000 {
            filtered_write(&mut w, pid, form, i % 2 == 0);
        }
        w.events.clear();
        let filtered = w.counters.ignored_irrelevant;
        let mut n = 0;
        for i in 0..1000 {
            let attrs = if i % 2 == 0 { bits::PWT } else { 0 };
            // The memory manager's plan (a list of instructions) is made outside the count:
            // what is counted is the write itself, from the guest's instruction through the
            // #VE, the agent and its return.
            let plan = w
                .mm()
                .plan_set_caching(pid, layout::USER_BASE, attrs, form)
                .expect("the plan");
            n += allocations_of(|| w.run_plan(VcpuId(0), plan).expect("the write completes"));
        }
        assert_eq!(
            w.counters.ignored_irrelevant - filtered,
            1000,
            "form {form}: every write was filtered in the guest"
        );
        assert_eq!(n, 0, "form {form}: {n} allocations in 1000 filtered writes");
    }
}
