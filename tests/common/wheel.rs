//! Building this workspace's wheels with maturin (bindings = "bin"), as they are shipped:
//! shared by tests/wheel.rs and tests/pytest_plugin.rs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::testenv;

/// The test build's target dir: maturin reuses the dev profile already compiled there.
pub fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mm-upgrade"))
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/mm-upgrade")
        .to_path_buf()
}

/// mm-upgrade's features in this test build. Its wheel is built with them too: maturin's
/// build replaces target/<profile>/mm-upgrade, which the test binaries that run after this
/// one use (the fault points, for one, must still be there).
fn root_features() -> String {
    [
        ("scenarios", cfg!(feature = "scenarios")),
        ("real-memtomem", cfg!(feature = "real-memtomem")),
        ("fault-points", cfg!(feature = "fault-points")),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(name, _)| *name)
    .collect::<Vec<_>>()
    .join(",")
}

/// `maturin build --profile dev` of the package at `manifest` into `out`; the wheel's path.
pub fn build(manifest: &Path, out: &Path) -> PathBuf {
    let mut features = Vec::new();
    if manifest == Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")
        && !root_features().is_empty()
    {
        features = vec!["--features".to_string(), root_features()];
    }
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
        .arg(out)
        .arg("--manifest-path")
        .arg(manifest)
        .args(&features)
        .env("CARGO_TARGET_DIR", target_dir())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "maturin build of {} failed: {status}",
        manifest.display()
    );
    let stem = manifest
        .parent()
        .and_then(|d| std::fs::read_to_string(d.join("pyproject.toml")).ok())
        .and_then(|t| {
            let name = t.lines().find_map(|l| l.strip_prefix("name = "))?;
            Some(name.trim_matches('"').replace('-', "_"))
        })
        .expect("pyproject.toml with a name beside the manifest");
    std::fs::read_dir(out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.extension().is_some_and(|e| e == "whl")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{stem}-")))
        })
        .unwrap_or_else(|| panic!("no {stem} wheel in {}", out.display()))
}
