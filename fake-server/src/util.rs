//! Time stamps, the JSON-lines event log and the ready file.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// Python's `datetime.now(UTC).isoformat()`: microseconds, and no fraction at all when
/// they are exactly zero (upgraders must parse both forms, so we reproduce both).
pub fn iso_now() -> String {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    iso_from(ts.tv_sec, (ts.tv_nsec / 1000) as u32)
}

pub fn iso_from(secs: i64, micros: u32) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (sod / 3600, (sod / 60) % 60, sod % 60);
    if micros == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}+00:00")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{micros:06}+00:00")
    }
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian), avoiding a date crate.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

pub fn mono_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as above.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

/// Appends one JSON object per line. Each line goes out in a single `write(2)` on an
/// `O_APPEND` descriptor, so lines from the supervisor, workers and children (which all
/// share the file) never interleave. Signals are handled in the main loop (self-pipe),
/// so logging never runs inside a signal handler.
#[derive(Clone)]
pub struct Events {
    fd: Option<i32>,
}

impl Events {
    pub fn open(path: Option<&Path>) -> Events {
        let fd = path.and_then(|p| {
            let c = CString::new(p.as_os_str().as_bytes()).ok()?;
            // SAFETY: plain open(2) on a NUL-terminated path.
            let fd = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd < 0 {
                eprintln!(
                    "fake-server: cannot open events file {}: {}",
                    p.display(),
                    std::io::Error::last_os_error()
                );
                None
            } else {
                Some(fd)
            }
        });
        Events { fd }
    }

    pub fn emit(&self, event: &str, extra: Value) {
        let Some(fd) = self.fd else { return };
        let mut obj = Map::new();
        obj.insert("ts".into(), json!(iso_now()));
        obj.insert("mono_ns".into(), json!(mono_ns() as u64));
        obj.insert("pid".into(), json!(std::process::id()));
        obj.insert("event".into(), json!(event));
        if let Value::Object(m) = extra {
            obj.extend(m);
        }
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        // SAFETY: writing our own buffer to our own descriptor.
        unsafe { libc::write(fd, line.as_ptr().cast(), line.len()) };
    }
}

/// Writes `v` and a newline to `path` through a temp file and a rename, so a poller
/// never reads a half-written object.
pub fn write_json_atomic(path: &Path, v: &Value) -> std::io::Result<()> {
    let mut tmp = PathBuf::from(path);
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp.{}", std::process::id()));
    tmp.set_file_name(name);
    std::fs::write(&tmp, format!("{v}\n"))?;
    std::fs::rename(&tmp, path)
}

/// 4 random bytes as 8 lowercase hex (Python's `secrets.token_hex(4)`).
pub fn hex8() -> String {
    let mut b = [0u8; 4];
    // SAFETY: getentropy fills our 4-byte buffer (Linux and macOS alike).
    let rc = unsafe { libc::getentropy(b.as_mut_ptr().cast(), 4) };
    if rc != 0 {
        // Fall back to time+pid; uniqueness, not secrecy, is what matters here.
        let x = (mono_ns() as u32) ^ std::process::id().rotate_left(16);
        b = x.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn iso_format_matches_python() {
        assert_eq!(iso_from(0, 0), "1970-01-01T00:00:00+00:00");
        // 2026-11-26T11:32:39.333969+00:00 (contract §8)
        assert_eq!(
            iso_from(1_795_692_759, 333_969),
            "2026-11-26T11:32:39.333969+00:00"
        );
        assert_eq!(iso_from(951_782_400, 5), "2000-02-29T00:00:00.000005+00:00");
    }
}
