//! `courier plugin keygen | pack | install | list`: signed plugin packages (the format is in
//! `courier::package` and docs/packages.md).
//!
//! `pack` is the vendor's side: build the project's component (or take a built one), write
//! the manifest from Cargo.toml and `courier-plugin.toml`, sign it with a minisign key, and
//! write one `.cpkg` file. `install` is the clinic's: verify, check the WIT version and the
//! capabilities the clinic allows, run the package's own tests in the sandbox from a staging
//! directory, and only then rename it into `DIR/NAME/VERSION`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use courier::config::Config;
use courier::package::{
    self, Capability, Committed, Entry, Manifest, SettingSpec, TestsSpec, Verified,
};
use courier::routetest::{CaseReport, Harness, TestFile};
use serde::Deserialize;

/// `courier-plugin.toml` in a plugin project: what the package adds to the component.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackSpec {
    /// Who makes the plugin.
    vendor: String,
    /// Overrides Cargo.toml's description.
    #[serde(default)]
    description: Option<String>,
    /// Capabilities asked for: `clock`, `random`, `env:NAME`.
    #[serde(default)]
    capabilities: Vec<String>,
    /// The settings schema.
    #[serde(default)]
    settings: BTreeMap<String, SettingSpec>,
    /// The package's own tests.
    #[serde(default)]
    tests: PackTests,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PackTests {
    /// The directory of route-test files (and the messages they name), relative to the
    /// project.
    #[serde(default = "default_tests_dir")]
    dir: PathBuf,
    /// The test route's settings.
    #[serde(default)]
    settings: toml::Table,
    /// Values of the environment variables asked for.
    #[serde(default)]
    env: BTreeMap<String, String>,
}

impl Default for PackTests {
    fn default() -> Self {
        PackTests {
            dir: default_tests_dir(),
            settings: toml::Table::new(),
            env: BTreeMap::new(),
        }
    }
}

fn default_tests_dir() -> PathBuf {
    PathBuf::from("package-tests")
}

/// `courier plugin keygen`
pub fn keygen(out: &Path, no_password: bool) -> anyhow::Result<ExitCode> {
    let sk_path = out.with_extension("key");
    let pk_path = out.with_extension("pub");
    for p in [&sk_path, &pk_path] {
        if p.exists() {
            bail!(
                "{} already exists; keys are never overwritten (choose another --out)",
                p.display()
            );
        }
    }
    let kp = if no_password {
        minisign::KeyPair::generate_unencrypted_keypair()
    } else {
        minisign::KeyPair::generate_encrypted_keypair(std::env::var("COURIER_KEY_PASSWORD").ok())
    }
    .map_err(|e| anyhow::anyhow!("cannot make a key pair: {e}"))?;
    let id = package::key_id(kp.pk.keynum());
    let pk_box = kp
        .pk
        .to_box()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_string();
    let sk_box = kp
        .sk
        .to_box(Some(&format!("courier plugin signing key {id}")))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .into_string();
    write_private(&sk_path, sk_box.as_bytes())?;
    std::fs::write(&pk_path, pk_box.as_bytes())
        .with_context(|| format!("writing {}", pk_path.display()))?;
    println!("secret key: {} (keep it private)", sk_path.display());
    println!("public key: {}", pk_path.display());
    println!("key id: {id}");
    println!(
        "clinics trust it with, in their config:\n  [plugins]\n  trusted_keys = [\"{}\"]",
        kp.pk.to_base64()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

fn load_secret_key(path: &Path) -> anyhow::Result<minisign::SecretKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let sk_box = minisign::SecretKeyBox::from_string(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a minisign secret key: {e}", path.display()))?;
    if let Ok(k) = minisign::SecretKey::from_unencrypted_box(sk_box.clone()) {
        return Ok(k);
    }
    // `minisign -G -W` (the C tool) writes an unencrypted key with an all-zero checksum,
    // which the crate's box reader refuses; the raw reader takes it as it is.
    let raw = text
        .lines()
        .nth(1)
        .and_then(|l| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(l.trim())
                .ok()
        })
        .unwrap_or_default();
    let unencrypted = raw.len() == 158 && raw[2..4] == [0, 0];
    if unencrypted {
        if raw[126..].iter().all(|b| *b == 0) {
            return minisign::SecretKey::from_bytes(&raw)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
        }
        bail!(
            "{}: the unencrypted secret key fails its checksum (corrupted)",
            path.display()
        );
    }
    minisign::SecretKey::from_box(sk_box, std::env::var("COURIER_KEY_PASSWORD").ok())
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The package facts cargo knows about the project.
struct CargoFacts {
    name: String,
    version: String,
    description: String,
    lib_name: String,
    target_dir: PathBuf,
}

fn cargo_facts(project: &Path) -> anyhow::Result<CargoFacts> {
    let manifest = project.join("Cargo.toml");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed for {}:\n{}",
            manifest.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let wanted = manifest
        .canonicalize()
        .with_context(|| format!("resolving {}", manifest.display()))?;
    let pkg = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| {
            p["manifest_path"]
                .as_str()
                .and_then(|m| Path::new(m).canonicalize().ok())
                .is_some_and(|m| m == wanted)
        })
        .with_context(|| format!("{} is not a package's manifest", manifest.display()))?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_owned();
    let lib_name = pkg["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
        })
        .map(|t| s(&t["name"]).replace('-', "_"))
        .with_context(|| {
            format!(
                "{} has no cdylib target: a plugin crate needs crate-type = [\"cdylib\"]",
                manifest.display()
            )
        })?;
    Ok(CargoFacts {
        name: s(&pkg["name"]),
        version: s(&pkg["version"]),
        description: s(&pkg["description"]),
        lib_name,
        target_dir: PathBuf::from(s(&meta["target_directory"])),
    })
}

