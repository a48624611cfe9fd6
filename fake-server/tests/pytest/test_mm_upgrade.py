"""The fake_server fixture as memtomem's own suite would use it.

Run by tests/pytest_plugin.rs with the python of a scratch venv holding memtomem 0.6.12,
pytest and the two wheels (memtomem-fake-server, with its pytest plugin, and mm-upgrade).
Everything runs in scratch dirs: the runtime dir is the fixture's (memtomem's own
override), HOME and the uv tool dirs are the test's, and uv is fake-uv.
"""

import json
import signal
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

SCRIPTS = Path(sysconfig.get_path("scripts"))


@pytest.fixture(autouse=True)
def scratch_home(tmp_path, monkeypatch):
    """A scratch HOME (memtomem's config and default store), set before any fake starts."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for key in ("MEMTOMEM_STORAGE__SQLITE_PATH", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(key, raising=False)
    return home


def run(argv):
    return subprocess.run([str(a) for a in argv], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120)


def sigterm_ignored(pid):
    """SIGTERM's bit in /proc/<pid>/status SigIgn: the kernel drops it."""
    with open(f"/proc/{pid}/status") as fh:
        mask = next(int(line.split()[1], 16) for line in fh if line.startswith("SigIgn:"))
    return bool(mask & (1 << (signal.SIGTERM - 1)))


def test_memtomem_mm_upgrade_escalates_to_sigkill_on_ignore_sigterm(fake_server, fake_uv, fake_runtime_dir):
    srv = fake_server(mode="ignore-sigterm")
    assert srv.runtime_dir == fake_runtime_dir
    assert srv.pid_file is not None and srv.pid_file.parent == fake_runtime_dir
    assert srv.pid_file.read_text().splitlines()[0] == str(srv.pid)
    assert sigterm_ignored(srv.pid)

    t0 = time.monotonic()
    out = run([SCRIPTS / "mm", "upgrade", "-y", "--json", "--grace", "1", "--version", "0.6.12"])
    elapsed = time.monotonic() - t0
    assert out.returncode == 0, out
    doc = json.loads(out.stdout)
    assert doc["ok"] is True, doc
    assert doc["killed"] == [srv.pid], doc
    assert doc["removed"] == [str(srv.pid_file)], doc
    # SIGTERM did nothing, so memtomem waited out its grace and sent SIGKILL.
    assert srv.wait(10) == -signal.SIGKILL, srv.stderr()
    assert elapsed >= 1.0, elapsed
    kinds = [e["event"] for e in srv.events()]
    assert "ready" in kinds and "exit" not in kinds, kinds  # SIGKILL leaves no exit event
    assert srv.events("signal") == []  # SIG_IGN: the fake never saw the SIGTERM
    assert not srv.pid_file.exists()  # memtomem removed the stale pid file
    # Its reinstall went to fake-uv in the test's scratch tool dir.
    installs = [c for c in fake_uv.calls() if c["kind"] == "install"]
    assert len(installs) == 1 and "memtomem==0.6.12" in installs[0]["argv"], fake_uv.calls()


def test_mm_upgrade_kills_an_ignore_sigterm_server_without_waiting_the_grace(fake_server, fake_uv,
                                                                             fake_runtime_dir):
    seeded = run([fake_uv.binary, "tool", "install", "memtomem==0.6.11"])
    assert seeded.returncode == 0, seeded
    srv = fake_server(mode="ignore-sigterm", version="0.6.11")

    out = run([SCRIPTS / "mm-upgrade", "-y", "--json", "--grace", "5", "--version", "0.6.12",
               "--runtime-dir", fake_runtime_dir, "--uv", fake_uv.binary])
    assert out.returncode == 0, out
    doc = json.loads(out.stdout)
    assert doc["ok"] is True, doc
    assert doc["killed"] == [srv.pid], doc
    assert srv.wait(10) == -signal.SIGKILL, srv.stderr()
    # SigIgn seen: SIGKILL at once, not after the 5 s grace.
    assert doc["stops"][0]["after_ms"] < 1000, doc["stops"]
    assert srv.events("exit") == []


def test_teardown_kills_every_process_even_when_the_test_fails(pytester, tmp_path):
    record = tmp_path / "pids.json"
    pytester.makepyfile(f"""
        import json

        def test_fails(fake_server):
            srv = fake_server(mode=["ignore-sigterm", "fork-children=2"])
            open({str(record)!r}, "w").write(json.dumps(srv.pids))
            assert False, "a failing test: the fixture's teardown still runs"
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    pids = json.loads(record.read_text())
    assert len(pids) == 3, pids  # the server and the two children it forked
    deadline = time.monotonic() + 10
    while any(running(pid) for pid in pids):
        assert time.monotonic() < deadline, [pid for pid in pids if running(pid)]
        time.sleep(0.005)


def running(pid):
    """Alive and not a zombie (a zombie has exited; its parent has yet to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_fake_that_never_gets_ready_is_reported_or_returned_unwaited(fake_server):
    with pytest.raises(RuntimeError, match="exited with 1"):
        fake_server(mode="crash-on-start")
    srv = fake_server(mode="crash-on-start", wait=False)
    assert srv.ready == {} and srv.pid == srv.process.pid
    assert srv.wait(10) == 1
