//! The fake's own copy of the memtomem contract's small grammars: the pid file payload a
//! server writes and the presence marker's name (the store digest is `paths::store_digest`).
//!
//! Kept apart from mm-upgrade's parsers on purpose: written from the contract
//! (docs: memtomem-contract.md §1.5, §1.6, §2.2), never from the engine's code, so the
//! fake is an independent witness of what a real server does. A copy that drifted would
//! make both sides agree on a mistake; `tests/contract_witness.rs` in the mm-upgrade
//! package proptests that the engine reads what this writes (digest, payload, marker).

/// A server's pid file payload: `<pid>\n<port>\n<started>\n`; memtomem-server leaves
/// the port line empty (only `mm web` has one).
pub fn server_payload(pid: i64, port: Option<u16>, started: &str) -> String {
    let port = port.map(|p| p.to_string()).unwrap_or_default();
    format!("{pid}\n{port}\n{started}\n")
}

/// A presence marker's file name: `<pid>-<ppid>-<digest16>-<procid8>-<nonce8>.lock`; a
/// server without a store digest writes sixteen zeros.
pub fn marker_name(pid: u32, ppid: i32, digest: Option<&str>, procid: &str, nonce: &str) -> String {
    format!(
        "{pid}-{ppid}-{}-{procid}-{nonce}.lock",
        digest.unwrap_or("0000000000000000")
    )
}

/// Grammar `<pid>-<ppid>-<16 hex>-<8 hex>-<8 hex>.lock`, lowercase hex only.
pub fn is_marker_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".lock") else {
        return false;
    };
    let parts: Vec<&str> = stem.split('-').collect();
    let dec = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    };
    parts.len() == 5
        && dec(parts[0])
        && dec(parts[1])
        && hex(parts[2], 16)
        && hex(parts[3], 8)
        && hex(parts[4], 8)
}
