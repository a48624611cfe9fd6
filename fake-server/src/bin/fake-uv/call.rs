//! One call of fake-uv and its line in `FAKE_UV_LOG`.

use std::fs;
use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

/// CLOCK_MONOTONIC in ns, as every log of the suite stamps (fake-server's clock).
pub fn mono_ns() -> u64 {
    crate::util::mono_ns() as u64
}

pub fn now_ts() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Process state letter from /proc/<pid>/stat, None if the process is gone.
fn proc_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rfind(')')?;
    stat[after + 1..].trim_start().chars().next()
}

pub fn managed_alive() -> Vec<i32> {
    let Ok(path) = std::env::var("FAKE_UV_MANAGED_PIDS") else {
        return vec![];
    };
    let Ok(text) = fs::read_to_string(path) else {
        return vec![];
    };
    text.split_whitespace()
        .filter_map(|s| s.parse::<i32>().ok())
        .filter(|&pid| pid > 1)
        .filter(|&pid| matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X'))
        .collect()
}

fn log(record: &Value) {
    if let Ok(path) = std::env::var("FAKE_UV_LOG") {
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
            let mut line = record.to_string();
            line.push('\n');
            // One write(2) per line: O_APPEND keeps concurrent writers from interleaving.
            let _ = f.write_all(line.as_bytes());
        }
    }
}

pub struct Call {
    pub argv: Vec<String>,
    pub kind: &'static str,
    pub tool_dir: Option<String>,
    pub bin_dir: Option<String>,
    pub managed_alive: Vec<i32>,
    pub start_mono: u64,
    pub start_ts: f64,
    /// What a successful install, stage or prepare laid out.
    pub installed: Option<Value>,
}

impl Call {
    pub fn finish(&self, code: i32, note: &str) -> ! {
        self.log(Some(code), note);
        std::process::exit(code)
    }

    /// Log the call (it never ends on its own), then hang until killed.
    pub fn hang(&self) -> ! {
        self.log(None, "hanging");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }

    pub fn log(&self, code: Option<i32>, note: &str) {
        log(&json!({
            "event": "call",
            "kind": self.kind,
            "argv": self.argv,
            "uv_tool_dir": self.tool_dir,
            "uv_tool_bin_dir": self.bin_dir,
            "managed_alive": self.managed_alive,
            "pid": std::process::id(),
            "ts": self.start_ts,
            "mono_ns": self.start_mono,
            "end_mono_ns": code.map(|_| mono_ns()),
            "exit_code": code,
            "note": note,
            "installed": self.installed,
        }));
    }
}
