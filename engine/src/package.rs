//! Plugin packages: how a vendor's plugin travels to a clinic and is installed there
//! (docs/packages.md has the format, the commands and the config).
//!
//! A package is one uncompressed tar file holding `manifest.toml`, its minisign signature
//! `manifest.toml.minisig`, the component and the package's own test cases (`tests/...`).
//! The signature covers the manifest only, and the manifest lists the SHA-256 of every other
//! file, so one signature vouches for every byte; a vendor can sign the manifest with the
//! standard `minisign` tool as well as with `courier plugin pack`.
//!
//! This module reads and checks packages ([`read_package`], [`verify`]), writes them
//! ([`write_package`]), installs them into the plugin directory (`DIR/NAME/VERSION/`, staged in
//! a temporary directory and renamed into place) and finds and re-verifies installed ones
//! ([`installed`], [`load_installed`]). Running a package's own tests is the caller's part
//! (it needs the route-test harness): see `cli/plugin.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Cursor, Read};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use courier_plugin::wasm::{SUPPORTED_WIT, check_wit};

/// The name of the manifest inside a package and an installed plugin's directory.
pub const MANIFEST: &str = "manifest.toml";
/// The name of the manifest's minisign signature.
pub const SIGNATURE: &str = "manifest.toml.minisig";

/// The largest package accepted, in bytes.
pub const MAX_PACKAGE_BYTES: u64 = 64 << 20;
/// The most files a package may hold.
pub const MAX_PACKAGE_FILES: usize = 1000;

/// Why a package (or an installed plugin) was refused. Each variant says what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Not a tar file, or one with entries a package may not have.
    #[error("not a valid plugin package: {0}")]
    Container(String),
    /// The package or its signature is missing a required file.
    #[error("the package has no {0}")]
    Missing(String),
    /// The signature file is not a minisign signature.
    #[error("{SIGNATURE} is not a minisign signature: {0}")]
    BadSignatureFile(String),
    /// Signed with a key the config does not trust.
    #[error(
        "signed with key {key_id}, which is not among the trusted keys ({trusted}); add the vendor's public key to [plugins] trusted_keys if you trust it"
    )]
    UnknownSigner {
        /// The signature's key id (16 hex digits, as minisign shows it).
        key_id: String,
        /// The trusted key ids, comma-separated, or "none configured".
        trusted: String,
    },
    /// The signature does not match the manifest: the manifest was changed after signing.
    #[error(
        "the signature of key {key_id} does not match {MANIFEST}: the manifest was changed after it was signed"
    )]
    SignatureMismatch {
        /// The signer's key id.
        key_id: String,
    },
    /// The manifest is not valid.
    #[error("{MANIFEST}: {0}")]
    Manifest(String),
    /// A file's bytes differ from the hash the signed manifest gives.
    #[error(
        "{file} does not match the signed manifest (sha256 {actual}, the manifest says {expected}): the file was changed after signing"
    )]
    Tampered {
        /// The file inside the package.
        file: String,
        /// The hash in the manifest.
        expected: String,
        /// The hash of the bytes found.
        actual: String,
    },
    /// A file in the package the manifest does not list (and so the signature does not cover).
    #[error("{0} is in the package but not in the signed manifest")]
    Unlisted(String),
    /// The plugin targets a WIT version this engine does not support.
    #[error("{0}")]
    Wit(String),
    /// The same name and version is already installed with other content.
    #[error(
        "{name}@{version} is already installed with different content (component sha256 {installed}); an installed version never changes: give the new build a new version"
    )]
    Conflict {
        /// Plugin name.
        name: String,
        /// Version.
        version: String,
        /// The installed component's hash.
        installed: String,
    },
    /// No such plugin version is installed.
    #[error("{name}@{version} is not installed in {dir} (installed versions: {have})")]
    NotInstalled {
        /// Plugin name.
        name: String,
        /// Version.
        version: String,
        /// The plugin directory.
        dir: PathBuf,
        /// The versions that are there.
        have: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackageError + '_ {
    move |source| PackageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What the plugin exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Entry {
    /// `transform`: may change or drop the message.
    Transform,
    /// `filter`: keeps or drops the message.
    Filter,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Entry::Transform => "transform",
            Entry::Filter => "filter",
        })
    }
}

