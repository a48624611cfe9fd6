//! `mm-upgrade status`: which memtomem processes still run old code.
//! Stale is proven from `/proc` (start time against the install time, deleted
//! mappings of the installation), never guessed, and nothing of the target is
//! executed or its environment read.

use std::fs;
use std::path::Path;
use std::time::UNIX_EPOCH;

use serde_json::json;

use crate::cli::{path_env, Common};
use crate::discover::{self, Installation, Scope};
use crate::sys::{Clock, Os};
use crate::{exit, install, pidfile, sys};

/// Wall-clock seconds of a start time of the real OS.
pub fn start_wall_secs(start_ticks: u64) -> f64 {
    sys::real().start_wall_secs(start_ticks)
}

fn fmt_wall(secs: f64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos((secs * 1e9) as i128)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    pidfile::format_stamp(t)
}

/// A process's start time as `status` and the plan print it: from the
/// process table, rounded to its unit (a clock tick). The origin is "now
/// minus the time since boot", read afresh by each run, so unrounded the
/// same process's start moved by microseconds from one run to the next.
/// Generic, not `&dyn Clock`: callers hold a `&dyn Os`, and that upcast
/// needs Rust 1.86 (rust-version is 1.85; the macOS check builds with it).
pub fn fmt_start(os: &(impl Clock + ?Sized), start_ticks: u64) -> String {
    fmt_rounded(os.start_wall_secs(start_ticks), os.start_unit_secs())
}

/// `secs` formatted after rounding to a multiple of `unit` (in whole
/// nanoseconds, so no float error shows in the microseconds).
fn fmt_rounded(secs: f64, unit: f64) -> String {
    let unit_ns = ((unit * 1e9).round() as i128).max(1);
    let ns = (secs * 1e9).round() as i128;
    let ns = (ns + unit_ns / 2).div_euclid(unit_ns) * unit_ns;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ns)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    pidfile::format_stamp(t)
}

/// When the installed version was installed: the receipt's mtime (uv writes
/// it at the end of every install).
pub fn install_time(env_dir: &Path) -> Option<f64> {
    let m = fs::metadata(env_dir.join("uv-receipt.toml"))
        .ok()?
        .modified()
        .ok()?;
    Some(m.duration_since(UNIX_EPOCH).ok()?.as_secs_f64())
}

/// How [`classify`]'s evidence of another installation begins.
pub const OTHER_INSTALLATION: &str = "runs from a different installation";

/// A memtomem process whose interpreter is a virtualenv's `bin/python*`
/// outside this installation (an old tool dir, a `uvx` cache env) runs
/// another installation's code. Only the process's argv is read.
fn other_installation(os: &dyn Os, pid: sys::Pid, env_dir: &Path) -> Option<String> {
    let argv = os.cmdline(pid);
    let exe = Path::new(argv.first()?);
    let name = exe.file_name()?.to_string_lossy();
    let venv_python =
        name.starts_with("python") && exe.parent().is_some_and(|b| b.ends_with("bin"));
    if !venv_python || exe.starts_with(env_dir) {
        return None;
    }
    let venv = exe.parent()?.parent()?;
    venv.join("pyvenv.cfg")
        .exists()
        .then(|| format!("{OTHER_INSTALLATION} ({})", venv.display()))
}

/// Is `pid` (started at wall time `started`) running stale code, and why?
/// Proof only: started no later than the install, deleted mappings of the
/// installation, or an interpreter of another installation.
pub fn classify(
    pid: sys::Pid,
    started: f64,
    installed_at: Option<f64>,
    env_dir: Option<&Path>,
) -> (bool, Vec<String>) {
    classify_in(sys::real(), pid, started, installed_at, env_dir)
}

