//! `courier plugin new NAME`: creates a plugin project that builds as it is — a `cdylib`
//! crate on the plugin SDK with a documented `#[transform]` and its unit tests, plus a config,
//! a route test and a sample message so that `courier test` runs on it right after the build.
//!
//! The files are templates under engine/templates/plugin/, embedded in the binary; `{{name}}`,
//! `{{lib_name}}` and `{{sdk_path}}` are substituted.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;

/// `courier plugin ...`
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a plugin project in PARENT/NAME that builds with
    /// `cargo build --release --target wasm32-wasip2` and has a route test for `courier test`.
    New {
        /// The crate's name: lower-case letters, digits, `-` and `_`, starting with a letter.
        name: String,
        /// The directory to create the project in (default: the current directory).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The plugin-sdk directory of a Courier source tree (default: the one this binary was
        /// built from, if it is still there).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Make a minisign key pair for signing packages: OUT.key (secret) and OUT.pub.
    ///
    /// The secret key is encrypted with a password (COURIER_KEY_PASSWORD, or asked for)
    /// unless --no-password. The keys work with the standard `minisign` tool too.
    Keygen {
        /// Path of the key files without extension.
        #[arg(long, default_value = "courier-signing")]
        out: PathBuf,
        /// Leave the secret key unencrypted (for CI signing; keep the file safe).
        #[arg(long)]
        no_password: bool,
    },
    /// Build a plugin project and write a signed package (docs/packages.md).
    ///
    /// Reads Cargo.toml and courier-plugin.toml of PROJECT, builds the component with
    /// `cargo build --release --target wasm32-wasip2` (unless --wasm), and signs the manifest
    /// with KEY (a minisign secret key; COURIER_KEY_PASSWORD if it is encrypted).
    Pack {
        /// The plugin project directory.
        #[arg(default_value = ".")]
        project: PathBuf,
        /// The minisign secret key to sign with.
        #[arg(long)]
        key: PathBuf,
        /// The package file to write (default NAME-VERSION.cpkg).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Pack this already-built component instead of building the project.
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// cargo's target directory for the build.
        #[arg(long)]
        target_dir: Option<PathBuf>,
        /// The package's version, instead of Cargo.toml's.
        #[arg(long = "package-version")]
        package_version: Option<String>,
    },
    /// Verify a package, run its own tests in the sandbox and install it beside the versions
    /// already installed. Exits 1, installing nothing, when it is refused.
    Install {
        /// The package file (.cpkg).
        package: PathBuf,
        /// The engine's config: [plugins] dir, trusted_keys and allow_capabilities.
        #[arg(long, env = "COURIER_CONFIG")]
        config: PathBuf,
    },
    /// List the installed plugins, each re-verified. Exits 1 if one fails verification.
    List {
        /// The engine's config.
        #[arg(long, env = "COURIER_CONFIG")]
        config: PathBuf,
    },
    /// Run a route's last stored messages through a candidate plugin version in the sandbox
    /// and show, message by message, the field-level differences from what the route's
    /// current version makes of them.
    Replay {
        /// The candidate, NAME@VERSION (installed).
        candidate: String,
        /// The route whose messages to replay.
        #[arg(long)]
        route: String,
        /// How many of its latest messages.
        #[arg(long, default_value = "20")]
        last: u32,
        /// The engine's config (the store is where it says).
        #[arg(long, env = "COURIER_CONFIG")]
        config: PathBuf,
        /// The store directory, instead of the config's.
        #[arg(long)]
        store_dir: Option<PathBuf>,
    },
}

