//! The `patchbay` binary.

/// mimalloc: the engine allocates small objects on several threads, where
/// glibc's allocator showed as a tenth of the CPU (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(patchbay::cli::main());
}
