//! Signed plugin packages through the real `courier` binary: `keygen`, `pack`, `install`,
//! `list`, a route naming `adt-emr@VERSION`, `replay` against stored messages, and a rollback
//! (a config switch back, hot-reloaded) while messages flow over real MLLP on 127.0.0.1.
//!
//! The component is the real `adt-emr` plugin of plugins/; the two versions that differ are
//! the same component with a different default in the package's settings schema (1.1.0
//! writes phone numbers as E.164), which is the kind of change a vendor ships.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn courier(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(args)
        .output()
        .expect("courier runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "$ courier {}\n--- stdout\n{stdout}--- stderr\n{stderr}",
        args.join(" ")
    );
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn component() -> PathBuf {
    repo().join("target/wasm-plugins/wasm32-wasip2/release/adt_emr.wasm")
}

/// A key pair made by `courier plugin keygen`: (secret key path, public key line, key id).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String, String) {
    let out = dir.join(name);
    let (code, stdout, _) = courier(&["plugin", "keygen", "--out", s(&out), "--no-password"]);
    assert_eq!(code, 0);
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("key id: "))
        .unwrap()
        .to_owned();
    let public = std::fs::read_to_string(out.with_extension("pub")).unwrap();
    let line = public.lines().last().unwrap().trim().to_owned();
    (out.with_extension("key"), line, id)
}

