//! The `courier` binary: run the engine, check a config, and the tools around it (send,
//! parse, listen).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
