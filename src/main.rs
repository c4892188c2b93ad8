//! The `promptgate` binary: parse the command line and run it.

/// mimalloc: the request path allocates and frees ≈ 130 small blocks per request, and glibc's
/// malloc spent ≈ 30,000 instructions on them (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    promptgate::cli::main()
}
