//! `mm-upgrade status`: which memtomem processes still run old code.
//! Stale is proven from `/proc` (start time against the install time, deleted
//! mappings of the installation), never guessed, and nothing of the target is
//! executed or its environment read.

use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::cli::{path_env, Common};
use crate::discover::{self, Installation, Scope};
use crate::{exit, install, pidfile, sys};

/// Wall-clock seconds at boot, precise to the clock (not /proc/stat's 1 s).
fn boot_wall_secs() -> f64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    now - (ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

pub fn start_wall_secs(start_ticks: u64) -> f64 {
    boot_wall_secs() + start_ticks as f64 / sys::clock_ticks() as f64
}

fn fmt_wall(secs: f64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos((secs * 1e9) as i128)
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

/// A memtomem process whose interpreter is a virtualenv's `bin/python*`
/// outside this installation (an old tool dir, a `uvx` cache env) runs
/// another installation's code. Only `/proc/<pid>/cmdline` is read.
fn other_installation(pid: sys::Pid, env_dir: &Path) -> Option<String> {
    let argv = sys::cmdline(pid);
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
        .then(|| format!("runs from a different installation ({})", venv.display()))
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
    let mut evidence = Vec::new();
    let mut stale = false;
    if let Some(at) = installed_at {
        // One clock tick of tolerance: a process started in the same tick
        // as the receipt write is ambiguous and counted as stale.
        if started <= at + 1.0 / sys::clock_ticks() as f64 {
            stale = true;
            evidence.push(format!(
                "started {} before the install at {}",
                fmt_wall(started),
                fmt_wall(at)
            ));
        }
    }
    if let Some(env_dir) = env_dir {
        let deleted: Vec<String> = sys::maps(pid)
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
        if let Some(other) = other_installation(pid, env_dir) {
            stale = true;
            evidence.push(other);
        }
    }
    (stale, evidence)
}

pub fn run(common: &Common) -> u8 {
    let env = path_env(common);
    let mut warnings: Vec<String> = Vec::new();
    let install = match install::Uv::locate(
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
    };
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
    let mut procs = Vec::new();
    let mut stale_count = 0;
    for i in &inv.instances {
        let Some(pid) = i.pid else { continue };
        let started = start_wall_secs(i.start_ticks);
        let (stale, mut evidence) =
            classify(pid, started, installed_at, install.env_dir.as_deref());
        evidence.splice(0..0, i.evidence.iter().cloned());
        if stale {
            stale_count += 1;
        }
        procs.push(json!({
            "pid": pid,
            "ppid": i.ppid,
            "role": i.role,
            "source": i.source,
            "started": fmt_wall(started),
            "generation": if stale { "stale" } else { "current" },
            "evidence": evidence,
        }));
    }
    let problems = inv.all_problems();
    let db = env.store_path();
    let writer = db.as_deref().and_then(crate::dblock::write_lock_holder);
    let code = if stale_count > 0 {
        exit::VERIFY_FAILED
    } else {
        exit::OK
    };
    if common.json {
        let doc = json!({
            "processes": procs,
            "stale": stale_count,
            "installed_version": version,
            "installed_at": installed_at.map(fmt_wall),
            "db_writer": writer,
            "problems": problems,
            "warnings": warnings,
            "exit_code": code,
        });
        crate::ui::outln!("{}", crate::ui::python_json(&doc));
    } else {
        crate::ui::outln!(
            "memtomem {} installed {}",
            version.as_deref().unwrap_or("(unknown version)"),
            installed_at
                .map(fmt_wall)
                .unwrap_or_else(|| "(unknown time)".into())
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
        }
        if let (Some(pid), Some(db)) = (writer, &db) {
            crate::ui::outln!("The store {} is write-locked by pid {pid}.", db.display());
        }
        for p in &problems {
            crate::ui::outln!("  unverifiable: {p}");
        }
        for w in &warnings {
            crate::ui::errln!("warning: {w}");
        }
        if stale_count > 0 {
            crate::ui::outln!("{stale_count} process(es) still run old code: restart them.");
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kills and reaps the child on drop, panic included.
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
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
        while sys::cmdline(pid).first() != Some(&want) {
            assert!(std::time::Instant::now() < deadline, "child never exec'd");
            std::thread::yield_now();
        }
        let ours = tmp.path().join("tools/memtomem");
        let found = other_installation(pid, &ours).expect("flagged");
        assert!(found.contains("cache-env"), "{found}");
        // The same interpreter inside our installation is not "other".
        assert_eq!(other_installation(pid, &venv), None);
        // A process that is not a venv python is not judged by this rule.
        assert_eq!(
            other_installation(std::process::id() as sys::Pid, &ours),
            None
        );
    }
}
