//! Default mode and the real variants (web, legacy, bare): the contract's observable facts.

mod common;

use std::time::Duration;

use common::*;

const GRACE: Duration = Duration::from_millis(300);

#[test]
fn default_writes_real_payload_digest_marker_and_sigterm_cleans_up() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &[]);
    let r = p.ready();
    let pid = p.pid();
    assert_eq!(r["pid"], pid);
    assert_eq!(r["pids"], serde_json::json!([pid]));

    // Runtime dir created 0700; pid file named by the store digest of HOME's default store.
    assert_eq!(mode_bits(&sb.rt), 0o700);
    let digest = digest_of(&format!("{}/.memtomem/memtomem.db", sb.home.display()));
    let pid_file = sb.rt.join(format!("server-{digest}.pid"));
    assert_eq!(ready_path(&r, "pid_file").unwrap(), pid_file);
    assert_eq!(mode_bits(&pid_file), 0o644);
    let stamp = assert_server_payload(&std::fs::read(&pid_file).unwrap(), pid);
    assert_eq!(r["started"], stamp.as_str());
    assert!(is_locked(&pid_file));

    // Presence marker: grammar, our pid and ppid, the same digest, empty, 0644, locked.
    let markers = list(&sb.rt.join("presence"));
    assert_eq!(markers.len(), 1, "{markers:?}");
    let (mpid, mppid, mdigest, procid, _) = marker_fields(&markers[0]).expect("grammar");
    assert_eq!((mpid, mppid as u32), (pid, std::process::id()));
    assert_eq!(mdigest, digest);
    assert_eq!(r["procid"], procid.as_str());
    let marker = sb.rt.join("presence").join(&markers[0]);
    assert_eq!(ready_path(&r, "presence").unwrap(), marker);
    assert_eq!(std::fs::metadata(&marker).unwrap().len(), 0);
    assert_eq!(mode_bits(&marker), 0o644);
    assert!(is_locked(&marker));
    // `~/.memtomem` is not created by a handshake-only server.
    assert!(!sb.home.join(".memtomem").exists());

    kill(pid, libc::SIGTERM);
    let st = p
        .wait_exit(Duration::from_secs(2))
        .expect("exits on SIGTERM");
    assert_eq!(st.code(), Some(0));
    assert!(!pid_file.exists());
    assert!(!marker.exists());
    assert_eq!(list(&sb.rt), vec!["instances.registry.lock", "presence"]);
    let ev = p.events();
    let kinds: Vec<&str> = ev.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"start"));
    assert!(kinds.contains(&"ready"));
    let last = ev.last().unwrap();
    assert_eq!(last["event"], "exit");
    assert_eq!(last["code"], 0);
    assert_eq!(last["how"], "sigterm-cleanup");
    for e in &ev {
        assert_eq!(e["pid"], pid);
        assert!(is_iso_stamp(e["ts"].as_str().unwrap()));
        assert!(e["mono_ns"].as_u64().unwrap() > 0);
    }
}

#[test]
fn stdin_eof_is_a_clean_shutdown() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &[]);
    let r = p.ready();
    let pid_file = ready_path(&r, "pid_file").unwrap();
    let marker = ready_path(&r, "presence").unwrap();
    p.close_stdin();
    assert_eq!(p.wait_exit(Duration::from_secs(2)).unwrap().code(), Some(0));
    assert!(!pid_file.exists() && !marker.exists());
    assert_eq!(p.events().last().unwrap()["how"], "stdin-eof");
}

#[test]
fn sighup_and_sigkill_leave_stale_unlocked_files() {
    use std::os::unix::process::ExitStatusExt;
    for sig in [libc::SIGHUP, libc::SIGKILL] {
        let sb = Sandbox::new();
        let mut p = sb.spawn("s", &[]);
        let r = p.ready();
        kill(p.pid(), sig);
        let st = p.wait_exit(Duration::from_secs(2)).unwrap();
        assert_eq!(st.signal(), Some(sig));
        let pid_file = ready_path(&r, "pid_file").unwrap();
        let marker = ready_path(&r, "presence").unwrap();
        assert_server_payload(&std::fs::read(&pid_file).unwrap(), p.pid());
        assert!(!is_locked(&pid_file) && marker.exists() && !is_locked(&marker));
    }
}

