//! What `/proc/<pid>` says, read without following anything but the pid.

use std::collections::BTreeMap;
use std::fs;

/// Fields of `/proc/<pid>/stat` the tests need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    /// R, S, D, T, t, Z, X, …
    pub state: char,
    pub ppid: i32,
    pub pgid: i32,
    /// Field 22: start time in clock ticks since boot (a reused pid has another).
    pub start: u64,
}

impl Stat {
    /// Exists and is not a zombie (nor dead).
    pub fn running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

pub fn stat(pid: i32) -> Option<Stat> {
    if pid <= 0 {
        return None;
    }
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let after = text.rfind(')')?;
    let f: Vec<&str> = text[after + 1..].split_whitespace().collect();
    Some(Stat {
        pid,
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgid: f.get(2)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

/// The state letter, None once the process is gone (reaped).
pub fn state(pid: i32) -> Option<char> {
    stat(pid).map(|s| s.state)
}

/// `kill(pid, 0)` succeeds: the pid exists, a zombie included.
pub fn exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks existence and permission.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

/// Exists and is not a zombie: what "still running" means to every suite.
pub fn running(pid: i32) -> bool {
    stat(pid).is_some_and(|s| s.running())
}

/// Its start time (ticks since boot) if it is running: a pid compared by this is never
/// confused with a later process that reused the number.
pub fn live_start(pid: i32) -> Option<u64> {
    stat(pid).filter(Stat::running).map(|s| s.start)
}

/// The arguments of its command line (empty for a zombie or a kernel thread).
pub fn argv(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|c| *c == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The command line, arguments joined with spaces (for messages).
pub fn cmdline(pid: i32) -> String {
    argv(pid).join(" ")
}

/// Every process visible in /proc.
pub fn table() -> Vec<Stat> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter_map(stat)
        .collect()
}

/// Every running (non-zombie) descendant of `root`, by parent links.
pub fn descendants(root: i32) -> Vec<Stat> {
    let all = table();
    let mut by_parent: BTreeMap<i32, Vec<&Stat>> = BTreeMap::new();
    for p in &all {
        by_parent.entry(p.ppid).or_default().push(p);
    }
    let mut out = vec![];
    let mut stack = vec![root];
    while let Some(pid) = stack.pop() {
        for k in by_parent.get(&pid).into_iter().flatten() {
            stack.push(k.pid);
            if k.running() {
                out.push((*k).clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_running_with_its_own_fields() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert!(s.running());
        // SAFETY: getppid/getpgrp have no preconditions.
        assert_eq!(s.ppid, unsafe { libc::getppid() });
        assert_eq!(s.pgid, unsafe { libc::getpgrp() });
        assert_eq!(live_start(me), Some(s.start));
        assert!(!argv(me).is_empty());
        assert!(stat(0).is_none() && stat(-1).is_none());
    }

    #[test]
    fn a_child_is_a_descendant_then_a_zombie_then_gone() {
        let mut c = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = c.id() as i32;
        let me = std::process::id() as i32;
        assert!(descendants(me).iter().any(|d| d.pid == pid));
        c.kill().unwrap();
        assert!(crate::wait_until(std::time::Duration::from_secs(5), || {
            state(pid) == Some('Z')
        }));
        assert!(!running(pid) && live_start(pid).is_none());
        c.wait().unwrap();
        assert_eq!(state(pid), None);
    }
}