/// [`classify`] through `os`.
pub fn classify_in(
    os: &dyn Os,
    pid: sys::Pid,
    started: f64,
    installed_at: Option<f64>,
    env_dir: Option<&Path>,
) -> (bool, Vec<String>) {
    let mut evidence = Vec::new();
    let mut stale = false;
    if let Some(at) = installed_at {
        // One clock tick of tolerance: a process started in the same tick
        // as the receipt write is ambiguous and counted as stale.
        if started <= at + os.start_unit_secs() {
            stale = true;
            let when = fmt_rounded(started, os.start_unit_secs());
            evidence.push(match started <= at {
                true => format!("started {when} before the install at {}", fmt_wall(at)),
                false => format!(
                    "started {when}, within a clock tick of the install at {}: counted as before it",
                    fmt_wall(at)
                ),
            });
        }
    }
    if let Some(env_dir) = env_dir {
        let deleted: Vec<String> = os
            .maps(pid)
            .into_iter()
            .filter(|m| m.deleted && Path::new(&m.path).starts_with(env_dir))
            .map(|m| m.path)
            .collect();
        if !deleted.is_empty() {
            stale = true;
            evidence.push(format!(
                "maps {} deleted file(s) of the installation, e.g. {}",
                deleted.len(),
                deleted[0]
            ));
        }
        if let Some(other) = other_installation(os, pid, env_dir) {
            stale = true;
            evidence.push(other);
        }
    }
    (stale, evidence)
}

/// Each process of the inventory with its generation and the evidence for
/// it, and how many are stale.
pub fn processes_in(
    os: &dyn Os,
    inv: &discover::Inventory,
    installed_at: Option<f64>,
    env_dir: Option<&Path>,
) -> (Vec<serde_json::Value>, usize) {
    let mut procs = Vec::new();
    let mut stale_count = 0;
    for i in &inv.instances {
        let Some(pid) = i.pid else { continue };
        let started = os.start_wall_secs(i.start_ticks);
        let (stale, mut evidence) = classify_in(os, pid, started, installed_at, env_dir);
        if matches!(i.installation, crate::proof::Origin::Other(_)) {
            // Discovery's evidence names that installation already.
            evidence.retain(|e| !e.starts_with(OTHER_INSTALLATION));
        }
        evidence.splice(0..0, i.evidence.iter().cloned());
        if stale {
            stale_count += 1;
        }
        procs.push(json!({
            "pid": pid,
            "ppid": i.ppid,
            "role": i.role,
            "source": i.source,
            "started": fmt_start(os, i.start_ticks),
            "generation": if stale { "stale" } else { "current" },
            "evidence": evidence,
        }));
    }
    (procs, stale_count)
}

/// A server of another installation runs that installation's code, so it
/// is stale exactly when the survey finds that code old (its version below
/// ours, or unknown), whatever our install time says: a server pinned to the
/// installed version is current. Returns the stale count.
fn judge_other_installations(
    procs: &mut [serde_json::Value],
    others: &[crate::foreign::Foreign],
) -> usize {
    for p in procs.iter_mut() {
        if let Some(f) = others.iter().find(|f| p["pid"] == f.pid) {
            p["generation"] = json!(if f.old_code { "stale" } else { "current" });
        }
    }
    procs.iter().filter(|p| p["generation"] == "stale").count()
}

/// The first line of `status`: the installed version, or that memtomem is
/// not installed (uv names its tool directory and no version is there, as
/// the upgrade's plan decides), or that uv could not be asked.
fn headline(version: Option<&str>, at: Option<f64>, tool_dir: Option<&Path>) -> String {
    match (version, tool_dir) {
        (Some(v), _) => format!(
            "memtomem {v} installed {}",
            at.map(fmt_wall).unwrap_or_else(|| "(unknown time)".into())
        ),
        (None, Some(d)) => format!(
            "memtomem is not installed (none in uv's tool directory {})",
            d.display()
        ),
        (None, None) => {
            "memtomem's installation is unknown: uv did not name its tool directory".into()
        }
    }
}