#[test]
fn sigint_waits_for_stdin_eof_then_dies_by_sigint_after_cleanup() {
    use std::os::unix::process::ExitStatusExt;
    let sb = Sandbox::new();
    let mut p = sb.spawn("s", &[]);
    let r = p.ready();
    kill(p.pid(), libc::SIGINT);
    assert!(
        p.wait_exit(GRACE).is_none(),
        "must not exit while stdin is open"
    );
    p.close_stdin();
    let st = p.wait_exit(Duration::from_secs(2)).unwrap();
    assert_eq!(st.signal(), Some(libc::SIGINT));
    assert!(!ready_path(&r, "pid_file").unwrap().exists());
    assert!(!ready_path(&r, "presence").unwrap().exists());
}

#[test]
fn second_server_on_same_store_warns_and_keeps_running_with_marker_only() {
    let sb = Sandbox::new();
    let mut a = sb.spawn("a", &[]);
    let ra = a.ready();
    let pid_file = ready_path(&ra, "pid_file").unwrap();
    let before = std::fs::read(&pid_file).unwrap();
    let mut b = sb.spawn("b", &[]);
    let rb = b.ready();
    assert_eq!(rb["pid_file"], serde_json::Value::Null);
    let mb = ready_path(&rb, "presence").unwrap();
    assert!(is_locked(&mb));
    assert_eq!(
        b.stderr_text().trim_end(),
        format!(
            "WARNING: Another memtomem-server is already writing to this store (pid file: {}). Concurrent writes may be slow.",
            pid_file.display()
        )
    );
    assert_eq!(std::fs::read(&pid_file).unwrap(), before);
    kill(b.pid(), libc::SIGTERM);
    assert_eq!(b.wait_exit(Duration::from_secs(2)).unwrap().code(), Some(0));
    assert!(!mb.exists());
    assert_eq!(std::fs::read(&pid_file).unwrap(), before);
    assert!(is_locked(&pid_file) && is_locked(&ready_path(&ra, "presence").unwrap()));
}

#[test]
fn store_flag_env_and_undigestable_stores() {
    let sb = Sandbox::new();
    let store = sb.path("x/../stores/my.db");
    let expect = std::fs::canonicalize(sb.dir.path())
        .unwrap()
        .join("stores/my.db");
    let mut p = sb.spawn("flag", &["--store", store.to_str().unwrap()]);
    let r = p.ready();
    let name = format!("server-{}.pid", digest_of(expect.to_str().unwrap()));
    assert_eq!(ready_path(&r, "pid_file").unwrap(), sb.rt.join(&name));
    drop(p);

    let mut c = sb.command(&["--runtime-dir", sb.rt.to_str().unwrap(), "--ready-file"]);
    let ready = sb.path("env.ready");
    c.arg(&ready)
        .env("MEMTOMEM_STORAGE__SQLITE_PATH", "~/other.db");
    let mut p = Proc::start(c, ready, sb.path("env.events"), sb.path("env.stderr"));
    let r = p.ready();
    let name = format!(
        "server-{}.pid",
        digest_of(&format!("{}/other.db", sb.home.display()))
    );
    assert_eq!(ready_path(&r, "pid_file").unwrap(), sb.rt.join(name));
    drop(p);

    for (tag, store) in [("mem", ":memory:"), ("uri", "file:x.db?mode=ro")] {
        let mut p = sb.spawn(tag, &["--store", store]);
        let r = p.ready();
        assert_eq!(
            ready_path(&r, "pid_file").unwrap(),
            sb.rt.join("server.pid")
        );
        let marker = ready_path(&r, "presence").unwrap();
        let (_, _, d, _, _) = marker_fields(marker.file_name().unwrap().to_str().unwrap()).unwrap();
        assert_eq!(d, "0000000000000000");
    }
}

