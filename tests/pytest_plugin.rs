//! fake-server where memtomem's maintainers test: its wheel (with the pytest plugin) and
//! mm-upgrade's, built with maturin and installed with uv into a scratch venv beside a
//! real memtomem 0.6.12 and pytest, run a short pytest file through the `fake_server`
//! fixture (fake-server/tests/pytest/test_mm_upgrade.py): memtomem's own `mm upgrade`
//! escalates to SIGKILL on `ignore-sigterm`, mm-upgrade does not wait the grace, the
//! fixture's teardown kills what it started even when a test fails, and a fake that
//! never gets ready is reported.
#![cfg(feature = "real-memtomem")]

#[path = "common/testenv.rs"]
mod testenv;
#[path = "common/wheel.rs"]
mod wheel;

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The whole pytest run: four tests, one of them waiting out memtomem's 1 s grace.
const PYTEST_DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn pytest_plugin_runs_a_fake_server_for_memtomems_own_mm_upgrade() {
    let tmp = tempfile::Builder::new()
        .prefix("mm-pytest-")
        .tempdir()
        .unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dist = tmp.path().join("dist");
    let fake_wheel = wheel::build(&root.join("fake-server/Cargo.toml"), &dist);
    let ours_wheel = wheel::build(&root.join("Cargo.toml"), &dist);

    let venv = tmp.path().join("venv");
    uv(&["venv", "--quiet"], &[venv.as_os_str()]);
    let python = venv.join("bin/python");
    let pytest = format!("pytest=={}", testenv::setup_var("MM_TEST_PYTEST_VERSION"));
    uv(
        &["pip", "install", "--quiet", "--offline", "--python"],
        &[
            python.as_os_str(),
            "memtomem==0.6.12".as_ref(),
            pytest.as_ref(),
            fake_wheel.as_os_str(),
            ours_wheel.as_os_str(),
        ],
    );
    for bin in ["fake-server", "fake-uv", "fake-host", "mm-upgrade", "mm"] {
        assert!(venv.join("bin").join(bin).is_file(), "no {bin} in the venv");
    }

    let home = tmp.path().join("home");
    fs::create_dir(&home).unwrap();
    // Run a copy: pytest writes the file's rewritten bytecode beside it, never in the tree.
    let file = tmp.path().join("test_mm_upgrade.py");
    fs::copy(
        root.join("fake-server/tests/pytest/test_mm_upgrade.py"),
        &file,
    )
    .unwrap();
    let (out, err) = (tmp.path().join("pytest.out"), tmp.path().join("pytest.err"));
    let mut c = Command::new(&python);
    c.args([
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rA",
        "--basetemp",
    ])
    .arg(tmp.path().join("pt"))
    .arg(&file)
    .current_dir(tmp.path())
    .env("HOME", &home)
    .env_remove("PYTHONPATH")
    .env_remove("VIRTUAL_ENV")
    .env_remove("UV_TOOL_DIR")
    .env_remove("UV_TOOL_BIN_DIR")
    .env_remove("MEMTOMEM_FAKE_BIN_DIR")
    .env_remove("MEMTOMEM_STORAGE__SQLITE_PATH")
    .env_remove("_MEMTOMEM_TEST_RUNTIME_DIR")
    .env_remove("PYTEST_ADDOPTS")
    .stdin(Stdio::null())
    .stdout(File::create(&out).unwrap())
    .stderr(File::create(&err).unwrap())
    .process_group(0);
    // Steering variables of the fakes from outside this test are not this test's.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("FAKE_") {
            c.env_remove(k);
        }
    }
    let mut child = c.spawn().expect("run the venv's python");
    // pytest's group dies with the test, panics included; the fakes it started live in
    // groups of their own, but their stdin is a pipe from pytest: its death ends them.
    let _group = testkit::Group(child.id() as i32);
    let mut status = None;
    let done = testkit::wait_until(PYTEST_DEADLINE, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let report = || {
        format!(
            "--- stdout\n{}\n--- stderr\n{}",
            fs::read_to_string(&out).unwrap_or_default(),
            fs::read_to_string(&err).unwrap_or_default()
        )
    };
    assert!(
        done,
        "pytest still running after {PYTEST_DEADLINE:?}\n{}",
        report()
    );
    let status = status.unwrap();
    assert!(status.success(), "pytest: {status}\n{}", report());
    let text = fs::read_to_string(&out).unwrap();
    for name in [
        "test_memtomem_mm_upgrade_escalates_to_sigkill_on_ignore_sigterm",
        "test_mm_upgrade_kills_an_ignore_sigterm_server_without_waiting_the_grace",
        "test_teardown_kills_every_process_even_when_the_test_fails",
        "test_a_fake_that_never_gets_ready_is_reported_or_returned_unwaited",
    ] {
        let passed = text
            .lines()
            .any(|l| l.starts_with("PASSED ") && l.ends_with(&format!("::{name}")));
        assert!(passed, "{name} did not pass\n{}", report());
    }
    assert!(text.contains("4 passed"), "{}", report());
}

/// `uv ARGS PATHS...` with the test environment (offline cache, Python 3.12).
fn uv(args: &[&str], paths: &[&std::ffi::OsStr]) {
    let status = testenv::apply(&mut Command::new(testenv::uv()))
        .args(args)
        .args(paths)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "uv {args:?} {paths:?} failed ({status}); the cache is warmed by scripts/memtomem-env.sh"
    );
}
