//! The `promptgate` binary: parse the command line and run it.

// Fewer instructions per allocation than the system allocator on the request path (measured
// with bench/cost.sh, see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    promptgate::cli::main()
}
