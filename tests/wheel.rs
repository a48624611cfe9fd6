//! The Python wheel: built with maturin (bindings = "bin"), installed with uv
//! into a scratch tool dir, and run from there — the install path for users
//! who have uv and not cargo.
#![cfg(feature = "real-memtomem")]

#[path = "common/testenv.rs"]
mod testenv;

use std::path::PathBuf;
use std::process::Command;

#[test]
fn wheel_installs_with_uv_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dist");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // Reuse the test build's target dir: the dev profile is already compiled.
    let target = PathBuf::from(env!("CARGO_BIN_EXE_mm-upgrade"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let status = testenv::apply(&mut Command::new(testenv::uv()))
        .args([
            "tool",
            "run",
            "--from",
            "maturin>=1.5,<2",
            "maturin",
            "build",
            "--profile",
            "dev",
            "--quiet",
            "--out",
        ])
        .arg(&out)
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .unwrap();
    assert!(status.success(), "maturin build failed: {status}");
    let wheel = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("a wheel");
    let name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("mm_upgrade-") && name.contains("-py3-none-"),
        "{name}"
    );

    let tools = tmp.path().join("tools");
    let bin = tmp.path().join("bin");
    let status = testenv::apply(&mut Command::new(testenv::uv()))
        .args(["tool", "install"])
        .arg(&wheel)
        .env("UV_TOOL_DIR", &tools)
        .env("UV_TOOL_BIN_DIR", &bin)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "uv tool install of the wheel failed: {status}"
    );
    let help = Command::new(bin.join("mm-upgrade"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--skip-pkill") && text.contains("Exit codes:"),
        "{text}"
    );
    assert!(tools.join("mm-upgrade/uv-receipt.toml").exists());
}