/// A package's manifest (`manifest.toml`), the text the vendor's signature covers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plugin's name: lower-case letters, digits, `-` and `_`.
    pub name: String,
    /// Its version (semver, e.g. `1.2.0`).
    pub version: String,
    /// Who made it.
    pub vendor: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// The version of the plugin interface (`courier:plugin`) it was built for.
    pub wit: String,
    /// Its entry point: `transform` or `filter`.
    pub entry: Entry,
    /// The component's file inside the package.
    pub component: String,
    /// Capabilities it asks for beyond the Courier interface (none by default): `clock`,
    /// `random`, `env:NAME`. A route must grant each of them.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Its settings: name → what values it takes.
    #[serde(default)]
    pub settings: BTreeMap<String, SettingSpec>,
    /// How the package's own tests run.
    #[serde(default)]
    pub tests: TestsSpec,
    /// Every file of the package but the manifest and its signature: path → SHA-256 (hex).
    pub files: BTreeMap<String, String>,
}

/// One setting a plugin takes.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SettingSpec {
    /// `string`, `integer`, `float`, `boolean`, `array` or `table`.
    #[serde(rename = "type")]
    pub kind: SettingType,
    /// A route must give it.
    #[serde(default)]
    pub required: bool,
    /// The value used when a route does not give it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<toml::Value>,
    /// The only values allowed (strings only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub one_of: Vec<String>,
    /// What it means.
    #[serde(default)]
    pub description: String,
}

/// The type of a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SettingType {
    /// A string.
    String,
    /// An integer.
    Integer,
    /// A number.
    Float,
    /// `true` or `false`.
    Boolean,
    /// A list.
    Array,
    /// A table.
    Table,
}

impl SettingType {
    fn accepts(self, v: &toml::Value) -> bool {
        matches!(
            (self, v),
            (SettingType::String, toml::Value::String(_))
                | (SettingType::Integer, toml::Value::Integer(_))
                | (
                    SettingType::Float,
                    toml::Value::Float(_) | toml::Value::Integer(_)
                )
                | (SettingType::Boolean, toml::Value::Boolean(_))
                | (SettingType::Array, toml::Value::Array(_))
                | (SettingType::Table, toml::Value::Table(_))
        )
    }
}

/// How the package's own tests run: the route tests under `tests/`, through a route named
/// after the plugin that has these settings and grants every capability asked for.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TestsSpec {
    /// The settings of the test route.
    #[serde(default)]
    pub settings: toml::Table,
    /// Values for the environment variables asked for (`env:NAME`); absent ones are empty.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// A capability a plugin asks for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Capability {
    /// The real clock.
    Clock,
    /// Real randomness.
    Random,
    /// One environment variable.
    Env(String),
}

impl Capability {
    /// Parses `clock`, `random` or `env:NAME`.
    pub fn parse(s: &str) -> Result<Capability, String> {
        match s {
            "clock" => Ok(Capability::Clock),
            "random" => Ok(Capability::Random),
            _ => match s.strip_prefix("env:") {
                Some(name)
                    if !name.is_empty()
                        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                {
                    Ok(Capability::Env(name.to_owned()))
                }
                _ => Err(format!(
                    "unknown capability `{s}` (known: `clock`, `random`, `env:NAME`; files and network cannot be asked for)"
                )),
            },
        }
    }

    /// How a route grants it, for error messages.
    pub fn grant_hint(&self) -> String {
        match self {
            Capability::Clock => "grants = { clock = true }".into(),
            Capability::Random => "grants = { random = true }".into(),
            Capability::Env(n) => format!("grants = {{ env = {{ {n} = \"...\" }} }}"),
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capability::Clock => f.write_str("clock"),
            Capability::Random => f.write_str("random"),
            Capability::Env(n) => write!(f, "env:{n}"),
        }
    }
}

impl Manifest {
    /// Parses and checks manifest text.
    pub fn parse(text: &str) -> Result<Manifest, PackageError> {
        let m: Manifest =
            toml::from_str(text).map_err(|e| PackageError::Manifest(e.message().to_owned()))?;
        m.check()?;
        Ok(m)
    }

