//! `courier test`: runs a config's route tests (docs/route-tests.md) and prints one line per
//! case, a diff for each failure and a summary. Exit 0 when every case passes, 1 when one
//! fails, 2 when the config or a test file cannot be used.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::ValueEnum;
use courier::config::Config;
use courier::routetest::{CaseReport, Harness, TestFile};

/// How the results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One line per case, failures as diffs, a summary.
    Text,
    /// One JSON document: every case with its routes and failures, and the counts.
    Json,
}

/// What `courier test` was asked to do.
pub struct Args {
    /// The config under test.
    pub config: PathBuf,
    /// Test files named on the command line.
    pub files: Vec<PathBuf>,
    /// A directory of `*.toml` test files (default: `tests/` beside the config).
    pub tests: Option<PathBuf>,
    /// Run only the cases whose name contains this.
    pub filter: Option<String>,
    /// Output format.
    pub format: Format,
}

/// Runs the cases and reports; see the module doc for the exit codes.
pub fn test(args: &Args) -> anyhow::Result<ExitCode> {
    let unusable = |e: &dyn std::fmt::Display| {
        eprintln!("error: {e}");
        Ok(ExitCode::from(2))
    };
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => return unusable(&e),
    };
    let files = match test_files(args) {
        Ok(f) => f,
        Err(e) => return unusable(&e),
    };
    let mut loaded = Vec::with_capacity(files.len());
    for f in &files {
        match TestFile::load(f, &config) {
            Ok(t) => loaded.push(t),
            Err(e) => return unusable(&e),
        }
    }
    let cases: Vec<_> = loaded
        .iter()
        .flat_map(|f| &f.cases)
        .filter(|c| args.filter.as_deref().is_none_or(|s| c.name.contains(s)))
        .collect();
    if cases.is_empty() {
        let why = match &args.filter {
            Some(s) => format!("no case name contains `{s}`"),
            None => "no cases".to_owned(),
        };
        return unusable(&why);
    }
    let harness = match Harness::new(&config) {
        Ok(h) => h,
        Err(e) => return unusable(&format!("{}: {e}", args.config.display())),
    };

    let mut out = std::io::stdout().lock();
    let mut reports = Vec::with_capacity(cases.len());
    for case in cases {
        let report = harness.run(case);
        if args.format == Format::Text {
            print_case(&mut out, &report)?;
        }
        reports.push(report);
    }
    let failed = reports.iter().filter(|r| !r.passed).count();
    let passed = reports.len() - failed;
    match args.format {
        Format::Text => writeln!(
            out,
            "\n{}: {passed} passed, {failed} failed ({} case(s) in {} file(s))",
            if failed == 0 { "ok" } else { "FAILED" },
            reports.len(),
            loaded.len()
        )?,
        Format::Json => {
            let doc = serde_json::json!({
                "config": args.config.display().to_string(),
                "passed": passed,
                "failed": failed,
                "cases": reports,
            });
            serde_json::to_writer_pretty(&mut out, &doc)?;
            writeln!(out)?;
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_case(out: &mut impl Write, r: &CaseReport) -> std::io::Result<()> {
    let status = if r.passed { "ok" } else { "FAILED" };
    writeln!(out, "{status:<7} {}:{}  {}", r.file, r.line, r.name)?;
    for f in &r.failures {
        writeln!(out, "        {f}")?;
    }
    if !r.passed && !r.routes.is_empty() {
        let did: Vec<String> = r
            .routes
            .iter()
            .map(|x| format!("{} {}", x.route, x.outcome))
            .collect();
        writeln!(out, "        (matched: {})", did.join(", "))?;
    }
    Ok(())
}

/// The files named, plus those of `--tests DIR`; with neither, `tests/*.toml` beside the
/// config.
fn test_files(args: &Args) -> Result<Vec<PathBuf>, String> {
    let mut files = args.files.clone();
    for f in &files {
        if !f.is_file() {
            return Err(format!("test file {} does not exist", f.display()));
        }
    }
    let dir = match (&args.tests, files.is_empty()) {
        (Some(d), _) => Some(d.clone()),
        (None, true) => Some(args.config.parent().unwrap_or(Path::new("")).join("tests")),
        (None, false) => None,
    };
    if let Some(dir) = dir {
        let entries = std::fs::read_dir(&dir).map_err(|e| {
            format!(
                "no test directory {}: {e} (give test files or --tests DIR)",
                dir.display()
            )
        })?;
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "toml"))
            .collect();
        if found.is_empty() {
            return Err(format!("no *.toml test files in {}", dir.display()));
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}