/// Runs a `courier plugin` subcommand.
pub fn plugin(command: PluginCommand) -> anyhow::Result<ExitCode> {
    match command {
        PluginCommand::New { name, dir, sdk } => {
            let project = dir.join(&name);
            let files = new_project(&name, &project, sdk.as_deref())?;
            println!("created {}", project.display());
            for f in files {
                println!("  {f}");
            }
            let lib = name.replace('-', "_");
            println!(
                "\nnext:\n  cd {}\n  cargo test                                    # unit tests, natively\n  \
                 cargo build --release --target wasm32-wasip2  # target/wasm32-wasip2/release/{lib}.wasm\n  \
                 courier test courier.toml                     # the route tests, through the engine\n  \
                 courier plugin pack --key KEY                 # a signed package (docs/packages.md)",
                project.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PluginCommand::Keygen { out, no_password } => super::package::keygen(&out, no_password),
        PluginCommand::Pack {
            project,
            key,
            out,
            wasm,
            target_dir,
            package_version,
        } => super::package::pack(&super::package::PackArgs {
            project,
            key,
            out,
            wasm,
            target_dir,
            version: package_version,
        }),
        PluginCommand::Install { package, config } => super::package::install(&package, &config),
        PluginCommand::List { config } => super::package::list(&config),
        PluginCommand::Replay {
            candidate,
            route,
            last,
            config,
            store_dir,
        } => super::replay::replay(&candidate, &route, last, &config, store_dir),
    }
}

/// The templates: where each goes in the project, and its text.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "Cargo.toml",
        include_str!("../../templates/plugin/Cargo.toml.tmpl"),
    ),
    (
        "src/lib.rs",
        include_str!("../../templates/plugin/src/lib.rs"),
    ),
    (
        "README.md",
        include_str!("../../templates/plugin/README.md"),
    ),
    (
        "courier.toml",
        include_str!("../../templates/plugin/courier.toml"),
    ),
    (
        "tests/{{name}}.toml",
        include_str!("../../templates/plugin/tests/route.toml"),
    ),
    (
        "messages/adt_a04.hl7",
        include_str!("../../templates/plugin/messages/adt_a04.hl7"),
    ),
    (
        ".gitignore",
        include_str!("../../templates/plugin/gitignore"),
    ),
    // What `courier plugin pack` needs to make a signed package of it (docs/packages.md).
    (
        "courier-plugin.toml",
        include_str!("../../templates/plugin/courier-plugin.toml"),
    ),
    (
        "package-tests/package.toml",
        include_str!("../../templates/plugin/package-tests/package.toml"),
    ),
    // The toolchain Courier is built with, and the plugin target with it.
    (
        "rust-toolchain.toml",
        include_str!("../../../rust-toolchain.toml"),
    ),
];

/// Names cargo refuses or that would shadow a crate every plugin uses.
const RESERVED: &[&str] = &[
    "test",
    "std",
    "core",
    "alloc",
    "proc_macro",
    "build",
    "deps",
    "examples",
    "incremental",
    "courier_plugin_sdk",
    "courier_hl7",
];

/// Rust keywords (a crate's library name must not be one).
const KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "gen", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut",
    "pub", "ref", "return", "self", "static", "struct", "super", "trait", "true", "type", "unsafe",
    "use", "where", "while", "abstract", "become", "box", "do", "final", "macro", "override",
    "priv", "try", "typeof", "unsized", "virtual", "yield",
];

/// Checks a crate name; the error says what is wrong with it.
fn check_name(name: &str) -> anyhow::Result<()> {
    let lib = name.replace('-', "_");
    let problem = if name.is_empty() {
        Some("it is empty".to_owned())
    } else if name.len() > 64 {
        Some("it is longer than 64 characters".to_owned())
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        Some("it must start with a lower-case letter".to_owned())
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        Some(format!(
            "{c:?} is not allowed (lower-case letters, digits, `-` and `_` only)"
        ))
    } else if KEYWORDS.contains(&lib.as_str()) {
        Some("it is a Rust keyword".to_owned())
    } else if RESERVED.contains(&lib.as_str()) {
        Some("the name is reserved (cargo's, or a crate the plugin depends on)".to_owned())
    } else {
        None
    };
    match problem {
        Some(p) => bail!("`{name}` is not a valid plugin crate name: {p}, e.g. `adt-mapping`"),
        None => Ok(()),
    }
}

