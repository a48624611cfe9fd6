//! Parsers of `/proc` texts (stat, status, maps, fdinfo): pure functions,
//! so their edge cases are unit-tested on fixed strings.

use crate::sys::{LockKind, Mapping, ProcStat, RunState};

/// Parse `/proc/<pid>/stat`. The command name may contain spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text[open + 1..close].to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let state = match rest.first()?.chars().next()? {
        'Z' | 'X' | 'x' => RunState::Zombie,
        'T' | 't' => RunState::Stopped,
        _ => RunState::Live,
    };
    Some(ProcStat {
        pid,
        ppid: rest.get(1)?.parse().ok()?,
        pgrp: rest.get(2)?.parse().ok()?,
        session: rest.get(3)?.parse().ok()?,
        state,
        start_ticks: rest.get(19)?.parse().ok()?,
        comm,
        uid: None,
    })
}

/// Field 7 of `/proc/<pid>/stat`, `tty_nr`: 0 when there is no
/// controlling terminal.
pub fn parse_tty_nr(text: &str) -> Option<i64> {
    let close = text.rfind(')')?;
    text[close + 1..].split_whitespace().nth(4)?.parse().ok()
}

/// The `SigIgn` mask of `/proc/<pid>/status`.
pub fn parse_sig_ign(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Parse `/proc/<pid>/maps`, keeping one entry per file. The kernel appends
/// ` (deleted)` to unlinked files; a file really named that way is told apart
/// by the caller comparing inodes, never by the suffix alone.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    let mut out: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        // address perms offset dev inode path
        let mut parts = line.splitn(6, ' ');
        let (_, _, _, _) = (parts.next(), parts.next(), parts.next(), parts.next());
        let inode: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let Some(path) = parts.next().map(str::trim_start) else {
            continue;
        };
        if inode == 0 || !path.starts_with('/') {
            continue;
        }
        let (path, deleted) = match path.strip_suffix(" (deleted)") {
            Some(p) => (p.to_string(), true),
            None => (path.to_string(), false),
        };
        if !out.iter().any(|m| m.path == path && m.inode == inode) {
            out.push(Mapping {
                path,
                deleted,
                inode,
            });
        }
    }
    out
}

/// The FLOCK kind from an fdinfo body, if any. Lines look like
/// `lock:\t1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF`.
pub fn parse_fdinfo_flock(text: &str) -> Option<LockKind> {
    text.lines()
        .filter(|l| l.starts_with("lock:"))
        .filter(|l| l.contains("FLOCK"))
        .find_map(|l| {
            if l.contains(" WRITE ") {
                Some(LockKind::Write)
            } else if l.contains(" READ ") {
                Some(LockKind::Read)
            } else {
                None
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_comm_with_spaces_and_parens() {
        let line =
            "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 98765 0 0";
        let st = parse_stat(line).unwrap();
        assert_eq!(st.pid, 4242);
        assert_eq!(st.comm, "a (weird) name");
        assert_eq!(st.ppid, 1);
        assert_eq!(st.state, RunState::Live);
        assert_eq!(st.start_ticks, 98765);
    }

    #[test]
    fn stat_states_map_to_zombie_and_stopped() {
        let z = "7 (x) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0";
        let t = "7 (x) T 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat(z).unwrap().state, RunState::Zombie);
        assert_eq!(parse_stat(t).unwrap().state, RunState::Stopped);
    }

    #[test]
    fn stat_tty_nr_is_field_7() {
        let line = "42 (a) b) S 1 42 42 34816 42 4194560 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0";
        assert_eq!(parse_tty_nr(line), Some(34816));
        assert_eq!(parse_tty_nr(&line.replace(" 34816 ", " 0 ")), Some(0));
    }

    #[test]
    fn status_reads_sigign_mask() {
        let m = parse_sig_ign("Name:\tx\nUid:\t1000\t1000\t1000\t1000\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000004000\nSigCgt:\t0000000000000002\n").unwrap();
        assert_ne!(m & crate::sys::sig_bit(libc::SIGTERM), 0);
        assert_eq!(m & crate::sys::sig_bit(libc::SIGINT), 0);
    }

    #[test]
    fn fdinfo_lock_lines_are_recognised() {
        let w = "pos:\t0\nflags:\t02\nmnt_id:\t1\nino:\t5\nlock:\t1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF\n";
        let r = "lock:\t1: FLOCK  ADVISORY  READ 1234 fd:01:5678 0 EOF\n";
        let posix = "lock:\t1: POSIX  ADVISORY  WRITE 1234 fd:01:5678 0 EOF\n";
        assert_eq!(parse_fdinfo_flock(w), Some(LockKind::Write));
        assert_eq!(parse_fdinfo_flock(r), Some(LockKind::Read));
        assert_eq!(parse_fdinfo_flock(posix), None);
        assert_eq!(parse_fdinfo_flock("pos:\t0\n"), None);
    }

    #[test]
    fn maps_marks_deleted_files_and_dedups() {
        let text = "7f00-7f01 r--p 00000000 fd:01 123 /t/memtomem/lib/a.so (deleted)\n\
                    7f01-7f02 r-xp 00001000 fd:01 123 /t/memtomem/lib/a.so (deleted)\n\
                    7f02-7f03 rw-p 00000000 00:00 0 \n\
                    7f03-7f04 r--p 00000000 fd:01 456 /usr/lib/libc.so.6\n";
        let m = parse_maps(text);
        assert_eq!(m.len(), 2);
        assert!(m[0].deleted && m[0].path == "/t/memtomem/lib/a.so");
        assert!(!m[1].deleted);
    }
}