/// A copy of plugins/adt-emr's package files (courier-plugin.toml, package-tests/) in a
/// project of its own at `version`, with `spec` and `tests` applied to their text, packed
/// from the already built component with `key`.
fn pack_variant(
    dir: &Path,
    version: &str,
    key: &Path,
    spec: impl Fn(String) -> String,
    tests: impl Fn(String) -> String,
) -> PathBuf {
    let src = repo().join("plugins/adt-emr");
    let project = dir.join(format!("project-{version}"));
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::create_dir_all(project.join("package-tests/messages")).unwrap();
    std::fs::write(project.join("src/lib.rs"), "").unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        format!(
            "[package]\nname = \"adt-emr\"\nversion = \"{version}\"\nedition = \"2024\"\n\
             description = \"ADT for the EMR\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[workspace]\n"
        ),
    )
    .unwrap();
    let text = std::fs::read_to_string(src.join("courier-plugin.toml")).unwrap();
    std::fs::write(project.join("courier-plugin.toml"), spec(text)).unwrap();
    let text = std::fs::read_to_string(src.join("package-tests/mapping.toml")).unwrap();
    std::fs::write(project.join("package-tests/mapping.toml"), tests(text)).unwrap();
    std::fs::copy(
        src.join("package-tests/messages/adt_a04_sarah.hl7"),
        project.join("package-tests/messages/adt_a04_sarah.hl7"),
    )
    .unwrap();
    let out = dir.join(format!("adt-emr-{version}-{}.cpkg", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let (code, _, _) = courier(&[
        "plugin",
        "pack",
        s(&project),
        "--key",
        s(key),
        "--wasm",
        s(&component()),
        "--out",
        s(&out),
    ]);
    assert_eq!(code, 0);
    out
}

fn plugins_config(trusted: &str, allow: &str) -> String {
    format!(
        "[plugins]\ndir = \"installed\"\ntrusted_keys = [\"{trusted}\"]\nallow_capabilities = [{allow}]\n"
    )
}

/// Everything in the plugin directory, staging leftovers included.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Changes one byte of `bytes` at the first occurrence of `needle` plus `offset`.
fn flip(bytes: &mut [u8], needle: &[u8], offset: usize) {
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in the package")
        + offset;
    bytes[at] ^= 0x01;
}

#[test]
fn refused_packages_install_nothing_and_a_valid_one_installs() {
    build_plugins();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (vendor_key, vendor_pub, vendor_id) = keygen(dir, "vendor");
    let (stranger_key, _, stranger_id) = keygen(dir, "stranger");
    let config = dir.join("courier.toml");
    std::fs::write(&config, plugins_config(&vendor_pub, "")).unwrap();
    let installed = dir.join("installed");

    // The vendor's way: pack builds the real project. In a target directory of its own: a
    // build of one member of plugins/ may differ from the workspace's build that the other
    // tests read, and must not replace it under them.
    let good = dir.join("adt-emr-1.0.0.cpkg");
    let (code, stdout, _) = courier(&[
        "plugin",
        "pack",
        s(&repo().join("plugins/adt-emr")),
        "--key",
        s(&vendor_key),
        "--target-dir",
        s(&repo().join("target/wasm-pack-test")),
        "--package-version",
        "1.0.0",
        "--out",
        s(&good),
    ]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains(&format!("signed with key {vendor_id}")),
        "{stdout}"
    );
    let good_bytes = std::fs::read(&good).unwrap();
    let install = |pkg: &Path| courier(&["plugin", "install", s(pkg), "--config", s(&config)]);
    let refused = |pkg: &Path, why: &[&str]| {
        let (code, _, stderr) = install(pkg);
        assert_eq!(code, 1, "{stderr}");
        for w in why {
            assert!(stderr.contains(w), "expected {w:?} in:\n{stderr}");
        }
        assert!(stderr.contains("nothing was installed"), "{stderr}");
        let left = tree(&installed);
        assert!(
            left.iter()
                .all(|p| !p.contains("1.0.0") && !p.contains(".staging")),
            "{left:?}"
        );
    };

    // One byte of the component changed.
    let mut bytes = good_bytes.clone();
    flip(&mut bytes, b"\0asm", 4096);
    let tampered = dir.join("tampered-component.cpkg");
    std::fs::write(&tampered, &bytes).unwrap();
    refused(
        &tampered,
        &[
            "adt-emr@1.0.0.wasm does not match the signed manifest",
            "changed after signing",
        ],
    );

    // One byte of the manifest changed.
    let mut bytes = good_bytes.clone();
    flip(&mut bytes, b"vendor = \"Courier examples\"", 12);
    let tampered = dir.join("tampered-manifest.cpkg");
    std::fs::write(&tampered, &bytes).unwrap();
    refused(
        &tampered,
        &[
            &format!("the signature of key {vendor_id} does not match manifest.toml"),
            "the manifest was changed after it was signed",
        ],
    );

    // Signed by a key the config does not trust.
    let unknown = pack_variant(dir, "1.0.0", &stranger_key, |t| t, |t| t);
    refused(
        &unknown,
        &[&format!(
            "signed with key {stranger_id}, which is not among the trusted keys ({vendor_id})"
        )],
    );

    // Its own tests fail (an expectation the plugin does not meet).
    let failing = pack_variant(
        dir,
        "1.0.0",
        &vendor_key,
        |t| t,
        |t| {
            t.replace(
                "\"PID-5[1].1\" = \"JOHNSON\"",
                "\"PID-5[1].1\" = \"Johnson\"",
            )
        },
    );
    refused(
        &failing,
        &[
            "its own tests fail: 1 of 2 cases",
            "FAILED tests/mapping.toml:4",
            "PID-5[1].1",
        ],
    );

    // Asks for a capability the clinic does not let plugins ask for.
    let clock = pack_variant(
        dir,
        "1.0.0",
        &vendor_key,
        |t| t.replace("capabilities = []", "capabilities = [\"clock\"]"),
        |t| t,
    );
    refused(
        &clock,
        &["adt-emr@1.0.0 asks for the capability `clock`, which this config does not allow"],
    );

    // Built for an interface version this engine does not have (validly signed).
    let future = resign(&good, &vendor_key, dir, "future", |t| {
        t.replace("wit = \"0.1.1\"", "wit = \"0.2.0\"")
    });
    refused(
        &future,
        &[
            "built for courier:plugin@0.2.0, which this engine does not support: it supports courier:plugin@0.1.1",
        ],
    );
    // A manifest that misstates the component's entry point (validly signed).
    let filter = resign(&good, &vendor_key, dir, "filter", |t| {
        t.replace("entry = \"transform\"", "entry = \"filter\"")
    });
    refused(
        &filter,
        &["the manifest says entry = \"filter\", but the component is a transform"],
    );
    assert!(tree(&installed).iter().all(|p| !p.contains("adt-emr/")));

    // The genuine package installs; installing it again changes nothing.
    let (code, stdout, _) = install(&good);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("its own tests pass in the sandbox (2 cases)"),
        "{stdout}"
    );
    assert!(stdout.contains("installed adt-emr@1.0.0"), "{stdout}");
    let (code, stdout, _) = install(&good);
    assert_eq!(code, 0);
    assert!(stdout.contains("already installed, identical"), "{stdout}");
    // Same version, other content: refused, the installed one untouched.
    let (code, _, stderr) = install(&unknown_but_trusted(dir, &vendor_key));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("adt-emr@1.0.0 is already installed with different content"),
        "{stderr}"
    );

    let sha = courier::package::sha256_hex(
        &std::fs::read(repo().join("target/wasm-pack-test/wasm32-wasip2/release/adt_emr.wasm"))
            .unwrap(),
    );
    let (code, stdout, _) = courier(&["plugin", "list", "--config", s(&config)]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains(&format!(
            "adt-emr\t1.0.0\tCourier examples\t{vendor_id}\t{sha}\tnone\t0.1.1\tok"
        )),
        "{stdout}"
    );

    // A route names it; a changed installed component is caught at load and by list.
    let route = |extra: &str, plugin: &str| {
        format!(
            "{}\n[[listener]]\nname = \"in\"\nbind = \"127.0.0.1:0\"\n\n[[destination]]\nname = \"emr\"\naddress = \"127.0.0.1:9\"\n\n[[route]]\nname = \"reg\"\ndestinations = [\"emr\"]\n  [[route.step]]\n  plugin = \"{plugin}\"\n  settings = {{ assigning_authority = \"RIVERSIDE\" }}\n{extra}",
            plugins_config(&vendor_pub, "\"clock\"")
        )
    };
    std::fs::write(&config, route("", "adt-emr@1.0.0")).unwrap();
    let (code, _, _) = courier(&["check", s(&config)]);
    assert_eq!(code, 0);
    std::fs::write(&config, route("", "adt-emr@1.2.0")).unwrap();
    let (code, _, stderr) = courier(&["check", s(&config)]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("route[0].step[0].plugin: adt-emr@1.2.0 is not installed")
            && stderr.contains("installed versions: 1.0.0"),
        "{stderr}"
    );
    let wasm = installed.join("adt-emr/1.0.0/adt-emr@1.0.0.wasm");
    let original = std::fs::read(&wasm).unwrap();
    let mut changed = original.clone();
    changed[5000] ^= 0x01;
    std::fs::write(&wasm, &changed).unwrap();
    std::fs::write(&config, route("", "adt-emr@1.0.0")).unwrap();
    let (code, _, stderr) = courier(&["check", s(&config)]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("adt-emr@1.0.0.wasm does not match the signed manifest"),
        "{stderr}"
    );
    let (code, stdout, _) = courier(&["plugin", "list", "--config", s(&config)]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("adt-emr\t1.0.0\t-") && stdout.contains("REFUSED"),
        "{stdout}"
    );
    std::fs::write(&wasm, &original).unwrap();

    // A capability the manifest asks for must be granted by the route, else the route is
    // refused at load with the file, line and key.
    let clock = pack_variant(
        dir,
        "1.0.1",
        &vendor_key,
        |t| t.replace("capabilities = []", "capabilities = [\"clock\"]"),
        |t| t,
    );
    let (code, _, _) = install(&clock);
    assert_eq!(code, 0);
    std::fs::write(&config, route("", "adt-emr@1.0.1")).unwrap();
    let (code, _, stderr) = courier(&["check", s(&config)]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("courier.toml:17: route[0].step[0].grants: plugin adt-emr@1.0.1 asks for the capability `clock`, which this route does not grant"),
        "{stderr}"
    );
    std::fs::write(
        &config,
        route("  grants = { clock = true }\n", "adt-emr@1.0.1"),
    )
    .unwrap();
    let (code, _, stderr) = courier(&["check", s(&config)]);
    assert_eq!(code, 0, "{stderr}");
}

