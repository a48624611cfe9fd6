//! Signal names and wait statuses, spelled as the scenario files and event logs spell
//! them: `SIGTERM`, `exited(0)`, `killed(SIGKILL)`.

const NAMES: &[(i32, &str)] = &[
    (libc::SIGHUP, "SIGHUP"),
    (libc::SIGINT, "SIGINT"),
    (libc::SIGQUIT, "SIGQUIT"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGTRAP, "SIGTRAP"),
    (libc::SIGABRT, "SIGABRT"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGKILL, "SIGKILL"),
    (libc::SIGUSR1, "SIGUSR1"),
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGUSR2, "SIGUSR2"),
    (libc::SIGPIPE, "SIGPIPE"),
    (libc::SIGALRM, "SIGALRM"),
    (libc::SIGTERM, "SIGTERM"),
    (libc::SIGCHLD, "SIGCHLD"),
    (libc::SIGCONT, "SIGCONT"),
    (libc::SIGSTOP, "SIGSTOP"),
    (libc::SIGTSTP, "SIGTSTP"),
];

/// `SIGTERM`, …; `SIG<n>` for one without a name here.
pub fn name(sig: i32) -> String {
    NAMES
        .iter()
        .find(|(n, _)| *n == sig)
        .map_or_else(|| format!("SIG{sig}"), |(_, s)| s.to_string())
}

/// The number of `SIGTERM`, … (or `SIG<n>`); None for anything else.
pub fn number(name: &str) -> Option<i32> {
    NAMES
        .iter()
        .find(|(_, s)| *s == name)
        .map(|(n, _)| *n)
        .or_else(|| {
            name.strip_prefix("SIG")?
                .parse()
                .ok()
                .filter(|n| (1..=64).contains(n))
        })
}

/// A wait status as `exited(N)` or `killed(SIGX)` (`status(raw)` otherwise).
pub fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited({})", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed({})", name(libc::WTERMSIG(status)))
    } else {
        format!("status({status})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (n, s) in NAMES {
            assert_eq!(name(*n), *s);
            assert_eq!(number(s), Some(*n));
        }
        assert_eq!(name(40), "SIG40");
        assert_eq!(number("SIG40"), Some(40));
        assert_eq!(number("SIGFOO"), None);
        assert_eq!(number("TERM"), None);
    }

    #[test]
    fn statuses_read_like_the_scenarios() {
        assert_eq!(describe_status(0), "exited(0)");
        assert_eq!(describe_status(3 << 8), "exited(3)");
        assert_eq!(describe_status(libc::SIGKILL), "killed(SIGKILL)");
    }
}
