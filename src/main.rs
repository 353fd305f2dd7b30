//! The `drl` binary: the daemon and the admin commands (see `drl --help`).

/// mimalloc, not glibc's malloc: every replicated write allocates and frees its frame, its
/// payload buffer and a few small records on the hot path, and glibc's bins (`_int_malloc`,
/// `_int_free`, `unlink_chunk`, `malloc_consolidate`) were ~9 % of the Secondary's CPU at
/// QD 32. See ARCHITECTURE.md, "The cost of a request".
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(drl::cli::main());
}