/// The options of `courier plugin pack`.
pub struct PackArgs {
    /// The plugin project.
    pub project: PathBuf,
    /// The minisign secret key.
    pub key: PathBuf,
    /// Where to write the package.
    pub out: Option<PathBuf>,
    /// A component already built (no cargo build).
    pub wasm: Option<PathBuf>,
    /// cargo's --target-dir.
    pub target_dir: Option<PathBuf>,
    /// Overrides Cargo.toml's version.
    pub version: Option<String>,
}

/// `courier plugin pack`
pub fn pack(a: &PackArgs) -> anyhow::Result<ExitCode> {
    let facts = cargo_facts(&a.project)?;
    let spec_path = a.project.join("courier-plugin.toml");
    let spec_text = std::fs::read_to_string(&spec_path).with_context(|| {
        format!(
            "reading {} (the package's vendor, settings, capabilities and tests; see docs/packages.md)",
            spec_path.display()
        )
    })?;
    let spec: PackSpec = toml::from_str(&spec_text)
        .map_err(|e| anyhow::anyhow!("{}: {}", spec_path.display(), e.message().trim()))?;
    let secret = load_secret_key(&a.key)?;

    let wasm = match &a.wasm {
        Some(w) => w.clone(),
        None => {
            let target_dir = a.target_dir.clone().unwrap_or(facts.target_dir.clone());
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            eprintln!("building {} for wasm32-wasip2 (release)", facts.name);
            let status = Command::new(cargo)
                .args([
                    "build",
                    "--release",
                    "--target",
                    "wasm32-wasip2",
                    "--manifest-path",
                ])
                .arg(a.project.join("Cargo.toml"))
                .arg("--target-dir")
                .arg(&target_dir)
                .status()
                .context("running cargo build")?;
            if !status.success() {
                bail!("cargo build failed; nothing was packed");
            }
            target_dir
                .join("wasm32-wasip2/release")
                .join(format!("{}.wasm", facts.lib_name))
        }
    };
    let component = std::fs::read(&wasm)
        .with_context(|| format!("reading the component {}", wasm.display()))?;

    // Load it once in the sandbox: it must be a Courier component, and its imports say which
    // WIT version it was built for and its exports which entry point it has.
    let (entry, wit) = inspect(&wasm)?;
    let wit =
        wit.unwrap_or_else(|| package::SUPPORTED_WIT[package::SUPPORTED_WIT.len() - 1].to_owned());

    let version = a.version.clone().unwrap_or(facts.version.clone());
    let component_name = format!("{}@{version}.wasm", facts.name);
    let mut files = BTreeMap::new();
    files.insert(component_name.clone(), component);
    let tests_dir = a.project.join(&spec.tests.dir);
    collect_tests(&tests_dir, &tests_dir, &mut files)?;
    if !files
        .keys()
        .any(|f| f.starts_with("tests/") && f.ends_with(".toml"))
    {
        bail!(
            "{} has no test files (*.toml): a package carries its own tests",
            tests_dir.display()
        );
    }
    let manifest = Manifest {
        name: facts.name.clone(),
        version: version.clone(),
        vendor: spec.vendor,
        description: spec.description.unwrap_or(facts.description),
        wit,
        entry,
        component: component_name,
        capabilities: spec.capabilities,
        settings: spec.settings,
        tests: TestsSpec {
            settings: spec.tests.settings,
            env: spec.tests.env,
        },
        files: files
            .iter()
            .map(|(k, v)| (k.clone(), package::sha256_hex(v)))
            .collect(),
    };
    manifest.check().map_err(|e| anyhow::anyhow!("{e}"))?;
    let text = toml::to_string(&manifest)?;
    let signature =
        package::sign_manifest(&secret, &manifest, &text).map_err(anyhow::Error::msg)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{}-{version}.cpkg", facts.name)));
    package::write_package(&out, &text, &signature, &files)?;
    let sig =
        minisign::SignatureBox::from_string(&signature).map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "packed {} ({} files, component sha256 {}) signed with key {} into {}",
        manifest.id(),
        files.len(),
        manifest.files[&manifest.component],
        package::key_id(sig.keynum()),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Compiles and instantiates a component once (no call): its entry point, and the version
/// of Courier's interface its imports name, if any.
fn inspect(wasm: &Path) -> anyhow::Result<(Entry, Option<String>)> {
    use courier_plugin::wasm::{PluginKind, WasmLimits, WasmRuntime, WasmRuntimeConfig};
    let rt = WasmRuntime::new(WasmRuntimeConfig {
        max_instances: 4,
        ..Default::default()
    })?;
    let loaded = rt
        .load(wasm, WasmLimits::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let entry = match loaded.kind() {
        PluginKind::Transform => Entry::Transform,
        PluginKind::Filter => Entry::Filter,
    };
    Ok((entry, loaded.courier_wit_version().map(str::to_owned)))
}

fn collect_tests(
    root: &Path,
    dir: &Path,
    files: &mut BTreeMap<String, Vec<u8>>,
) -> anyhow::Result<()> {
    let rd = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_tests(root, &p, files)?;
        } else if p.is_file() {
            let rel = p.strip_prefix(root).unwrap_or(&p);
            let rel = rel
                .to_str()
                .with_context(|| format!("{} is not a UTF-8 path", p.display()))?
                .replace('\\', "/");
            let data = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            files.insert(format!("tests/{rel}"), data);
        }
    }
    Ok(())
}