/// `package` with its manifest edited by `edit` and signed again with `key`.
fn resign(
    package: &Path,
    key: &Path,
    dir: &Path,
    name: &str,
    edit: impl Fn(String) -> String,
) -> PathBuf {
    let pkg = courier::package::read_package(package).unwrap();
    let text = edit(String::from_utf8(pkg.files["manifest.toml"].clone()).unwrap());
    let m = courier::package::Manifest::parse(&text).unwrap();
    let sk = minisign::SecretKey::from_unencrypted_box(
        minisign::SecretKeyBox::from_string(&std::fs::read_to_string(key).unwrap()).unwrap(),
    )
    .unwrap();
    let sig = courier::package::sign_manifest(&sk, &m, &text).unwrap();
    let mut files = pkg.files.clone();
    files.remove("manifest.toml");
    files.remove("manifest.toml.minisig");
    let out = dir.join(format!("{name}.cpkg"));
    courier::package::write_package(&out, &text, &sig, &files).unwrap();
    out
}

/// A package of adt-emr 1.0.0 signed by the trusted vendor but with other content (its
/// description differs), for the "versions never change" check.
fn unknown_but_trusted(dir: &Path, key: &Path) -> PathBuf {
    pack_variant(
        dir,
        "1.0.0",
        key,
        |t| {
            t.replace(
                "vendor = \"Courier examples\"",
                "vendor = \"Courier examples\"\ndescription = \"rebuilt\"",
            )
        },
        |t| t,
    )
}