/// The SDK directory to depend on: `--sdk`, else the source tree this binary was built from.
fn sdk_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let (dir, origin) = match given {
        Some(d) => (d.to_path_buf(), "--sdk"),
        None => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugin-sdk"),
            "the source tree this courier was built from",
        ),
    };
    let manifest = dir.join("Cargo.toml");
    let is_sdk = std::fs::read_to_string(&manifest)
        .is_ok_and(|t| t.contains("name = \"courier-plugin-sdk\""));
    if !is_sdk {
        bail!(
            "no courier-plugin-sdk at {} ({origin}); pass --sdk PATH, the plugin-sdk directory \
             of a Courier source tree",
            dir.display()
        );
    }
    dir.canonicalize()
        .with_context(|| format!("resolving {}", dir.display()))
}

/// Creates the project in `project`; returns the files written, relative to it.
fn new_project(name: &str, project: &Path, sdk: Option<&Path>) -> anyhow::Result<Vec<String>> {
    check_name(name)?;
    if project.exists() {
        let empty = project.is_dir()
            && std::fs::read_dir(project)
                .with_context(|| format!("reading {}", project.display()))?
                .next()
                .is_none();
        if !empty {
            bail!(
                "{} already exists and is not an empty directory; choose another name or --dir",
                project.display()
            );
        }
    }
    let sdk = sdk_dir(sdk)?;
    let sdk_text = sdk
        .to_str()
        .with_context(|| format!("the SDK path {} is not UTF-8", sdk.display()))?;
    // A TOML string, quoted and escaped (Windows paths have backslashes).
    let sdk_toml = toml::Value::String(sdk_text.to_owned()).to_string();
    let lib = name.replace('-', "_");
    let fill = |t: &str| {
        t.replace("{{name}}", name)
            .replace("{{lib_name}}", &lib)
            .replace("{{sdk_path}}", &sdk_toml)
    };
    let mut written = Vec::with_capacity(TEMPLATES.len());
    for (rel, text) in TEMPLATES {
        let rel = fill(rel);
        let path = project.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, fill(text)).with_context(|| format!("writing {}", path.display()))?;
        written.push(rel);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["adt-mapping", "lab_codes2", "x"] {
            check_name(ok).unwrap();
        }
        for (bad, why) in [
            ("", "empty"),
            ("2fast", "lower-case letter"),
            ("Adt", "lower-case letter"),
            ("adt mapping", "' ' is not allowed"),
            ("adt.map", "'.' is not allowed"),
            ("fn", "keyword"),
            ("test", "reserved"),
            ("courier-plugin-sdk", "reserved"),
        ] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        let tmp = tempfile::tempdir().unwrap();
        let project = tmp.path().join("adt-mapping");
        let files = new_project("adt-mapping", &project, None).unwrap();
        assert!(files.contains(&"tests/adt-mapping.toml".to_owned()));
        for f in &files {
            let text = std::fs::read_to_string(project.join(f)).unwrap();
            assert!(!text.contains("{{"), "{f} has an unfilled placeholder");
        }
        let lib = std::fs::read_to_string(project.join("src/lib.rs")).unwrap();
        assert!(lib.contains("fn adt_mapping(msg: &mut Message"), "{lib}");
        // The SDK path is absolute, so the project builds wherever it is moved.
        let manifest: toml::Table =
            toml::from_str(&std::fs::read_to_string(project.join("Cargo.toml")).unwrap()).unwrap();
        let sdk = manifest["dependencies"]["courier-plugin-sdk"]["path"]
            .as_str()
            .unwrap();
        assert!(Path::new(sdk).is_absolute(), "{sdk}");
        assert!(Path::new(sdk).join("src/lib.rs").is_file(), "{sdk}");
    }

    #[test]
    fn refuses_a_non_empty_directory_and_a_missing_sdk() {
        let tmp = tempfile::tempdir().unwrap();
        let project = tmp.path().join("taken");
        std::fs::create_dir(&project).unwrap();
        std::fs::write(project.join("notes.txt"), "mine").unwrap();
        let e = new_project("taken", &project, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("already exists and is not an empty directory"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(project.join("notes.txt")).unwrap(),
            "mine"
        );

        let e = new_project("fresh", &tmp.path().join("fresh"), Some(tmp.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pass --sdk PATH"), "{e}");
        assert!(!tmp.path().join("fresh").exists());
    }
}