    /// Checks what serde cannot: names, versions, capabilities, settings.
    pub fn check(&self) -> Result<(), PackageError> {
        let bad = |m: String| Err(PackageError::Manifest(m));
        if let Err(e) = check_name(&self.name) {
            return bad(format!("name: {e}"));
        }
        if let Err(e) = semver::Version::parse(&self.version) {
            return bad(format!(
                "version `{}` is not a semver version such as 1.2.0: {e}",
                self.version
            ));
        }
        if self.vendor.trim().is_empty() {
            return bad("vendor is empty".into());
        }
        if semver::Version::parse(&self.wit).is_err() {
            return bad(format!("wit `{}` is not a version such as 0.1.0", self.wit));
        }
        if !self.files.contains_key(&self.component) {
            return bad(format!(
                "component `{}` is not among the files",
                self.component
            ));
        }
        for (path, hash) in &self.files {
            check_entry_path(path).map_err(PackageError::Manifest)?;
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!("files.{path:?}: not a SHA-256 in hex"));
            }
        }
        self.capabilities()?;
        for (name, spec) in &self.settings {
            if let Some(d) = &spec.default {
                spec.check_value(name, d).map_err(PackageError::Manifest)?;
            }
        }
        Ok(())
    }

    /// The capabilities asked for, parsed.
    pub fn capabilities(&self) -> Result<Vec<Capability>, PackageError> {
        self.capabilities
            .iter()
            .map(|c| Capability::parse(c).map_err(PackageError::Manifest))
            .collect()
    }

    /// The first capability asked for that `grants` does not give.
    pub fn check_grants(&self, grants: &crate::config::GrantsConfig) -> Result<(), Capability> {
        for cap in self.capabilities().unwrap_or_default() {
            let granted = match &cap {
                Capability::Clock => grants.clock,
                Capability::Random => grants.random,
                Capability::Env(n) => grants.env.contains_key(n),
            };
            if !granted {
                return Err(cap);
            }
        }
        Ok(())
    }

    /// What a plugin is given: the route's grants, narrowed to what the manifest asked for.
    pub fn narrow_grants(
        &self,
        grants: &crate::config::GrantsConfig,
    ) -> crate::config::GrantsConfig {
        let caps = self.capabilities().unwrap_or_default();
        let mut g = grants.clone();
        g.clock &= caps.contains(&Capability::Clock);
        g.random &= caps.contains(&Capability::Random);
        g.env
            .retain(|n, _| caps.contains(&Capability::Env(n.clone())));
        g
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Checks a route's settings against the schema and fills in the defaults. Errors name
    /// the setting.
    pub fn apply_settings(&self, settings: &mut toml::Table) -> Result<(), String> {
        if !self.settings.is_empty() {
            for k in settings.keys() {
                if !self.settings.contains_key(k) {
                    let known: Vec<&str> = self.settings.keys().map(String::as_str).collect();
                    return Err(format!(
                        "setting `{k}` is not one that {} takes (it takes: {})",
                        self.id(),
                        known.join(", ")
                    ));
                }
            }
        }
        for (name, spec) in &self.settings {
            match settings.get(name) {
                Some(v) => spec.check_value(name, v)?,
                None => match &spec.default {
                    Some(d) => {
                        settings.insert(name.clone(), d.clone());
                    }
                    None if spec.required => {
                        return Err(format!(
                            "{} requires the setting `{name}` ({})",
                            self.id(),
                            spec.description
                        ));
                    }
                    None => {}
                },
            }
        }
        Ok(())
    }
}

impl SettingSpec {
    fn check_value(&self, name: &str, v: &toml::Value) -> Result<(), String> {
        if !self.kind.accepts(v) {
            return Err(format!(
                "setting `{name}` must be of type {:?}, not {}",
                self.kind,
                v.type_str()
            ));
        }
        if !self.one_of.is_empty()
            && let toml::Value::String(s) = v
            && !self.one_of.contains(s)
        {
            return Err(format!(
                "setting `{name}` = {s:?} is not one of {}",
                self.one_of.join(", ")
            ));
        }
        Ok(())
    }
}

/// Checks a plugin name: lower-case letters, digits, `-` and `_`, starting with a letter.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid plugin name (lower-case letters, digits, `-` and `_`, starting with a letter, at most 64)"
        ))
    }
}

/// A trusted vendor key from the config.
#[derive(Clone)]
pub struct TrustedKey {
    key: minisign::PublicKey,
    /// Its key id, 16 upper-case hex digits as minisign prints it.
    pub id: String,
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustedKey({})", self.id)
    }
}

impl PartialEq for TrustedKey {
    fn eq(&self, other: &Self) -> bool {
        self.key.to_base64() == other.key.to_base64()
    }
}