#[test]
fn unsafe_runtime_dirs_are_refused_with_path_and_reason() {
    use std::os::unix::fs::PermissionsExt;
    let sb = Sandbox::new();
    std::fs::create_dir(&sb.rt).unwrap();
    std::fs::set_permissions(&sb.rt, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut p = sb.spawn("perm", &[]);
    assert_eq!(p.wait_exit(Duration::from_secs(2)).unwrap().code(), Some(1));
    let err = p.stderr_text();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(sb.rt.to_str().unwrap()) && err.contains("unsafe permissions 0o755"),
        "{err}"
    );
    assert_eq!(
        mode_bits(&sb.rt),
        0o755,
        "an existing dir is never chmod-ed"
    );

    std::fs::set_permissions(&sb.rt, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut p = sb.spawn("owner", &[]);
    assert_eq!(p.wait_exit(Duration::from_secs(2)).unwrap().code(), Some(1));
    assert!(p.stderr_text().contains("missing owner access 0o600"));

    std::fs::set_permissions(&sb.rt, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = sb.path("rt-link");
    std::os::unix::fs::symlink(&sb.rt, &link).unwrap();
    let mut c = sb.command(&["--runtime-dir", link.to_str().unwrap()]);
    c.stderr(std::fs::File::create(sb.path("l.stderr")).unwrap());
    let mut p = Proc::start(c, sb.path("l.ready"), sb.path("l.ev"), sb.path("l.stderr"));
    assert_eq!(p.wait_exit(Duration::from_secs(2)).unwrap().code(), Some(1));
    assert!(p.stderr_text().contains(": symlink"), "{}", p.stderr_text());
}

#[test]
fn memtomem_test_override_is_honoured_only_under_pytest() {
    let sb = Sandbox::new();
    let ready = sb.path("o.ready");
    let mut c = sb.command(&["--ready-file", ready.to_str().unwrap()]);
    c.env("_MEMTOMEM_TEST_RUNTIME_DIR", &sb.rt)
        .env("PYTEST_CURRENT_TEST", "1")
        .stderr(std::fs::File::create(sb.path("o.stderr")).unwrap());
    let mut p = Proc::start(c, ready, sb.path("o.ev"), sb.path("o.stderr"));
    let r = p.ready();
    assert_eq!(ready_path(&r, "runtime_dir").unwrap(), sb.rt);
    assert!(ready_path(&r, "pid_file").unwrap().starts_with(&sb.rt));
    // FAKE_SERVER_RUNTIME_DIR works like --runtime-dir.
    let rt2 = sb.path("rt2");
    let ready = sb.path("e.ready");
    let mut c = sb.command(&[
        "--ready-file",
        ready.to_str().unwrap(),
        "--store",
        ":memory:",
    ]);
    c.env("FAKE_SERVER_RUNTIME_DIR", &rt2);
    let mut p = Proc::start(c, ready, sb.path("e.ev"), sb.path("e.stderr"));
    assert_eq!(
        ready_path(&p.ready(), "pid_file").unwrap(),
        rt2.join("server.pid")
    );
}

#[test]
fn web_mode_writes_web_pid_and_sorted_web_json_and_cleans_json_first() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("w", &["--web", "--port", "18081"]);
    let r = p.ready();
    let pid = p.pid();
    let web_pid = sb.rt.join("web.pid");
    assert_eq!(ready_path(&r, "pid_file").unwrap(), web_pid);
    assert_eq!(r["presence"], serde_json::Value::Null);
    assert!(!sb.rt.join("presence").exists());
    let payload = std::fs::read_to_string(&web_pid).unwrap();
    let lines: Vec<&str> = payload.split('\n').collect();
    assert_eq!(lines.len(), 4, "{payload:?}");
    assert_eq!(
        (lines[0], lines[1], lines[3]),
        (pid.to_string().as_str(), "18081", "")
    );
    assert!(is_iso_stamp(lines[2]));
    assert!(is_locked(&web_pid));
    let json = std::fs::read_to_string(sb.rt.join("web.json")).unwrap();
    assert_eq!(
        json,
        format!(
            "{{\"pid\": {pid}, \"port\": 18081, \"procid\": \"{}\", \"started\": \"{}\"}}\n",
            r["procid"].as_str().unwrap(),
            lines[2]
        )
    );
    // A second web UI refuses.
    let mut q = sb.spawn("w2", &["--web"]);
    assert_eq!(q.wait_exit(Duration::from_secs(3)).unwrap().code(), Some(1));
    assert!(q
        .stderr_text()
        .contains("memtomem Web UI is already running"));
    kill(pid, libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(2)).unwrap().code(), Some(0));
    assert!(!web_pid.exists() && !sb.rt.join("web.json").exists());
}