/// Waits until the engine logged `msg` `n` times.
fn wait_logged(p: &Proc, msg: &str, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = p
            .stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["message"] == msg)
            })
            .count();
        if seen >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} × `{msg}` not logged:\n{}",
            p.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sarah(control_id: &str) -> Vec<u8> {
    let text = String::from_utf8(example("adt_a04_sarah.hl7")).unwrap();
    text.replace("REG20261124083012001", control_id)
        .replace("\r\n", "\r")
        .replace('\n', "\r")
        .into_bytes()
}

#[test]
fn a_package_serves_replays_a_change_and_rolls_back_under_traffic() {
    build_plugins();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (key, public, _) = keygen(dir, "vendor");
    let config_path = dir.join("courier.toml");
    std::fs::write(&config_path, plugins_config(&public, "")).unwrap();
    let v1 = pack_variant(dir, "1.0.0", &key, |t| t, |t| t);
    // 1.1.0: the vendor changed the mapping's default phone format to E.164.
    let v2 = pack_variant(
        dir,
        "1.1.0",
        &key,
        |t| t.replace("default = \"us\"", "default = \"e164\""),
        |t| t,
    );
    for p in [&v1, &v2] {
        let (code, _, _) = courier(&["plugin", "install", s(p), "--config", s(&config_path)]);
        assert_eq!(code, 0);
    }

    let out = dir.join("emr-out");
    let (_emr, emr) = standin("emr", &out, 0, &[]);
    let config = |version: &str| {
        format!(
            "{}\n[engine]\nreload_debounce = \"200ms\"\n\n[[listener]]\nname = \"in\"\nbind = \"127.0.0.1:0\"\nack_policy = \"after-processing\"\n\n[[destination]]\nname = \"emr\"\naddress = \"{emr}\"\n\n[[route]]\nname = \"reg\"\ndestinations = [\"emr\"]\n  [[route.step]]\n  plugin = \"adt-emr@{version}\"\n  settings = {{ assigning_authority = \"RIVERSIDE\" }}\n",
            plugins_config(&public, "")
        )
    };
    let (engine, addr) = start_engine(dir, &config("1.0.0"), "in");

    // 1.0.0 serves: the clinic's MRN only, names upper-cased, US phone format.
    let mut c = Mllp::connect(addr);
    for i in 0..3 {
        let ack = c.request(&sarah(&format!("FIRST{i}")));
        assert_eq!(field(&ack, "MSA", 1), "AA");
    }
    let files = wait_files(&out, 3, WAIT);
    for f in &files {
        assert_eq!(field(f, "PID", 3), "100234^^^RIVERSIDE^MR");
        assert!(
            field(f, "PID", 5).starts_with("JOHNSON^SARAH"),
            "{:?}",
            field(f, "PID", 5)
        );
        assert!(
            field(f, "PID", 13).starts_with("(217)555-0142"),
            "{}",
            field(f, "PID", 13)
        );
    }

    // Replay: 1.1.0 against the three stored messages shows the phone number change on
    // each; the current version against itself shows none.
    let (code, stdout, _) = courier(&[
        "plugin",
        "replay",
        "adt-emr@1.1.0",
        "--route",
        "reg",
        "--last",
        "2",
        "--config",
        s(&config_path),
    ]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("adt-emr@1.0.0 (current) against adt-emr@1.1.0 (candidate)"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("(FIRST").count(), 2, "{stdout}");
    assert!(
        stdout.contains("(FIRST1): 2 difference(s)")
            && stdout.contains("(FIRST2): 2 difference(s)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("PID-13: \"(217)555-0142^PRN^PH^^1^217^5550142~^NET^Internet^sarah.johnson@example.org\" → \"+12175550142^PRN^PH^^1^217^5550142~^NET^Internet^sarah.johnson@example.org\""),
        "{stdout}"
    );
    assert!(stdout.contains("PID-14: \"(217)555-0199"), "{stdout}");
    assert!(stdout.contains("2 of 2 message(s) differ"), "{stdout}");
    let (code, stdout, _) = courier(&[
        "plugin",
        "replay",
        "adt-emr@1.0.0",
        "--route",
        "reg",
        "--config",
        s(&config_path),
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("0 of 3 message(s) differ"), "{stdout}");

    // Upgrade and roll back while a sender keeps going over one connection.
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut ids = Vec::new();
            // Bounded: at most 2,000 messages whatever happens.
            for i in 0..2000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let id = format!("ROLL{i:04}");
                let ack = c.request(&sarah(&id));
                assert_eq!(field(&ack, "MSA", 1), "AA", "{id}");
                ids.push(id);
                acked.fetch_add(1, Ordering::SeqCst);
            }
            ids
        })
    };
    let wait_acked = |n: usize| {
        wait_for("messages acknowledged", WAIT, || {
            acked.load(Ordering::SeqCst) >= n
        });
    };
    let reloaded = "reloaded; new messages take the new version";
    // The ACK comes once the steps ran (after-processing), so a message acknowledged before
    // a config write was mapped by the version before it.
    wait_acked(20);
    let before_upgrade = acked.load(Ordering::SeqCst);
    std::fs::write(dir.join("next.toml"), config("1.1.0")).unwrap();
    std::fs::rename(dir.join("next.toml"), &config_path).unwrap();
    wait_logged(&engine, reloaded, 1);
    // Messages sent after this point (the one in flight aside) go through 1.1.0.
    let upgraded_from = acked.load(Ordering::SeqCst) + 1;
    wait_acked(upgraded_from + 20);
    let before_rollback = acked.load(Ordering::SeqCst);
    std::fs::write(dir.join("next.toml"), config("1.0.0")).unwrap();
    std::fs::rename(dir.join("next.toml"), &config_path).unwrap();
    wait_logged(&engine, reloaded, 2);
    let rolled_back_from = acked.load(Ordering::SeqCst) + 1;
    wait_acked(rolled_back_from + 20);
    stop.store(true, Ordering::SeqCst);
    let ids = sender.join().unwrap();
    assert!(ids.len() >= rolled_back_from + 20);
    assert!(before_rollback >= upgraded_from + 20);

    // Nothing lost: every acknowledged message reached the EMR (at least once), and each
    // was mapped by the version in force when it was sent.
    let files = wait_files(&out, 3 + ids.len(), WAIT);
    let mut delivered = BTreeSet::new();
    for f in &files {
        let id = field(f, "MSH", 10);
        let phone = field(f, "PID", 13);
        if let Some(i) = id.strip_prefix("ROLL").map(|n| n.parse::<usize>().unwrap()) {
            if (upgraded_from..before_rollback).contains(&i) {
                assert!(
                    phone.starts_with("+12175550142"),
                    "{id} should be 1.1.0's: {phone}"
                );
            }
            if i < before_upgrade || i >= rolled_back_from {
                assert!(
                    phone.starts_with("(217)555-0142"),
                    "{id} should be 1.0.0's: {phone}"
                );
            }
        }
        delivered.insert(id);
    }
    for id in &ids {
        assert!(
            delivered.contains(id),
            "{id} was acknowledged but never delivered"
        );
    }
}

