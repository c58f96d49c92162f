//! The `vesim` binary.

fn main() -> std::process::ExitCode {
    vesim::cli::main()
}
