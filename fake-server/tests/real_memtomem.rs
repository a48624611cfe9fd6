//! Side by side with a real `memtomem-server` (set MEMTOMEM_SERVER_BIN). Without it this
//! test compares nothing; under CI that is a failure, not a silent pass.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

struct Shape {
    pid_file_name: String,
    payload_ok: bool,
    pid_mode: u32,
    rt_mode: u32,
    marker_mode: u32,
    marker_len: u64,
    marker_digest: String,
    marker_pid_matches: bool,
    rt_entries: Vec<String>,
}

fn shape(rt: &Path, pid: i32) -> Shape {
    let pids: Vec<String> = list(rt)
        .into_iter()
        .filter(|n| n.ends_with(".pid"))
        .collect();
    assert_eq!(pids.len(), 1, "{pids:?}");
    let pid_path = rt.join(&pids[0]);
    let payload = std::fs::read(&pid_path).unwrap();
    let payload_ok = std::panic::catch_unwind(|| assert_server_payload(&payload, pid)).is_ok();
    let markers = list(&rt.join("presence"));
    assert_eq!(markers.len(), 1, "{markers:?}");
    let m = rt.join("presence").join(&markers[0]);
    let (mpid, _, digest, _, _) = marker_fields(&markers[0]).expect("marker grammar");
    Shape {
        pid_file_name: pids[0].clone(),
        payload_ok,
        pid_mode: mode_bits(&pid_path),
        rt_mode: mode_bits(rt),
        marker_mode: mode_bits(&m),
        marker_len: std::fs::metadata(&m).unwrap().len(),
        marker_digest: digest,
        marker_pid_matches: mpid == pid,
        rt_entries: list(rt),
    }
}

fn spawn_with_override(bin: &str, home: &Path, rt: &Path, log: PathBuf) -> Proc {
    let mut c = Command::new(bin);
    c.env("HOME", home)
        .env("_MEMTOMEM_TEST_RUNTIME_DIR", rt)
        .env("PYTEST_CURRENT_TEST", "1")
        .env_remove("MEMTOMEM_STORAGE__SQLITE_PATH")
        .env_remove("FAKE_SERVER_RUNTIME_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(File::create(&log).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    let dir = rt.parent().unwrap();
    Proc::start(c, dir.join("none.ready"), dir.join("none.events"), log)
}

#[test]
fn default_mode_matches_a_real_memtomem_server() {
    let Some(real) = std::env::var_os("MEMTOMEM_SERVER_BIN") else {
        let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
        assert!(
            !ci,
            "CI is set but MEMTOMEM_SERVER_BIN is not: the real-memtomem comparison would compare nothing"
        );
        println!("MEMTOMEM_SERVER_BIN is unset: compared nothing against a real memtomem-server");
        return;
    };
    let real = real.to_string_lossy().into_owned();
    let sb = Sandbox::new();
    let (rt_real, rt_fake) = (sb.path("rt-real"), sb.path("rt-fake"));

    let mut r = spawn_with_override(&real, &sb.home, &rt_real, sb.path("real.stderr"));
    let ok = wait_until(Duration::from_secs(30), || {
        list(&rt_real).iter().any(|n| n.ends_with(".pid"))
            && std::fs::read(
                rt_real.join(
                    list(&rt_real)
                        .into_iter()
                        .find(|n| n.ends_with(".pid"))
                        .unwrap(),
                ),
            )
            .map(|b| !b.is_empty())
            .unwrap_or(false)
    });
    assert!(ok, "real server wrote no pid file: {}", r.stderr_text());
    let real_shape = shape(&rt_real, r.pid());

    let mut f = spawn_with_override(BIN, &sb.home, &rt_fake, sb.path("fake.stderr"));
    assert!(wait_until(Duration::from_secs(10), || list(&rt_fake)
        .iter()
        .any(|n| n.ends_with(".pid"))));
    // The fake writes its payload right after creating the file; give it that instant.
    assert!(wait_until(Duration::from_secs(2), || shape(
        &rt_fake,
        f.pid()
    )
    .payload_ok));
    let fake_shape = shape(&rt_fake, f.pid());

    assert_eq!(fake_shape.pid_file_name, real_shape.pid_file_name);
    assert!(real_shape.payload_ok && fake_shape.payload_ok);
    assert_eq!(fake_shape.pid_mode, real_shape.pid_mode);
    assert_eq!(fake_shape.rt_mode, real_shape.rt_mode);
    assert_eq!(fake_shape.marker_mode, real_shape.marker_mode);
    assert_eq!((fake_shape.marker_len, real_shape.marker_len), (0, 0));
    assert_eq!(fake_shape.marker_digest, real_shape.marker_digest);
    assert!(real_shape.marker_pid_matches && fake_shape.marker_pid_matches);
    assert_eq!(fake_shape.rt_entries, real_shape.rt_entries);

    // Same SIGTERM outcome: exit 0, own files gone.
    for p in [&mut r, &mut f] {
        kill(p.pid(), libc::SIGTERM);
        assert_eq!(p.wait_exit(Duration::from_secs(5)).unwrap().code(), Some(0));
    }
    assert_eq!(list(&rt_fake), list(&rt_real));
    assert!(list(&rt_real.join("presence")).is_empty());
}
