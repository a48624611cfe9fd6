//! The MCP stdio transport of `memtomem-server` 0.6.12, as far as a lifecycle double
//! needs it: newline-delimited JSON-RPC 2.0 on stdin, one JSON object per line on stdout.
//!
//! Answered: `initialize`, `ping`, `tools/list`; `notifications/*` are read and not
//! answered; any other request gets -32601. What the real server (mcp 2.3.0) does with
//! odd input is copied: a line that is not a JSON-RPC 2.0 object gets no answer, and an
//! `initialize` without a string `protocolVersion` gets -32602.
//!
//! Every JSON object below is built with its keys in sorted order, which is the order the
//! real server writes them in, whether or not serde_json preserves insertion order.

use serde_json::{json, Value};

use crate::faults::OnMcp;
use crate::util::Events;

/// Protocol revisions the real server's SDK (mcp 2.3.0) negotiates through `initialize`,
/// oldest first. A client asking for one of them gets it back; any other request gets the
/// newest (mcp's `LATEST_HANDSHAKE_VERSION`), as observed from a real 0.6.12.
pub const HANDSHAKE_VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

pub const INSTRUCTIONS: &str = "memtomem — fake-server double";

/// What the main loop has to do after a chunk of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Continue,
    /// `crash-on-initialize`: the server dies (the caller cleans up and exits 1).
    Crash,
}

/// The result of one read(2) on stdin.
pub enum Input {
    Bytes(Vec<u8>),
    Eof,
    /// Nothing this time (EINTR, EAGAIN).
    Nothing,
}

/// Reads what is available on fd 0. Errors other than EINTR/EAGAIN mean no more input.
pub fn read_stdin() -> Input {
    let mut buf = [0u8; 8192];
    // SAFETY: reading into our buffer; poll said fd 0 is ready, so this does not block
    // for long (a TTY in canonical mode delivers a line or EOF).
    let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = std::io::Error::last_os_error().raw_os_error();
        return match e {
            Some(libc::EINTR) | Some(libc::EAGAIN) => Input::Nothing,
            _ => Input::Eof,
        };
    }
    if n == 0 {
        Input::Eof
    } else {
        Input::Bytes(buf[..n as usize].to_vec())
    }
}

/// `slow-start=MS`: Python's import time, before the real server's first statement.
/// Signals keep their default action (SIGTERM kills at once, leaving nothing behind) and
/// stdin waits in its pipe. Returns the start stamp, taken afterwards.
pub fn slow_start(d: std::time::Duration, ev: &Events) -> String {
    ev.emit("slow-start", json!({"ms": d.as_millis() as u64}));
    std::thread::sleep(d);
    crate::util::iso_now()
}

impl crate::Server {
    /// fd 0 is readable: MCP requests to answer, or EOF (a clean shutdown).
    pub(crate) fn on_stdin(&mut self) {
        match read_stdin() {
            // SIGINT cancelled the event loop: input is read, never answered.
            Input::Nothing | Input::Bytes(_) if self.io.sigint_seen => {}
            Input::Nothing => {}
            Input::Bytes(b) => {
                if self.mcp.feed(&b, &self.ev) == Outcome::Crash {
                    // An exception out of the initialize handler: Python prints the
                    // traceback, runs its atexit cleanup (pid file, presence marker) and
                    // exits 1.
                    eprintln!("Traceback (most recent call last):");
                    eprintln!("RuntimeError: fake-server: crash-on-initialize");
                    self.exit(1, "crash-on-initialize", true)
                }
            }
            Input::Eof => self.on_stdin_eof(),
        }
    }
}

/// The supervisor's stdin: true on EOF. What it reads is dropped (it speaks no MCP).
pub fn stdin_eof() -> bool {
    matches!(read_stdin(), Input::Eof)
}

pub struct Session {
    version: String,
    hang_initialize: bool,
    crash_on_initialize: bool,
    /// `hang-initialize` read its initialize: from now on nothing is answered.
    hung: bool,
    buf: Vec<u8>,
}

impl Session {
    pub fn new(version: &str, m: OnMcp) -> Session {
        Session {
            version: version.to_string(),
            hang_initialize: m.hang_initialize,
            crash_on_initialize: m.crash_on_initialize,
            hung: false,
            buf: Vec::new(),
        }
    }

