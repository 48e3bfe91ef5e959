fn main() -> std::process::ExitCode {
    return_large_blocks_to_the_os();
    portcullis::cli::run()
}

/// glibc raises its mmap threshold after the first large block is freed, so the 19 MiB
/// that each argon2id check borrows would stay in the heap for good after the first
/// password check (RSS 16 -> 36 MiB under load). A fixed threshold keeps blocks of
/// 256 KiB and more in their own mappings, returned to the system when freed.
///
/// Fixing it also freezes the trim threshold at its 128 KiB default, which made a heap
/// that frees a burst of small blocks (the span export thread, every batch) hand its top
/// back to the system and fault it in again each time; 2 MiB keeps that working set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_large_blocks_to_the_os() {
    // SAFETY: mallopt only sets an allocator parameter; it is called once, before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 2 * 1024 * 1024);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_large_blocks_to_the_os() {}