impl TrustedKey {
    /// Parses a public key: the base64 line of a minisign `.pub` file (`RW...`), or the whole
    /// file's text.
    pub fn parse(text: &str) -> Result<TrustedKey, String> {
        let line = text
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .unwrap_or("");
        let key = minisign::PublicKey::from_base64(line)
            .map_err(|e| format!("not a minisign public key ({e})"))?;
        Ok(TrustedKey {
            id: key_id(key.keynum()),
            key,
        })
    }
}

/// A key id as minisign prints it: the 8 bytes as a little-endian number in hex.
pub fn key_id(keynum: &[u8]) -> String {
    let mut b = [0u8; 8];
    let n = keynum.len().min(8);
    b[..n].copy_from_slice(&keynum[..n]);
    format!("{:016X}", u64::from_le_bytes(b))
}

/// SHA-256 in hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A package's files as read: path → bytes.
#[derive(Debug, Clone)]
pub struct Package {
    /// Every file, the manifest and the signature included.
    pub files: BTreeMap<String, Vec<u8>>,
}

/// A package whose signature and files were checked.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The manifest.
    pub manifest: Manifest,
    /// The key that signed it.
    pub key_id: String,
    /// The component's SHA-256.
    pub component_sha256: String,
    /// Every file.
    pub files: BTreeMap<String, Vec<u8>>,
}