    /// Takes a chunk of stdin and handles every complete line in it.
    pub fn feed(&mut self, bytes: &[u8], ev: &Events) -> Outcome {
        self.buf.extend_from_slice(bytes);
        while let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            if self.handle_line(&line, ev) == Outcome::Crash {
                return Outcome::Crash;
            }
        }
        Outcome::Continue
    }

    fn handle_line(&mut self, line: &[u8], ev: &Events) -> Outcome {
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text.is_empty() {
            return Outcome::Continue;
        }
        let msg: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                ev.emit(
                    "mcp",
                    json!({"action": "ignored", "error": format!("not JSON: {e}")}),
                );
                return Outcome::Continue;
            }
        };
        let method = msg.get("method").and_then(Value::as_str);
        let id = msg.get("id").filter(|i| i.is_string() || i.is_number());
        let (Some(method), true) = (method, msg.get("jsonrpc") == Some(&json!("2.0"))) else {
            ev.emit(
                "mcp",
                json!({"action": "ignored", "error": "not a JSON-RPC 2.0 request or notification"}),
            );
            return Outcome::Continue;
        };
        let Some(id) = id.cloned() else {
            // A notification (`notifications/initialized`, `notifications/cancelled`, ...).
            ev.emit("mcp", json!({"action": "notification", "method": method}));
            return Outcome::Continue;
        };
        if self.hung {
            ev.emit("mcp", json!({"action": "hang", "id": id, "method": method}));
            return Outcome::Continue;
        }
        if method == "initialize" {
            if self.crash_on_initialize {
                ev.emit(
                    "mcp",
                    json!({"action": "crash", "id": id, "method": method}),
                );
                return Outcome::Crash;
            }
            if self.hang_initialize {
                self.hung = true;
                ev.emit("mcp", json!({"action": "hang", "id": id, "method": method}));
                return Outcome::Continue;
            }
        }
        let mut e = json!({"id": id, "method": method});
        // The envelope in the real server's key order: jsonrpc, id, then result or error
        // (code, message, data).
        let line = match self.answer(method, msg.get("params")) {
            Ok(result) => {
                e["action"] = json!("answered");
                if let Some(v) = result["protocolVersion"].as_str() {
                    e["protocolVersion"] = json!(v);
                }
                format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#)
            }
            Err((code, message, data)) => {
                e["action"] = json!("error");
                e["code"] = json!(code);
                format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":{},"data":{}}}}}"#,
                    json!(message),
                    json!(data)
                )
            }
        };
        // Logged first: whoever reads the answer finds the event already there.
        ev.emit("mcp", e);
        write_line(line);
        Outcome::Continue
    }

    /// The `result`, or the error's (code, message, data).
    fn answer(
        &self,
        method: &str,
        params: Option<&Value>,
    ) -> Result<Value, (i64, &'static str, String)> {
        match method {
            "initialize" => {
                let Some(asked) = params
                    .and_then(|p| p.get("protocolVersion"))
                    .and_then(Value::as_str)
                else {
                    return Err((-32602, "Invalid request parameters", String::new()));
                };
                Ok(initialize_result(asked, &self.version))
            }
            "ping" => Ok(json!({})),
            "tools/list" => Ok(json!({"tools": [{
                "description": "Search memories (fake-server double: always empty).",
                "inputSchema": {"properties": {}, "type": "object"},
                "name": "mem_search",
            }]})),
            _ => Err((-32601, "Method not found", method.to_string())),
        }
    }
}

/// The `result` of `initialize` for a client that asked for protocol revision `asked`.
pub fn initialize_result(asked: &str, server_version: &str) -> Value {
    let negotiated = if HANDSHAKE_VERSIONS.contains(&asked) {
        asked
    } else {
        HANDSHAKE_VERSIONS[HANDSHAKE_VERSIONS.len() - 1]
    };
    json!({
        "capabilities": {
            "prompts": {"listChanged": false},
            "resources": {"listChanged": false, "subscribe": false},
            "tools": {"listChanged": false},
        },
        "instructions": INSTRUCTIONS,
        "protocolVersion": negotiated,
        "serverInfo": {"name": "memtomem", "version": server_version},
    })
}

/// One line on fd 1, written whole. A reader that went away is ignored (SIGPIPE is
/// ignored in Rust programs, so that is EPIPE here, not a death).
fn write_line(mut line: String) {
    line.push('\n');
    let mut rest = line.as_bytes();
    while !rest.is_empty() {
        // SAFETY: writing our own buffer to fd 1.
        let n = unsafe { libc::write(1, rest.as_ptr().cast(), rest.len()) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        rest = &rest[n as usize..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_echoes_a_known_revision_and_falls_back_to_the_newest() {
        for v in HANDSHAKE_VERSIONS {
            assert_eq!(initialize_result(v, "0.6.12")["protocolVersion"], *v);
        }
        for v in ["1999-01-01", "2026-07-28", ""] {
            assert_eq!(
                initialize_result(v, "0.6.12")["protocolVersion"],
                "2025-11-25"
            );
        }
        assert_eq!(
            initialize_result("2025-06-18", "1.2.3")["serverInfo"],
            json!({"name": "memtomem", "version": "1.2.3"})
        );
    }
}
