//! The fake's copy of the memtomem contract against the engine's (issue 11, point 3):
//! fake-server keeps its own digest, pid file payload and presence-marker grammar on
//! purpose (an independent witness: fake-server/src/contract.rs), and these proptests
//! show the engine reads what the fake writes, on random inputs.
//!
//! The fake's modules are compiled in here by path: the same source files fake-server
//! builds, no copy. Inputs stay within what a real server can write: `~` and `~/…` (not
//! `~user`, which Python expands and the engine does not), pids that fit an i64.

#[allow(dead_code)]
#[path = "../fake-server/src/contract.rs"]
mod fake_contract;
#[allow(dead_code)]
#[path = "../fake-server/src/paths.rs"]
mod fake_paths;
#[allow(dead_code)]
#[path = "../fake-server/src/util.rs"]
mod fake_util;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use mm_upgrade::{paths, pidfile};
use proptest::prelude::*;

/// A scratch tree both sides resolve paths in: a dir, a link to it, a link loop, and
/// HOME (set once for this test process: the fake's `expanduser` reads it).
fn tree() -> &'static (tempfile::TempDir, PathBuf) {
    static TREE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    TREE.get_or_init(|| {
        let t = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(t.path()).unwrap();
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        std::fs::create_dir_all(root.join("home/.memtomem")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("link")).unwrap();
        std::os::unix::fs::symlink("sub/../..", root.join("real/up")).unwrap();
        std::os::unix::fs::symlink(root.join("loop2"), root.join("loop1")).unwrap();
        std::os::unix::fs::symlink(root.join("loop1"), root.join("loop2")).unwrap();
        std::env::set_var("HOME", root.join("home"));
        (t, root)
    })
}

fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_.-]{1,6}",
        Just("..".to_string()),
        Just(".".to_string()),
        Just("".to_string()),
        Just("real".to_string()),
        Just("link".to_string()),
        Just("up".to_string()),
        Just("sub".to_string()),
        Just("loop1".to_string()),
        Just("memtomem.db".to_string()),
    ]
}

/// A store path as a user could configure it.
fn store_text() -> impl Strategy<Value = String> {
    let prefix = prop_oneof![
        Just("{root}/".to_string()),
        Just("{root}//".to_string()),
        Just("~".to_string()),
        Just("~/".to_string()),
        Just("".to_string()),
        Just("/".to_string()),
        Just("file:".to_string()),
        Just(":memory:".to_string()),
    ];
    (
        prefix,
        prop::collection::vec(component(), 0..6),
        any::<bool>(),
    )
        .prop_map(|(p, parts, slash)| {
            if p == ":memory:" {
                return p;
            }
            let mut s = p + &parts.join("/");
            if slash {
                s.push('/');
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_store_digest_is_the_same(text in store_text()) {
        let (_t, root) = tree();
        let text = text.replace("{root}", &root.to_string_lossy());
        let home = Path::new(&std::env::var_os("HOME").unwrap()).to_path_buf();
        let fake = fake_paths::store_digest(OsStr::new(&text));
        let engine = paths::store_digest(&text, &home);
        prop_assert_eq!(fake, engine, "store path {:?}", text);
    }

    #[test]
    fn the_engine_reads_the_fakes_pid_payload(
        pid in -1_000_000_000_000i64..1_000_000_000_000,
        port in proptest::option::of(1u16..),
        secs in 0i64..4_102_444_800,
        micros in prop_oneof![Just(0u32), 0u32..1_000_000],
    ) {
        let stamp = fake_util::iso_from(secs, micros);
        let bytes = fake_contract::server_payload(pid, port, &stamp);
        let p = pidfile::parse_payload(bytes.as_bytes());
        prop_assert_eq!(p.pid, Some(pid), "{:?}", bytes);
        prop_assert_eq!(p.port, port.map(i64::from), "{:?}", bytes);
        prop_assert_eq!(p.started.as_deref(), Some(stamp.as_str()), "{:?}", bytes);
        prop_assert!(p.unreadable.is_none(), "{:?}", bytes);
        let t = p.started_at().expect("the engine parses the fake's stamp");
        prop_assert_eq!(t.unix_timestamp(), secs, "{}", stamp);
        prop_assert_eq!(t.microsecond(), micros, "{}", stamp);
        // Only 2..=i32::MAX is ever a signal target, whatever the fake wrote.
        let target = (pid > 1 && pid <= i32::MAX as i64).then_some(pid as i32);
        prop_assert_eq!(p.signalable_pid(), target);
    }

    #[test]
    fn the_engine_parses_the_fakes_marker_names(
        pid in any::<u32>(),
        ppid in 0i32..,
        digest in proptest::option::of("[0-9a-f]{16}"),
        procid in "[0-9a-f]{8}",
        nonce in "[0-9a-f]{8}",
    ) {
        let name = fake_contract::marker_name(pid, ppid, digest.as_deref(), &procid, &nonce);
        prop_assert!(fake_contract::is_marker_name(&name), "{}", name);
        let m = pidfile::parse_marker_name(&name).expect("the engine parses it");
        prop_assert_eq!(m.pid, pid as i64);
        prop_assert_eq!(m.ppid, ppid as i64);
        prop_assert_eq!(m.digest, digest.unwrap_or_else(|| "0".repeat(16)));
        prop_assert_eq!(m.procid, procid);
    }

    #[test]
    fn both_grammars_accept_the_same_marker_names(
        parts in prop::collection::vec(
            prop_oneof!["[0-9]{1,18}", "[0-9a-f]{8}", "[0-9a-f]{16}", "[0-9a-fA-Fg-]{0,17}"],
            0..7,
        ),
        suffix in prop_oneof![Just(".lock"), Just(".lck"), Just(""), Just(".lock.tmp")],
    ) {
        let name = format!("{}{suffix}", parts.join("-"));
        prop_assert_eq!(
            fake_contract::is_marker_name(&name),
            pidfile::parse_marker_name(&name).is_some(),
            "{:?}", name
        );
    }
}
