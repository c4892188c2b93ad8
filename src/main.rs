//! The `promptgate` binary: parse the command line and run it.

fn main() -> std::process::ExitCode {
    promptgate::cli::main()
}