/// This installation, as uv names it; without uv (or its answer) an
/// unknown one, with a warning saying why.
pub fn installation(common: &Common, warnings: &mut Vec<String>) -> Installation {
    match install::Uv::locate(
        common.uv.as_deref(),
        std::env::var_os("PATH").as_deref(),
        std::time::Duration::from_secs(10),
    ) {
        Ok(uv) => match Installation::from_uv(&uv) {
            Ok(i) => i,
            Err(e) => {
                warnings.push(format!("cannot ask uv for its tool directory ({e})"));
                Installation::default()
            }
        },
        Err(e) => {
            warnings.push(e.to_string());
            Installation::default()
        }
    }
}

pub fn run(common: &Common) -> u8 {
    let env = path_env(common);
    let mut warnings: Vec<String> = Vec::new();
    let install = installation(common, &mut warnings);
    if let Some(tool_dir) = install.tool_dir().filter(|t| t.is_absolute()) {
        let layout = crate::txn::Layout {
            tool_dir: tool_dir.to_path_buf(),
            bin_dir: install.bin_dir.clone(),
        };
        if let Some(p) = crate::txn::pending(&layout) {
            warnings.push(p);
        }
    }
    let protected = sys::self_and_ancestors();
    let inv = discover::discover(&Scope {
        env: &env,
        install: &install,
        protected: &protected,
        scan_processes: true,
    });
    let installed_at = install.env_dir.as_deref().and_then(install_time);
    let version = install.tool_dir().and_then(install::installed_version);
    // Servers of another installation (a pinned plugin, another venv): their
    // version against ours, and the host configs that launch them.
    let others = crate::foreign::survey_for(&env, &install, &protected, &inv, version.as_deref());
    warnings.extend(others.warnings.iter().cloned());
    let (mut procs, _) = processes_in(sys::real(), &inv, installed_at, install.env_dir.as_deref());
    let stale_count = judge_other_installations(&mut procs, &others.others);
    let hosts = crate::hosts::view::survey_inventory(sys::real(), &inv);
    // What `mm-upgrade reap` would stop: the proven orphans only.
    let reapable: Vec<sys::Pid> = crate::reap::orphans_in(sys::real(), &inv)
        .iter()
        .filter_map(|(i, _)| i.pid)
        .collect();
    crate::hosts::view::annotate(&mut procs, &hosts);
    let problems = inv.all_problems();
    let db = env.store_path();
    let writer = db.as_deref().and_then(crate::dblock::write_lock_holder);
    let code = if stale_count > 0 || others.old_code().next().is_some() {
        exit::VERIFY_FAILED
    } else {
        exit::OK
    };
    if common.json {
        let mut doc = json!({
            "processes": procs,
            "stale": stale_count,
            "installed_version": version,
            "installed_at": installed_at.map(fmt_wall),
            "db_writer": writer,
            "problems": problems,
            "other_installations": others.others,
            "warnings": warnings,
            "exit_code": code,
        });
        // Ours after the original keys, `warnings` and `exit_code` last.
        if let Some(m) = doc.as_object_mut() {
            let tail = [m.shift_remove("warnings"), m.shift_remove("exit_code")];
            m.extend(crate::hosts::view::doc_fields(&hosts).map(|(k, v)| (k.to_string(), v)));
            for (k, v) in ["warnings", "exit_code"].into_iter().zip(tail) {
                m.insert(k.into(), v.unwrap_or_default());
            }
        }
        crate::ui::outln!("{}", crate::ui::python_json(&doc));
    } else {
        crate::ui::outln!(
            "{}",
            headline(version.as_deref(), installed_at, install.tool_dir())
        );
        if procs.is_empty() {
            crate::ui::outln!("No memtomem process is running.");
        }
        for p in &procs {
            crate::ui::outln!(
                "  pid {:>7}  {:<8} {:<16} started {}  {}",
                p["pid"],
                p["generation"].as_str().unwrap_or(""),
                p["role"].as_str().unwrap_or(""),
                p["started"].as_str().unwrap_or(""),
                p["source"].as_str().unwrap_or("")
            );
            for e in p["evidence"].as_array().into_iter().flatten() {
                crate::ui::outln!("      {}", e.as_str().unwrap_or(""));
            }
            if let Some(l) = p["pid"]
                .as_i64()
                .and_then(|pid| crate::hosts::view::process_line(&hosts, pid, &reapable))
            {
                crate::ui::outln!("      {l}");
            }
        }
        for l in crate::hosts::view::summary_lines(&hosts, &reapable) {
            crate::ui::outln!("{l}");
        }
        if let (Some(pid), Some(db)) = (writer, &db) {
            crate::ui::outln!("The store {} is write-locked by pid {pid}.", db.display());
        }
        for l in crate::foreign::lines(&others.others, version.as_deref()) {
            crate::ui::outln!("{l}");
        }
        for p in &problems {
            crate::ui::outln!("  unverifiable: {p}");
        }
        for w in &warnings {
            crate::ui::warning_line(w);
        }
        // Restarting helps this installation's stale processes only; the
        // others' block above says what to change for theirs.
        let ours = procs
            .iter()
            .filter(|p| p["generation"] == "stale")
            .filter(|p| !others.others.iter().any(|f| p["pid"] == f.pid))
            .count();
        if ours > 0 {
            crate::ui::outln!("{ours} process(es) still run old code: restart them.");
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusty_fork::rusty_fork_test;

    /// Kills and reaps the child on drop, panic included.
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    #[test]
    fn a_start_time_reads_the_same_whatever_the_origins_jitter() {
        // 2026-11-30T23:51:12.326563 and the same, read 1.4 µs later.
        let a = 1_796_082_672.326_563_f64;
        assert_eq!(fmt_rounded(a, 0.01), "2026-11-30T23:51:12.330000+00:00");
        assert_eq!(fmt_rounded(a + 1.4e-6, 0.01), fmt_rounded(a, 0.01));
        assert_eq!(fmt_rounded(a - 1.4e-6, 0.01), fmt_rounded(a, 0.01));
        // A whole second stays whole (no float error in the microseconds),
        // printed as Python's isoformat prints it.
        assert_eq!(
            fmt_rounded(1_796_082_672.0, 0.01),
            "2026-11-30T23:51:12+00:00"
        );
    }

    #[test]
    fn a_start_within_a_tick_after_the_install_is_not_called_before_it() {
        let os = crate::sys::fake::FakeOs::new();
        let at = 1_800_000_100.0;
        let (stale, ev) = classify_in(&os, 7, at + 0.006, Some(at), None);
        assert!(stale, "one tick of tolerance: counted as old");
        assert_eq!(
            ev,
            ["started 2027-01-15T08:01:40.010000+00:00, within a clock tick of the install at 2027-01-15T08:01:40+00:00: counted as before it"]
        );
        let (_, ev) = classify_in(&os, 7, at - 1.0, Some(at), None);
        assert!(
            ev[0].ends_with(" before the install at 2027-01-15T08:01:40+00:00"),
            "{ev:?}"
        );
    }

    #[test]
    fn the_headline_says_installed_not_installed_or_unknown() {
        let at = Some(1_800_000_100.0);
        assert_eq!(
            headline(Some("0.6.12"), at, Some(Path::new("/t"))),
            "memtomem 0.6.12 installed 2027-01-15T08:01:40+00:00"
        );
        assert_eq!(
            headline(None, None, Some(Path::new("/t"))),
            "memtomem is not installed (none in uv's tool directory /t)"
        );
        assert_eq!(
            headline(None, None, None),
            "memtomem's installation is unknown: uv did not name its tool directory"
        );
    }

    #[test]
    fn a_python_of_another_venv_is_another_installation() {
        let tmp = tempfile::tempdir().unwrap();
        let venv = tmp.path().join("cache-env");
        fs::create_dir_all(venv.join("bin")).unwrap();
        fs::write(venv.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
        // Its argv[0] is the venv's python, as a uvx-run server's would be.
        std::os::unix::fs::symlink("/bin/sleep", venv.join("bin/python3")).unwrap();
        let child = Child(
            std::process::Command::new(venv.join("bin/python3"))
                .arg("30")
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id() as sys::Pid;
        // Readiness: the exec has happened once cmdline names the new program.
        let want = venv.join("bin/python3").display().to_string();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while sys::Processes::cmdline(sys::real(), pid).first() != Some(&want) {
            assert!(std::time::Instant::now() < deadline, "child never exec'd");
            std::thread::yield_now();
        }
        let ours = tmp.path().join("tools/memtomem");
        let found = other_installation(sys::real(), pid, &ours).expect("flagged");
        assert!(found.contains("cache-env"), "{found}");
        // The same interpreter inside our installation is not "other".
        assert_eq!(other_installation(sys::real(), pid, &venv), None);
        // A process that is not a venv python is not judged by this rule.
        assert_eq!(
            other_installation(sys::real(), std::process::id() as sys::Pid, &ours),
            None
        );
    }

    // Own process (rusty-fork) for what takes real flocks: a child that a
    // sibling test spawns in this process shares a lock's open file description
    // until its exec, so the lock could outlive its release (issue 11).
    rusty_fork_test! {
        /// Through the fake OS: four servers holding their pid files, one
        /// current and three stale for each kind of proof.
        #[test]
        fn fake_status_proves_each_stale_process_and_calls_a_fresh_one_current() {
            use crate::discover::{discover_in, Installation, Scope};
            use crate::sys::fake::{FakeOs, FakeProc};
            use crate::sys::{FileId, LockKind, LockSeen};
            use crate::testutil::{lock_holder, Rt};
            let rt = Rt::new();
            let tools = rt.file("tools");
            let env = tools.join("memtomem");
            fs::create_dir_all(env.join("bin")).unwrap();
            fs::write(env.join("uv-receipt.toml"), "[tool]\n").unwrap();
            let cache = rt.file("cache-env");
            fs::create_dir_all(cache.join("bin")).unwrap();
            fs::write(cache.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
            let os = FakeOs::new();
            let installed_ticks = os.start_now() - 100;
            let installed_at = os.start_wall_secs(installed_ticks);
            let mut holders = Vec::new();
            let lib = env.join("lib/_native.so").display().to_string();
            let cache_py = cache.join("bin/python3").display().to_string();
            let procs = [
                (4000, installed_ticks + 50, FakeProc::new(0)),
                (4001, installed_ticks - 50, FakeProc::new(0)),
                (
                    4002,
                    installed_ticks + 50,
                    FakeProc::new(0).maps(&lib, true),
                ),
                (
                    4003,
                    installed_ticks + 50,
                    FakeProc::new(0).argv(&[&cache_py, "-m", "memtomem.server"]),
                ),
            ];
            for (i, (pid, start, p)) in procs.into_iter().enumerate() {
                let path = rt.rt(&format!("server-{i:016x}.pid"));
                fs::write(&path, format!("{pid}\n")).unwrap();
                holders.push(lock_holder(&path));
                let id = FileId::of(&fs::metadata(&path).unwrap());
                let mut p = p.holds(id, LockSeen::Flock(LockKind::Write));
                p.start = start;
                os.add(pid, p);
            }
            let install = Installation::at(tools, None);
            let scope = Scope {
                env: &rt.env,
                install: &install,
                protected: &[],
                scan_processes: true,
            };
            let inv = discover_in(&os, &scope);
            let (procs, stale) =
                processes_in(&os, &inv, Some(installed_at), install.env_dir.as_deref());
            assert_eq!(stale, 3, "{procs:?}");
            let by_pid = |pid: i32| procs.iter().find(|p| p["pid"] == pid).unwrap();
            assert_eq!(by_pid(4000)["generation"], "current");
            let ev = |pid: i32| by_pid(pid)["evidence"].to_string();
            assert!(ev(4001).contains("before the install"), "{}", ev(4001));
            assert!(ev(4002).contains("_native.so"), "{}", ev(4002));
            // Named once, in discovery's words (not again in classify's).
            assert!(ev(4003).contains("runs another installation"), "{}", ev(4003));
            assert!(!ev(4003).contains("different installation"), "{}", ev(4003));
            assert!(ev(4000).contains("holds the flock"), "{}", ev(4000));
        }
    }
}
