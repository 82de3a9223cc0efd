//! `courier run` and `courier check`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use courier::config::Config;
use courier::runtime::Engine;

/// Runs the engine until a signal stops it.
pub fn run(path: &Path, store_dir: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let mut config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    if let Some(dir) = store_dir {
        config.store.dir = Some(std::path::absolute(dir)?);
    }
    super::runtime()?.block_on(async {
        let engine = Engine::start(config)
            .await
            .with_context(|| format!("starting {}", path.display()))?;
        super::cancel_on_signal(engine.shutdown_token());
        engine.wait().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// Validates each config; prints a summary or every error.
pub fn check(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    for path in paths {
        let loaded = Config::load(path).map_err(|e| e.to_string()).and_then(|c| {
            // Compile every plugin and script too: a config is only good if its steps load.
            courier::steps::Steps::load(&c, None)
                .map(|_| c)
                .map_err(|e| format!("{}: {e}", path.display()))
        });
        match loaded {
            Ok(c) => println!(
                "ok: {}: {} listener(s), {} route(s), {} destination(s)",
                path.display(),
                c.listeners.len(),
                c.routes.len(),
                c.destinations.len()
            ),
            Err(e) => {
                ok = false;
                eprintln!("error: {e}");
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
