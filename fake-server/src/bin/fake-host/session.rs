//! One server process and its MCP session: the pipes, the phase, the lines it wrote.

use std::io::Write;
use std::process::{Child, ChildStdin, ChildStdout};
use std::time::Instant;

use serde_json::Value;

pub enum Phase {
    /// `initialize` sent (id 1); killed if unanswered at the deadline.
    Initializing { deadline: Instant },
    /// Answered: pinging.
    Ready {
        next_ping: Instant,
        /// The ping in flight: its id and when it was sent.
        pending: Option<(u64, Instant)>,
        late_logged: bool,
    },
    /// `initialize` failed or timed out: killed, waiting for the death.
    Doomed,
}

pub struct Session {
    pub n: u32,
    pub child: Child,
    pub pid: i32,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub buf: Vec<u8>,
    pub spawned: Instant,
    pub spawned_ns: u64,
    pub phase: Phase,
    pub version: Option<String>,
    pub initialized_at: Option<Instant>,
    pub pings: u64,
    pub next_id: u64,
}

impl Session {
    pub fn send(&mut self, msg: &Value) {
        if let Some(w) = self.stdin.as_mut() {
            let mut line = msg.to_string();
            line.push('\n');
            // A dead server's pipe gives EPIPE (SIGPIPE is ignored in Rust programs): its
            // death is seen through SIGCHLD.
            if w.write_all(line.as_bytes()).is_err() {
                self.stdin = None;
            }
        }
    }

    pub fn kill(&self) {
        // SAFETY: signalling our own child, which we have not reaped yet.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
    }

    /// Reads what the server wrote; returns the complete lines. None at EOF.
    pub fn read_lines(&mut self) -> Option<Vec<Value>> {
        let out = self.stdout.as_mut()?;
        let mut chunk = [0u8; 8192];
        let mut eof = false;
        loop {
            match std::io::Read::read(out, &mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        let mut lines = Vec::new();
        while let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                lines.push(v);
            }
        }
        if eof {
            self.stdout = None;
        }
        Some(lines)
    }
}