#[test]
fn legacy_pre_0_1_25_holds_home_pid_file_exclusively() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("l", &["--legacy", "pre-0.1.25"]);
    let r = p.ready();
    let legacy = sb.home.join(".memtomem/.server.pid");
    assert_eq!(ready_path(&r, "pid_file").unwrap(), legacy);
    assert_eq!(
        std::fs::read_to_string(&legacy).unwrap(),
        p.pid().to_string()
    );
    assert!(is_locked(&legacy));
    // Exclusive: a shared probe is refused too.
    let f = std::fs::File::open(&legacy).unwrap();
    // SAFETY: flock on our descriptor.
    let sh = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_SH | libc::LOCK_NB,
        )
    };
    assert_ne!(sh, 0);
    assert_eq!(r["presence"], serde_json::Value::Null);
    kill(p.pid(), libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(2)).unwrap().code(), Some(0));
    assert!(
        legacy.exists(),
        "pre-0.1.25 never unlinked its pid file (#437)"
    );
}

#[test]
fn legacy_alias_holds_bare_pid_exclusive_and_home_file_shared() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("a", &["--legacy", "alias"]);
    let r = p.ready();
    let legacy = sb.home.join(".memtomem/.server.pid");
    let bare = sb.rt.join("server.pid");
    assert_eq!(ready_path(&r, "pid_file").unwrap(), bare);
    assert!(is_locked(&bare));
    assert!(
        is_locked(&legacy),
        "EX probe conflicts with a shared holder"
    );
    let f = std::fs::File::open(&legacy).unwrap();
    // SAFETY: flock on our descriptor.
    let sh = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_SH | libc::LOCK_NB,
        )
    };
    assert_eq!(sh, 0, "a shared probe succeeds: this is the modern alias");
    drop(f);
    kill(p.pid(), libc::SIGTERM);
    assert_eq!(p.wait_exit(Duration::from_secs(2)).unwrap().code(), Some(0));
    assert!(!bare.exists() && !legacy.exists());
}

#[test]
fn bare_uses_server_pid_with_zero_digest_marker() {
    let sb = Sandbox::new();
    let mut p = sb.spawn("b", &["--bare"]);
    let r = p.ready();
    let bare = sb.rt.join("server.pid");
    assert_eq!(ready_path(&r, "pid_file").unwrap(), bare);
    assert_server_payload(&std::fs::read(&bare).unwrap(), p.pid());
    let m = ready_path(&r, "presence").unwrap();
    assert!(m
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .contains("-0000000000000000-"));
}

#[test]
fn presence_registration_gcs_only_old_unlocked_markers() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.rt.join("presence")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sb.rt, std::fs::Permissions::from_mode(0o700)).unwrap();
    let old = sb
        .rt
        .join("presence/1111-1-0000000000000000-aaaaaaaa-bbbbbbbb.lock");
    let young = sb
        .rt
        .join("presence/2222-1-0000000000000000-aaaaaaaa-cccccccc.lock");
    for f in [&old, &young] {
        std::fs::write(f, b"").unwrap();
    }
    let past = std::time::SystemTime::now() - Duration::from_secs(120);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(past)
        .unwrap();
    let mut p = sb.spawn("g", &[]);
    p.ready();
    assert!(!old.exists(), "stale marker older than 60 s is GC'd");
    assert!(
        young.exists(),
        "a younger unlocked marker counts as starting"
    );
}

#[test]
fn help_lists_every_mode_on_one_line() {
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for m in [
        "ignore-sigterm",
        "slow-shutdown=MS",
        "leak-pidfile",
        "exit-code-on-term=N",
        "fork-children=N",
        "children-close-lock",
        "child-holds-flock",
        "daemonize",
        "respawn[=MS]",
        "respawn-on-term",
        "lock-before-payload=MS",
        "crash-on-start",
        "stopped",
        "zombie",
        "secondary",
        "corrupt-pidfile=KIND",
        "pidfile-symlink",
        "pidfile-fifo",
        "unsafe-runtime-dir=KIND",
        "db-writer",
        "old-generation=PATH",
        "maps=PATH",
        "hang-initialize",
        "crash-on-initialize",
        "slow-start=MS",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{m} "))),
            "{m} missing:\n{text}"
        );
    }
    let bad = std::process::Command::new(BIN)
        .args(["--mode", "nope"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
