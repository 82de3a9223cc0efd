//! Command-line interface (clap). Each subcommand lives in its own file; this one parses
//! arguments, sets up logging and maps results to exit codes:
//! 0 success, 1 the command's own "no" (a NAK, an invalid config), 2 usage or I/O errors.

mod bench;
mod listen;
mod messages;
mod package;
mod parse;
mod plugin;
mod replay;
mod run;
mod send;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use courier::logging::{self, LogFormat};

/// Courier, an HL7 v2 interface engine.
#[derive(Debug, Parser)]
#[command(name = "courier", version, about, propagate_version = true)]
struct Cli {
    /// Log line format (logs go to stderr).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log level or filter (e.g. `info`, `debug`, `courier=debug`); `RUST_LOG` wins if set.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine with a config file until SIGINT/SIGTERM.
    Run {
        /// The TOML config file.
        config: PathBuf,
        /// Keep the message store here instead of where the config says.
        #[arg(long)]
        store_dir: Option<PathBuf>,
    },
    /// Validate config files; exits non-zero with the file, line and key of each error.
    Check {
        /// The TOML config files.
        #[arg(required = true)]
        configs: Vec<PathBuf>,
    },
    /// Send HL7 files over MLLP and print each ACK.
    ///
    /// A file may hold one message, several, an FHS/BHS batch, or MLLP frames. Line endings
    /// `\n` and `\r\n` are sent as `\r`. Exits 1 if any message is not accepted.
    Send {
        /// Files to send, in order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Receiver, host:port.
        #[arg(long)]
        to: String,
        /// How long to wait for each ACK.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// Send each file's bytes untouched as one frame (for testing bad input).
        #[arg(long)]
        raw: bool,
        #[command(flatten)]
        tls: send::TlsArgs,
    },
    /// Show a message's structure, the values at paths, or its JSON form.
    Parse {
        /// The HL7 file (one message, several, or a batch).
        file: PathBuf,
        /// Print the value at this path (repeatable), e.g. `PID-5.1`, `PID-3[2].1`.
        #[arg(long = "path", short = 'p')]
        paths: Vec<String>,
        /// Print the message as JSON.
        #[arg(long, conflicts_with = "paths")]
        json: bool,
    },
    /// Find, show, resend and retry messages in the store.
    Messages {
        /// The engine's config (the store is where it says).
        #[arg(long, global = true, env = "COURIER_CONFIG")]
        config: Option<PathBuf>,
        /// The store directory itself, instead of --config.
        #[arg(long, global = true)]
        store_dir: Option<PathBuf>,
        #[command(subcommand)]
        command: messages::MessagesCommand,
    },
    /// Run a config's route tests: each case's message through the config's real routes and
    /// steps, compared with what the case expects (docs/route-tests.md).
    ///
    /// Test files are `tests/*.toml` beside the config unless files or --tests are given.
    /// Exits 0 when every case passes, 1 when a case fails, 2 when the config or a test file
    /// cannot be used.
    Test {
        /// The TOML config under test.
        config: PathBuf,
        /// Test files to run (instead of the config's tests/ directory).
        files: Vec<PathBuf>,
        /// Run the `*.toml` test files of this directory.
        #[arg(long)]
        tests: Option<PathBuf>,
        /// Run only the cases whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: test::Format,
    },
    /// Plugin projects and packages: `new`, `keygen`, `pack`, `install`, `list`, `replay`.
    Plugin {
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
    /// Load an MLLP receiver: messages with unique control ids over several connections,
    /// every ACK checked; prints messages/s, latency percentiles and errors by kind.
    /// Exits 1 if any message was not accepted.
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
    },
    /// A receiver that ACKs every message and prints or stores it: a stand-in EMR or LIS.
    Listen {
        /// Port to listen on (0 picks a free one; the address is printed).
        #[arg(long)]
        port: u16,
        /// Address to bind.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// Write each message to this directory (one file each) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
        /// ACK code to answer with (AE or AR to test a sender's error handling).
        #[arg(long, default_value = "AA", value_parser = ["AA", "AE", "AR"])]
        ack: String,
        /// Receive HTTP POSTs (ER7 or JSON bodies) instead of MLLP: a stand-in webhook.
        #[arg(long)]
        http: bool,
        /// Answer the first N messages with a failure (HTTP 503, or AE over MLLP) before
        /// accepting, to watch a sender retry.
        #[arg(long, value_name = "N", default_value_t = 0)]
        fail_first: u64,
        #[command(flatten)]
        tls: listen::TlsArgs,
    },
    /// The plugin compiler child: a component on stdin, its compiled code on stdout. The
    /// engine runs this in a process of its own for every plugin it has not compiled before
    /// (see `courier_plugin::wasm::compile_in_child`); not for use by hand.
    #[command(name = "compile-plugin", hide = true)]
    CompilePlugin {
        /// The engine settings the code must match.
        settings: Vec<String>,
    },
}

/// Entry point: parses arguments and runs the subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::CompilePlugin { settings } = &cli.command {
        // Nothing else in the child: no logging, no runtime; stderr carries its one error.
        return courier_plugin::wasm::compile_child_main(settings);
    }
    logging::init(cli.log_format, &cli.log_level);
    // Plugins are compiled in a child process of this same program, so that the compiler's
    // code and memory never become part of a long-running engine.
    if let Ok(exe) = std::env::current_exe() {
        courier_plugin::wasm::compile_in_child(exe, vec!["compile-plugin".into()]);
    }
    let result = match cli.command {
        Command::Run { config, store_dir } => run::run(&config, store_dir),
        Command::Check { configs } => run::check(&configs),
        Command::Send {
            files,
            to,
            timeout,
            raw,
            tls,
        } => send::send(&files, &to, timeout, raw, &tls),
        Command::Parse { file, paths, json } => parse::parse(&file, &paths, json),
        Command::Messages {
            config,
            store_dir,
            command,
        } => messages::messages(config.as_deref(), store_dir, command),
        Command::Test {
            config,
            files,
            tests,
            filter,
            format,
        } => test::test(&test::Args {
            config,
            files,
            tests,
            filter,
            format,
        }),
        Command::Plugin { command } => plugin::plugin(command),
        Command::Bench { args } => bench::bench(&args),
        Command::Listen {
            port,
            bind,
            out,
            ack,
            http,
            fail_first,
            tls,
        } => listen::listen(
            std::net::SocketAddr::new(bind, port),
            out,
            &ack,
            listen::Mode { http, fail_first },
            &tls,
        ),
        Command::CompilePlugin { .. } => unreachable!("handled above"),
    };
    match result {
        Ok(code) => code,
        // `courier parse ... | head` closes the pipe early: that is not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .and_then(|j| j.io_error_kind())
                .is_some_and(|k| k == std::io::ErrorKind::BrokenPipe)
    })
}

/// A multi-threaded tokio runtime for the async subcommands.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Cancels `token` on SIGINT or SIGTERM.
fn cancel_on_signal(token: tokio_util::sync::CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the engine");
                let _ = ctrl_c.await;
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("signal received; shutting down gracefully");
        token.cancel();
    });
}