fn check_entry_path(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && !path.contains('\\')
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{path}` is not a plain relative path inside the package"
        ))
    }
}

/// Reads a package file into memory, refusing anything but plain files at plain relative
/// paths, and more than [`MAX_PACKAGE_BYTES`] or [`MAX_PACKAGE_FILES`].
pub fn read_package(path: &Path) -> Result<Package, PackageError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.len() > MAX_PACKAGE_BYTES {
        return Err(PackageError::Container(format!(
            "{} bytes, more than the limit of {MAX_PACKAGE_BYTES}",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(io(path))?;
    parse_package(&bytes)
}

/// Reads a package from its bytes.
pub fn parse_package(bytes: &[u8]) -> Result<Package, PackageError> {
    let bad = |m: String| PackageError::Container(m);
    let mut archive = tar::Archive::new(Cursor::new(bytes));
    let mut files = BTreeMap::new();
    for entry in archive
        .entries()
        .map_err(|e| bad(format!("not a tar file: {e}")))?
    {
        let mut entry = entry.map_err(|e| bad(format!("not a tar file: {e}")))?;
        let kind = entry.header().entry_type();
        let path = entry
            .path()
            .map_err(|e| bad(format!("an entry's path: {e}")))?
            .to_str()
            .ok_or_else(|| bad("an entry's path is not UTF-8".into()))?
            .trim_start_matches("./")
            .to_owned();
        if kind.is_dir() {
            continue;
        }
        if !kind.is_file() {
            return Err(bad(format!("`{path}` is not a plain file")));
        }
        check_entry_path(&path).map_err(bad)?;
        if files.len() >= MAX_PACKAGE_FILES {
            return Err(bad(format!("more than {MAX_PACKAGE_FILES} files")));
        }
        let mut data = Vec::new();
        (&mut entry)
            .take(MAX_PACKAGE_BYTES)
            .read_to_end(&mut data)
            .map_err(|e| bad(format!("`{path}`: {e}")))?;
        if files.insert(path.clone(), data).is_some() {
            return Err(bad(format!("`{path}` appears twice")));
        }
    }
    if files.is_empty() {
        return Err(bad("not a tar file, or an empty one".into()));
    }
    Ok(Package { files })
}

/// Writes a package: the manifest, its signature and the files, in a fixed order.
pub fn write_package(
    out: &Path,
    manifest_text: &str,
    signature: &str,
    files: &BTreeMap<String, Vec<u8>>,
) -> Result<(), PackageError> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder
            .append_data(&mut header, path, data)
            .map_err(io(out))
    };
    add(MANIFEST, manifest_text.as_bytes())?;
    add(SIGNATURE, signature.as_bytes())?;
    for (path, data) in files {
        add(path, data)?;
    }
    let bytes = builder.into_inner().map_err(io(out))?;
    write_atomic(out, &bytes)
}

/// Writes a file through a temporary file beside it and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PackageError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// Signs manifest text with a minisign secret key; the trusted comment names the plugin.
pub fn sign_manifest(
    secret: &minisign::SecretKey,
    manifest: &Manifest,
    text: &str,
) -> Result<String, String> {
    let trusted = format!(
        "courier plugin package {} component sha256:{}",
        manifest.id(),
        manifest
            .files
            .get(&manifest.component)
            .map(String::as_str)
            .unwrap_or("")
    );
    let sig = minisign::sign(
        None,
        secret,
        Cursor::new(text.as_bytes()),
        Some(&trusted),
        Some("signature of a Courier plugin manifest"),
    )
    .map_err(|e| format!("signing failed: {e}"))?;
    Ok(sig.into_string())
}

/// Checks a package: the signature against the trusted keys, the manifest, every file's hash
/// against the manifest, no file the manifest does not list, and the WIT version.
pub fn verify(pkg: &Package, trusted: &[TrustedKey]) -> Result<Verified, PackageError> {
    let manifest_bytes = pkg
        .files
        .get(MANIFEST)
        .ok_or_else(|| PackageError::Missing(MANIFEST.into()))?;
    let sig_bytes = pkg
        .files
        .get(SIGNATURE)
        .ok_or_else(|| PackageError::Missing(format!("signature ({SIGNATURE})")))?;
    let key_id = verify_signature(manifest_bytes, sig_bytes, trusted)?;
    let text = std::str::from_utf8(manifest_bytes)
        .map_err(|_| PackageError::Manifest("not UTF-8".into()))?;
    let manifest = Manifest::parse(text)?;
    for (path, expected) in &manifest.files {
        let data = pkg
            .files
            .get(path)
            .ok_or_else(|| PackageError::Missing(format!("{path}, which the manifest lists")))?;
        let actual = sha256_hex(data);
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(PackageError::Tampered {
                file: path.clone(),
                expected: expected.clone(),
                actual,
            });
        }
    }
    for path in pkg.files.keys() {
        if path != MANIFEST && path != SIGNATURE && !manifest.files.contains_key(path) {
            return Err(PackageError::Unlisted(path.clone()));
        }
    }
    check_wit(&manifest.wit).map_err(|e| PackageError::Wit(format!("{}: {e}", manifest.id())))?;
    Ok(Verified {
        component_sha256: manifest.files[&manifest.component].to_ascii_lowercase(),
        key_id,
        manifest,
        files: pkg.files.clone(),
    })
}

/// Verifies a minisign signature of `data` against the trusted keys; the signer's key id.
pub fn verify_signature(
    data: &[u8],
    sig: &[u8],
    trusted: &[TrustedKey],
) -> Result<String, PackageError> {
    let sig_text =
        std::str::from_utf8(sig).map_err(|_| PackageError::BadSignatureFile("not UTF-8".into()))?;
    let sig = minisign::SignatureBox::from_string(sig_text)
        .map_err(|e| PackageError::BadSignatureFile(e.to_string()))?;
    let key_id = key_id(sig.keynum());
    let Some(key) = trusted.iter().find(|k| k.id == key_id) else {
        let ids: Vec<&str> = trusted.iter().map(|k| k.id.as_str()).collect();
        return Err(PackageError::UnknownSigner {
            key_id,
            trusted: if ids.is_empty() {
                "none configured".into()
            } else {
                ids.join(", ")
            },
        });
    };
    // Legacy (non-prehashed) signatures are accepted: `minisign -S -l` makes them.
    minisign::verify(&key.key, &sig, Cursor::new(data), true, false, true).map_err(|_| {
        PackageError::SignatureMismatch {
            key_id: key_id.clone(),
        }
    })?;
    Ok(key_id)
}

/// An installed plugin version, re-verified.
#[derive(Debug, Clone, PartialEq)]
pub struct Installed {
    /// Its directory, `DIR/NAME/VERSION`.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The key that signed it.
    pub key_id: String,
    /// The component's SHA-256 (hex), as the signed manifest gives it.
    pub component_sha256: String,
}

impl Installed {
    /// The component file.
    pub fn component(&self) -> PathBuf {
        self.dir.join(&self.manifest.component)
    }
}

/// Where `name@version` lives in `dir`.
pub fn version_dir(dir: &Path, name: &str, version: &str) -> PathBuf {
    dir.join(name).join(version)
}

/// Splits `name@version`.
pub fn parse_ref(s: &str) -> Result<(String, String), String> {
    let Some((name, version)) = s.split_once('@') else {
        return Err(format!(
            "`{s}` does not name a version: write NAME@VERSION, e.g. adt-emr@1.2.0"
        ));
    };
    check_name(name)?;
    semver::Version::parse(version)
        .map_err(|e| format!("`{version}` in `{s}` is not a version: {e}"))?;
    Ok((name.to_owned(), version.to_owned()))
}

/// Loads and re-verifies an installed version: the signature against the trusted keys, every
/// file's hash, and the WIT version.
pub fn load_installed(
    dir: &Path,
    name: &str,
    version: &str,
    trusted: &[TrustedKey],
) -> Result<Installed, PackageError> {
    let vdir = version_dir(dir, name, version);
    if !vdir.join(MANIFEST).is_file() {
        let mut have: Vec<String> = std::fs::read_dir(dir.join(name))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.path().join(MANIFEST).is_file())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        have.sort();
        return Err(PackageError::NotInstalled {
            name: name.into(),
            version: version.into(),
            dir: dir.to_owned(),
            have: if have.is_empty() {
                "none".into()
            } else {
                have.join(", ")
            },
        });
    }
    let mut pkg = Package {
        files: BTreeMap::new(),
    };
    for f in [MANIFEST, SIGNATURE] {
        let p = vdir.join(f);
        pkg.files
            .insert(f.to_owned(), std::fs::read(&p).map_err(io(&p))?);
    }
    let text = String::from_utf8_lossy(&pkg.files[MANIFEST]).into_owned();
    let manifest = Manifest::parse(&text)?;
    for path in manifest.files.keys() {
        let p = vdir.join(path);
        pkg.files
            .insert(path.clone(), std::fs::read(&p).map_err(io(&p))?);
    }
    let v = verify(&pkg, trusted)?;
    if v.manifest.name != name || v.manifest.version != version {
        return Err(PackageError::Manifest(format!(
            "{} holds {}, not {name}@{version}",
            vdir.display(),
            v.manifest.id()
        )));
    }
    Ok(Installed {
        dir: vdir,
        manifest: v.manifest,
        key_id: v.key_id,
        component_sha256: v.component_sha256,
    })
}

/// Every installed version in `dir`, by name then version; each re-verified (a version that
/// fails is listed with its error).
pub fn installed(
    dir: &Path,
    trusted: &[TrustedKey],
) -> Vec<(String, String, Result<Installed, PackageError>)> {
    let mut out = Vec::new();
    let Ok(names) = std::fs::read_dir(dir) else {
        return out;
    };
    for n in names.filter_map(|e| e.ok()) {
        let name = n.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !n.path().is_dir() {
            continue;
        }
        let Ok(versions) = std::fs::read_dir(n.path()) else {
            continue;
        };
        for v in versions.filter_map(|e| e.ok()) {
            let version = v.file_name().to_string_lossy().into_owned();
            if version.starts_with('.') || !v.path().is_dir() {
                continue;
            }
            let r = load_installed(dir, &name, &version, trusted);
            out.push((name.clone(), version, r));
        }
    }
    out.sort_by(|a, b| {
        (a.0.as_str(), semver::Version::parse(&a.1).ok())
            .cmp(&(b.0.as_str(), semver::Version::parse(&b.1).ok()))
    });
    out
}

/// A verified package written out into a fresh staging directory inside `dir` (so the final
/// rename stays on one file system). Dropping it removes what is left of it.
pub struct Staged {
    /// The staging directory.
    pub path: PathBuf,
    done: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Writes the package's files into a staging directory under `dir`.
pub fn stage(dir: &Path, v: &Verified) -> Result<Staged, PackageError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let dir = &dir.canonicalize().map_err(io(dir))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = dir.join(format!(
        ".staging-{}-{}-{nanos}",
        v.manifest.id(),
        std::process::id()
    ));
    std::fs::create_dir(&path).map_err(io(&path))?;
    let staged = Staged { path, done: false };
    for (rel, data) in &v.files {
        let p = staged.path.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&p, data).map_err(io(&p))?;
    }
    Ok(staged)
}

/// What [`commit`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// Newly installed.
    Installed(PathBuf),
    /// The very same package was installed already.
    AlreadyThere(PathBuf),
}

/// Moves a staged (and tested) package into `DIR/NAME/VERSION` with one rename. A version
/// already there is never overwritten.
pub fn commit(dir: &Path, mut staged: Staged, v: &Verified) -> Result<Committed, PackageError> {
    let m = &v.manifest;
    let target = version_dir(dir, &m.name, &m.version);
    if target.exists() {
        let existing = std::fs::read(target.join(MANIFEST)).unwrap_or_default();
        if existing == v.files[MANIFEST] {
            return Ok(Committed::AlreadyThere(target));
        }
        let installed = Manifest::parse(&String::from_utf8_lossy(&existing))
            .ok()
            .and_then(|im| im.files.get(&im.component).cloned())
            .unwrap_or_else(|| "unknown".into());
        return Err(PackageError::Conflict {
            name: m.name.clone(),
            version: m.version.clone(),
            installed,
        });
    }
    let parent = dir.join(&m.name);
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    std::fs::rename(&staged.path, &target).map_err(io(&target))?;
    staged.done = true;
    Ok(Committed::Installed(target))
}

/// The `[plugins]` table of a config file, read on its own (so `courier plugin install` works
/// with a config whose routes name versions not installed yet).
pub fn plugins_section(
    config: &Path,
) -> Result<(PathBuf, Vec<TrustedKey>, Vec<Capability>), String> {
    #[derive(Deserialize)]
    struct Outer {
        #[serde(default)]
        plugins: crate::config::PluginsConfig,
    }
    let text = std::fs::read_to_string(config)
        .map_err(|e| format!("cannot read {}: {e}", config.display()))?;
    let outer: Outer = toml::from_str(&text)
        .map_err(|e| format!("{}: [plugins]: {}", config.display(), e.message().trim()))?;
    let base = config.parent().unwrap_or(Path::new(""));
    let dir = base.join(outer.plugins.dir.get_ref());
    let keys = outer
        .plugins
        .trusted_keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            TrustedKey::parse(k.get_ref())
                .map_err(|e| format!("{}: plugins.trusted_keys[{i}]: {e}", config.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let allowed = outer
        .plugins
        .allow_capabilities
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Capability::parse(c.get_ref())
                .map_err(|e| format!("{}: plugins.allow_capabilities[{i}]: {e}", config.display()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((dir, keys, allowed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_versions_are_checked() {
        check_wit("0.1.0").unwrap();
        check_wit("0.1.1").unwrap();
        let e = check_wit("0.2.0").unwrap_err();
        assert!(e.contains("courier:plugin@0.2.0"), "{e}");
        assert!(e.contains("supports courier:plugin@0.1.1"), "{e}");
        check_wit("1.0.0").unwrap_err();
        check_wit("0.0.9").unwrap_err();
    }

    #[test]
    fn capabilities_parse() {
        assert_eq!(Capability::parse("clock"), Ok(Capability::Clock));
        assert_eq!(
            Capability::parse("env:TZ"),
            Ok(Capability::Env("TZ".into()))
        );
        assert!(
            Capability::parse("network")
                .unwrap_err()
                .contains("unknown")
        );
        assert!(Capability::parse("env:").is_err());
    }

    #[test]
    fn refs_parse() {
        assert_eq!(
            parse_ref("adt-emr@1.2.0").unwrap(),
            ("adt-emr".into(), "1.2.0".into())
        );
        assert!(parse_ref("adt-emr").unwrap_err().contains("NAME@VERSION"));
        assert!(parse_ref("adt-emr@one").is_err());
        assert!(parse_ref("../x@1.0.0").is_err());
    }

    #[test]
    fn signatures_sign_and_verify() {
        let kp = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let trusted = TrustedKey::parse(&kp.pk.to_box().unwrap().into_string()).unwrap();
        let other = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let other = TrustedKey::parse(&other.pk.to_base64()).unwrap();
        let m = Manifest::parse(
            "name = \"x\"\nversion = \"1.0.0\"\nvendor = \"v\"\nwit = \"0.1.0\"\nentry = \"filter\"\ncomponent = \"x.wasm\"\n[files]\n\"x.wasm\" = \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
        )
        .unwrap();
        let text = toml::to_string(&m).unwrap();
        let sig = sign_manifest(&kp.sk, &m, &text).unwrap();
        let id = verify_signature(
            text.as_bytes(),
            sig.as_bytes(),
            std::slice::from_ref(&trusted),
        )
        .unwrap();
        assert_eq!(id, trusted.id);
        let changed = text.replace("1.0.0", "1.0.1");
        assert!(matches!(
            verify_signature(changed.as_bytes(), sig.as_bytes(), &[trusted]),
            Err(PackageError::SignatureMismatch { .. })
        ));
        assert!(matches!(
            verify_signature(text.as_bytes(), sig.as_bytes(), &[other]),
            Err(PackageError::UnknownSigner { .. })
        ));
    }
}
