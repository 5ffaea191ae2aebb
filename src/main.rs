//! The `patchbay` binary.

fn main() {
    std::process::exit(patchbay::cli::main());
}
