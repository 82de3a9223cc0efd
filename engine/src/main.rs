//! The `courier` binary: run the engine, check a config, and the tools around it (send,
//! parse, listen).

mod cli;

fn main() -> std::process::ExitCode {
    courier_plugin::memory::return_large_blocks();
    cli::main()
}
