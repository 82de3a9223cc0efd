//! `courier plugin new`: the generated project builds for wasm32-wasip2 as it is, its unit
//! tests pass natively, and its route test passes through `courier test` with the component
//! it built. Bad names and taken directories are refused with exit 2.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::*;

fn courier(args: &[&str], dir: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("courier runs");
    eprintln!(
        "--- courier {args:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `cargo <args>` in `dir`, sharing the plugins' target directory so that the SDK and its
/// dependencies are compiled once. Offline: the plugins' build has fetched every crate the
/// SDK needs.
fn cargo(args: &[&str], dir: &Path) -> Output {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(args)
        .arg("--offline")
        .env("CARGO_TARGET_DIR", repo().join("target/wasm-plugins"))
        .current_dir(dir)
        .output()
        .expect("cargo runs");
    eprintln!(
        "--- cargo {args:?}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn a_new_plugin_builds_and_passes_its_tests() {
    // The SDK's dependencies are built (and fetched) by the plugins' own build.
    build_plugins();
    let tmp = tempfile::tempdir().unwrap();
    let out = courier(
        &[
            "plugin",
            "new",
            "stamp-receiver",
            "--dir",
            tmp.path().to_str().unwrap(),
        ],
        tmp.path(),
    );
    assert!(out.status.success());
    let project = tmp.path().join("stamp-receiver");
    for f in [
        "Cargo.toml",
        "src/lib.rs",
        "README.md",
        "courier.toml",
        "tests/stamp-receiver.toml",
        "messages/adt_a04.hl7",
        ".gitignore",
        "rust-toolchain.toml",
        "courier-plugin.toml",
        "package-tests/package.toml",
    ] {
        assert!(project.join(f).is_file(), "{f} not generated");
    }
    let built = repo().join("target/wasm-plugins/wasm32-wasip2/release/stamp_receiver.wasm");
    // Not one left over from an earlier run.
    let _ = std::fs::remove_file(&built);
    let out = cargo(
        &["build", "--release", "--target", "wasm32-wasip2"],
        &project,
    );
    assert!(out.status.success(), "the generated plugin does not build");
    assert!(built.is_file(), "{} missing", built.display());

    // courier.toml names the component where a plain `cargo build` in the project puts it.
    let wasm = project.join("target/wasm32-wasip2/release/stamp_receiver.wasm");
    std::fs::create_dir_all(wasm.parent().unwrap()).unwrap();
    std::fs::copy(&built, &wasm).unwrap();
    let out = courier(&["test", "courier.toml"], &project);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 3);
    assert!(stdout.contains("ok: 3 passed, 0 failed"), "{stdout}");

    // It packs as it is, and the package installs: its own tests pass in the sandbox.
    let out = courier(
        &["plugin", "keygen", "--out", "vendor", "--no-password"],
        tmp.path(),
    );
    assert!(out.status.success());
    let public = std::fs::read_to_string(tmp.path().join("vendor.pub")).unwrap();
    let out = courier(
        &[
            "plugin",
            "pack",
            project.to_str().unwrap(),
            "--key",
            "vendor.key",
            "--wasm",
            built.to_str().unwrap(),
            "--out",
            "stamp.cpkg",
        ],
        tmp.path(),
    );
    assert!(out.status.success(), "the generated plugin does not pack");
    std::fs::write(
        tmp.path().join("clinic.toml"),
        format!(
            "[plugins]\ndir = \"installed\"\ntrusted_keys = [\"{}\"]\n",
            public.lines().last().unwrap().trim()
        ),
    )
    .unwrap();
    let out = courier(
        &["plugin", "install", "stamp.cpkg", "--config", "clinic.toml"],
        tmp.path(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("its own tests pass in the sandbox (2 cases)"),
        "{stdout}"
    );

    // The author's own loop: the unit tests in src/lib.rs, natively.
    let out = cargo(&["test"], &project);
    assert!(
        out.status.success(),
        "cargo test fails in the generated plugin"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("test result: ok. 3 passed"), "{text}");
}

#[test]
fn bad_names_and_taken_directories_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_str().unwrap();
    for (name, why) in [
        ("Bad-Name", "must start with a lower-case letter"),
        ("adt.map", "'.' is not allowed"),
        ("fn", "is a Rust keyword"),
    ] {
        let out = courier(&["plugin", "new", name, "--dir", dir], tmp.path());
        assert_eq!(out.status.code(), Some(2), "{name}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("`{name}` is not a valid plugin crate name"))
                && stderr.contains(why),
            "{stderr}"
        );
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);

    std::fs::create_dir(tmp.path().join("taken")).unwrap();
    std::fs::write(tmp.path().join("taken/lib.rs"), "// mine").unwrap();
    let out = courier(&["plugin", "new", "taken", "--dir", dir], tmp.path());
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already exists and is not an empty directory"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("taken/lib.rs")).unwrap(),
        "// mine"
    );

    let out = courier(
        &["plugin", "new", "fresh", "--dir", dir, "--sdk", dir],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no courier-plugin-sdk at"), "{stderr}");
    assert!(stderr.contains("pass --sdk PATH"), "{stderr}");
}
