//! The Python wheel: built with maturin (bindings = "bin"), installed with uv
//! into a scratch tool dir, and run from there — the install path for users
//! who have uv and not cargo.
#![cfg(feature = "real-memtomem")]

#[path = "common/testenv.rs"]
mod testenv;
#[path = "common/wheel.rs"]
mod wheel;

use std::path::PathBuf;
use std::process::Command;

#[test]
fn wheel_installs_with_uv_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("dist");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let wheel = wheel::build(&root.join("Cargo.toml"), &out);
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