/// Debian's `minisign` (the reference C tool), installed the way `.ci/run` does if missing.
fn ensure_minisign() -> &'static str {
    const MINISIGN: &str = "/usr/bin/minisign";
    if Path::new(MINISIGN).exists() {
        return MINISIGN;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let sudo: &[&str] = if root { &[] } else { &["sudo"] };
    for args in [
        &["apt-get", "update", "-qq"][..],
        &["apt-get", "install", "-y", "-qq", "minisign"][..],
    ] {
        let cmd: Vec<&str> = sudo.iter().chain(args).copied().collect();
        let status = Command::new(cmd[0])
            .args(&cmd[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        assert!(
            status.is_ok_and(|s| s.success()),
            "the interoperability test needs Debian's minisign; `{}` failed (run .ci/run, which installs it)",
            cmd.join(" ")
        );
    }
    MINISIGN
}

/// Vendors may use the standard tool: a key made by `minisign -G` signs with `courier plugin
/// pack` and `minisign -V` verifies the result; a manifest signed by `minisign -S` with a
/// `courier plugin keygen` key installs.
#[test]
fn the_standard_minisign_tool_interoperates() {
    build_plugins();
    let minisign = ensure_minisign();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = |args: &[&str]| {
        let out = Command::new(minisign).args(args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "minisign {args:?}: {text}");
        text
    };
    let (ms_pub, ms_key) = (dir.join("ms.pub"), dir.join("ms.key"));
    run(&["-G", "-W", "-p", s(&ms_pub), "-s", s(&ms_key)]);
    let packed = pack_variant(dir, "2.0.0", &ms_key, |t| t, |t| t);
    let pkg = courier::package::read_package(&packed).unwrap();
    let (manifest, sig) = (dir.join("manifest.toml"), dir.join("manifest.toml.minisig"));
    std::fs::write(&manifest, &pkg.files["manifest.toml"]).unwrap();
    std::fs::write(&sig, &pkg.files["manifest.toml.minisig"]).unwrap();
    let verified = run(&["-V", "-p", s(&ms_pub), "-m", s(&manifest), "-x", s(&sig)]);
    assert!(
        verified.contains("Trusted comment: courier plugin package adt-emr@2.0.0"),
        "{verified}"
    );

    // The other way round: courier's key, minisign's signature.
    let (ck_key, ck_pub, ck_id) = keygen(dir, "courier-key");
    std::fs::remove_file(&sig).unwrap();
    run(&[
        "-S",
        "-s",
        s(&ck_key),
        "-m",
        s(&manifest),
        "-t",
        "signed by hand",
    ]);
    let mut files = pkg.files.clone();
    files.remove("manifest.toml");
    files.remove("manifest.toml.minisig");
    let by_hand = dir.join("by-hand.cpkg");
    courier::package::write_package(
        &by_hand,
        &std::fs::read_to_string(&manifest).unwrap(),
        &std::fs::read_to_string(&sig).unwrap(),
        &files,
    )
    .unwrap();
    let config = dir.join("courier.toml");
    std::fs::write(&config, plugins_config(&ck_pub, "")).unwrap();
    let (code, stdout, _) = courier(&["plugin", "install", s(&by_hand), "--config", s(&config)]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains(&format!("signature by trusted key {ck_id} is valid")),
        "{stdout}"
    );
    // minisign's own key id for its key is the one courier shows. minisign prints it without
    // leading zeros (`%PRIX64`), courier always with sixteen digits, so one key in sixteen
    // reads `235B…` in minisign and `0235B…` in courier: compare the numbers.
    let ms_line = std::fs::read_to_string(&ms_pub).unwrap();
    let ms_hex = ms_line.lines().next().unwrap().rsplit(' ').next().unwrap();
    let ms_id = format!("{:016X}", u64::from_str_radix(ms_hex, 16).unwrap());
    let (code, _, stderr) = courier(&["plugin", "install", s(&packed), "--config", s(&config)]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("signed with key {ms_id}")),
        "{stderr}"
    );
}
