// glibc's malloc took 8 % of a cache hit's CPU (perf, scripts/bench); mimalloc's thread-local
// free lists take less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    keep_huge_pages_off_the_heap();
    let cli = reviews::cli::Cli::parse_or_exit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(release_freed_memory)
        .build()?;
    // Inside the runtime: the trace exporter's connection and batches run on it.
    let telemetry = runtime.block_on(async { reviews::telemetry::init() });
    let result = runtime.block_on(reviews::cli::run(cli));
    // The runtime's workers still run: they export the last batch.
    telemetry.shutdown();
    result
}

/// mimalloc asks for transparent huge pages on its arenas (`madvise(MADV_HUGEPAGE)`), and where
/// the kernel honours that (`enabled` = `madvise`, as on Debian), khugepaged collapses every
/// 2 MiB region in which the heap ever touched a page into a resident huge page, seconds after
/// the fact: an idle service grew by 8 MiB steps for half a minute after an overload, and rested
/// at 27 MB instead of 17 (`scripts/bench`, overload). A small heap gains nothing from huge pages,
/// so the process opts out of them before it allocates much.
fn keep_huge_pages_off_the_heap() {
    // SAFETY: PR_SET_THP_DISABLE takes no pointers; a kernel without it returns EINVAL, and the
    // service runs as before.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

/// mimalloc hands freed memory back to the system lazily, from the thread that owns it, as that
/// thread goes on allocating: a worker that falls idle after a burst (an overload whose thousands
/// of connections have closed) would keep it, and the process's RSS with it (scripts/bench showed
/// 3x the resting RSS 30 s after 6,000 connections). So a worker about to park collects its heap,
/// at most once a second: nothing measurable under load, when workers seldom park.
fn release_freed_memory() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    LAST.with(|last| {
        let now = Instant::now();
        if last
            .get()
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            last.set(Some(now));
            // SAFETY: mi_collect only walks the calling thread's own heap.
            unsafe { libmimalloc_sys::mi_collect(true) };
        }
    });
}