/// Runs a staged package's own tests: every `tests/*.toml` through a route named after the
/// plugin, with the manifest's test settings, granted every capability it asks for. Returns
/// each case's report.
pub fn self_test(staged: &Path, v: &Verified) -> anyhow::Result<Vec<CaseReport>> {
    let m = &v.manifest;
    let mut settings = m.tests.settings.clone();
    m.apply_settings(&mut settings)
        .map_err(|e| anyhow::anyhow!("the test settings: {e}"))?;
    let mut grants = toml::Table::new();
    let mut env = toml::Table::new();
    for c in m.capabilities().map_err(|e| anyhow::anyhow!("{e}"))? {
        match c {
            Capability::Clock => {
                grants.insert("clock".into(), true.into());
            }
            Capability::Random => {
                grants.insert("random".into(), true.into());
            }
            Capability::Env(n) => {
                let value = m.tests.env.get(&n).cloned().unwrap_or_default();
                env.insert(n, value.into());
            }
        }
    }
    if !env.is_empty() {
        grants.insert("env".into(), env.into());
    }
    let component = staged.join(&m.component);
    let config_text = format!(
        "[[listener]]\nname = \"package\"\nbind = \"127.0.0.1:0\"\n\n\
         [[destination]]\nname = \"out\"\naddress = \"127.0.0.1:9\"\n\n\
         [[route]]\nname = {name}\ndestinations = [\"out\"]\n\n\
         [[route.step]]\nwasm = {wasm}\nsettings = {settings}\ngrants = {grants}\n",
        name = toml::Value::String(m.name.clone()),
        wasm = toml::Value::String(component.to_string_lossy().into_owned()),
        settings = toml::Value::Table(settings),
        grants = toml::Value::Table(grants),
    );
    let config_path = staged.join(".self-test.toml");
    let config = Config::parse(&config_text, &config_path)
        .map_err(|e| anyhow::anyhow!("setting up the package's tests: {e}"))?;
    let harness = Harness::new(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut reports = Vec::new();
    let mut test_files: Vec<&String> = v
        .files
        .keys()
        .filter(|f| {
            f.strip_prefix("tests/")
                .is_some_and(|r| !r.contains('/') && r.ends_with(".toml"))
        })
        .collect();
    test_files.sort();
    if test_files.is_empty() {
        bail!("the package has no tests (tests/*.toml): a package carries its own tests");
    }
    for f in test_files {
        let file = TestFile::load(&staged.join(f), &config).map_err(|e| anyhow::anyhow!("{e}"))?;
        for case in &file.cases {
            reports.push(harness.run(case));
        }
    }
    Ok(reports)
}

/// `courier plugin install`
pub fn install(package_file: &Path, config: &Path) -> anyhow::Result<ExitCode> {
    let (dir, trusted, allowed) = package::plugins_section(config).map_err(anyhow::Error::msg)?;
    let refuse = |why: String| -> anyhow::Result<ExitCode> {
        eprintln!(
            "refused: {}: {why}\nnothing was installed",
            package_file.display()
        );
        Ok(ExitCode::from(1))
    };
    let pkg = match package::read_package(package_file) {
        Ok(p) => p,
        Err(e) => return refuse(e.to_string()),
    };
    let v = match package::verify(&pkg, &trusted) {
        Ok(v) => v,
        Err(e) => return refuse(e.to_string()),
    };
    let m = &v.manifest;
    println!(
        "{}: signature by trusted key {} is valid; every file matches the signed manifest",
        m.id(),
        v.key_id
    );
    println!("{}: built for courier:plugin@{}, supported", m.id(), m.wit);
    for c in m.capabilities().map_err(|e| anyhow::anyhow!("{e}"))? {
        if !allowed.contains(&c) {
            return refuse(format!(
                "{} asks for the capability `{c}`, which this config does not allow plugins to ask for ([plugins] allow_capabilities = [{}])",
                m.id(),
                allowed
                    .iter()
                    .map(|c| format!("\"{c}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    let staged = package::stage(&dir, &v)?;
    // The component must be what the manifest says it is.
    match inspect(&staged.path.join(&m.component)) {
        Err(e) => return refuse(format!("{e:#}")),
        Ok((entry, _)) if entry != m.entry => {
            return refuse(format!(
                "the manifest says entry = \"{}\", but the component is a {entry}",
                m.entry
            ));
        }
        Ok((_, Some(wit))) if wit != m.wit => {
            return refuse(format!(
                "the manifest says wit = \"{}\", but the component imports courier:plugin@{wit}",
                m.wit
            ));
        }
        Ok(_) => {}
    }
    // The cases that expect an error make the step log a warning; the report says it all.
    let quiet = tracing::subscriber::NoSubscriber::default();
    let reports = match tracing::subscriber::with_default(quiet, || self_test(&staged.path, &v)) {
        Ok(r) => r,
        Err(e) => return refuse(format!("its own tests could not run: {e:#}")),
    };
    let failed: Vec<&CaseReport> = reports.iter().filter(|r| !r.passed).collect();
    if !failed.is_empty() {
        let mut why = format!(
            "its own tests fail: {} of {} cases",
            failed.len(),
            reports.len()
        );
        for r in &failed {
            let file = Path::new(&r.file)
                .strip_prefix(&staged.path)
                .map(|p| p.display().to_string())
                .unwrap_or(r.file.clone());
            why.push_str(&format!("\n  FAILED {file}:{}  {}", r.line, r.name));
            for f in &r.failures {
                why.push_str(&format!("\n         {f}"));
            }
        }
        return refuse(why);
    }
    println!(
        "{}: its own tests pass in the sandbox ({} cases)",
        m.id(),
        reports.len()
    );
    let _ = std::fs::remove_file(staged.path.join(".self-test.toml"));
    match package::commit(&dir, staged, &v) {
        Ok(Committed::Installed(p)) => {
            println!("installed {} in {}", m.id(), p.display());
            Ok(ExitCode::SUCCESS)
        }
        Ok(Committed::AlreadyThere(p)) => {
            println!(
                "{} is already installed, identical, in {}",
                m.id(),
                p.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => refuse(e.to_string()),
    }
}

/// `courier plugin list`
pub fn list(config: &Path) -> anyhow::Result<ExitCode> {
    let (dir, trusted, _) = package::plugins_section(config).map_err(anyhow::Error::msg)?;
    let all = package::installed(&dir, &trusted);
    if all.is_empty() {
        println!("no plugins installed in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut bad = false;
    println!(
        "# {}; this engine runs plugins built for {}",
        dir.display(),
        package::SUPPORTED_WIT
            .iter()
            .map(|v| format!("courier:plugin@{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("NAME\tVERSION\tVENDOR\tKEY\tSHA256\tCAPABILITIES\tWIT\tSTATUS");
    for (name, version, r) in all {
        match r {
            Ok(i) => {
                let caps = if i.manifest.capabilities.is_empty() {
                    "none".to_owned()
                } else {
                    i.manifest.capabilities.join(",")
                };
                println!(
                    "{name}\t{version}\t{}\t{}\t{}\t{caps}\t{}\tok",
                    i.manifest.vendor, i.key_id, i.component_sha256, i.manifest.wit
                );
            }
            Err(e) => {
                bad = true;
                println!("{name}\t{version}\t-\t-\t-\t-\t-\tREFUSED: {e}");
            }
        }
    }
    Ok(if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
