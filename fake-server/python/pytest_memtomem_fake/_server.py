"""Start fake-server / fake-uv for a test and clean up after it (no pytest import here)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

#: How long a fake may take to write its ready file (``many=88`` needs a few seconds).
READY_TIMEOUT = 30.0


def find_binary(name: str) -> str:
    """The path of ``name`` (``fake-server``, ``fake-uv``, ``fake-host``).

    ``MEMTOMEM_FAKE_BIN_DIR`` wins (a cargo build, e.g. ``target/debug``); then the
    scripts dir of the running interpreter, where this wheel put the binaries; then PATH.
    """
    override = os.environ.get("MEMTOMEM_FAKE_BIN_DIR")
    if override:
        path = os.path.join(override, name)
        if not os.access(path, os.X_OK):
            raise FileNotFoundError(f"MEMTOMEM_FAKE_BIN_DIR={override} has no executable {name}")
        return path
    scripts = sysconfig.get_path("scripts")
    for where in (scripts, os.path.dirname(sys.executable), None):
        found = shutil.which(name, path=where)
        if found:
            return found
    raise FileNotFoundError(f"{name} not found (install memtomem-fake-server, or set MEMTOMEM_FAKE_BIN_DIR)")


def make_runtime_dir(path: Path) -> Path:
    """memtomem's runtime dir rules: a real directory, owned by us, mode 0700."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask
    return path


@dataclass
class FakeServer:
    """One running fake-server (or its launcher, for the topology modes)."""

    process: subprocess.Popen
    #: The process that acts as the server (the worker for respawn/zombie/daemonize).
    pid: int
    #: Every process of this invocation meant to keep running, launcher first.
    pids: List[int]
    #: Its pid file, or None (secondary, db-writer, …).
    pid_file: Optional[Path]
    runtime_dir: Path
    #: JSON-lines event log (``--events``).
    events_path: Path
    ready_path: Path
    #: The ready record as written (``mode``, ``presence``, ``procid``, ``servers``, …).
    ready: Dict[str, Any]
    stderr_path: Path
    _reaper: Optional[threading.Thread] = field(default=None, repr=False)

    def events(self, event: Optional[str] = None) -> List[Dict[str, Any]]:
        """The event log so far, optionally only the events named ``event``."""
        try:
            with open(self.events_path) as fh:
                lines = [json.loads(line) for line in fh if line.strip()]
        except FileNotFoundError:
            return []
        return [e for e in lines if event is None or e.get("event") == event]

    @property
    def returncode(self) -> Optional[int]:
        """The launched process's status as ``Popen.returncode`` (−9: SIGKILL), or None."""
        return self.process.poll()

    def wait(self, timeout: float = 10.0) -> Optional[int]:
        """Its return code once it exits within ``timeout`` seconds, else None."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL its process group, and every process it reported that left the group
        (daemonize: a new session) and is still a fake-server; then reap the leader."""
        binary = os.path.realpath(self.process.args[0])  # type: ignore[index]
        for pid in self.pids:
            if pid > 1 and pid != self.process.pid and _runs(pid, binary):
                _signal(pid, signal.SIGKILL, group=False)
        _signal(self.process.pid, signal.SIGKILL, group=True)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe:
                try:
                    pipe.close()
                except OSError:
                    pass
        self.wait(10)


def _runs(pid: int, binary: str) -> bool:
    """Whether pid is still a fake-server (its exe), so a recycled pid is never signalled."""
    try:
        return os.path.realpath(f"/proc/{pid}/exe") == binary
    except OSError:
        return False


def _signal(pid: int, sig: int, group: bool) -> None:
    if pid <= 1:
        return
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def start(
    workdir: Path,
    runtime_dir: Path,
    mode: Union[str, Sequence[str]] = (),
    version: str = "0.6.12",
    store: Optional[Union[str, Path]] = None,
    args: Sequence[str] = (),
    env: Optional[Mapping[str, str]] = None,
    reap: bool = True,
    timeout: float = READY_TIMEOUT,
    wait: bool = True,
) -> FakeServer:
    """Start a fake-server in ``runtime_dir`` and return once its ready file is written.

    It runs in a process group of its own with stdin and stdout piped, as an MCP client
    launches a server (closing stdin is a clean shutdown). With ``reap`` a thread reaps it
    the moment it exits, as a client does: memtomem's probe counts an unreaped zombie as
    alive. A start that fails or times out kills what it started and raises RuntimeError
    with the fake's stderr. With ``wait=False`` it returns at once, before any ready file
    (``crash-on-start`` never writes one): ``pid`` is then the launched process.
    """
    modes = [mode] if isinstance(mode, str) else list(mode)
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / "ready.json"
    events = workdir / "events.jsonl"
    stderr = workdir / "stderr.log"
    argv = [find_binary("fake-server"), "--runtime-dir", str(runtime_dir), "--ready-file", str(ready),
            "--events", str(events), "--server-version", version]
    for m in modes:
        argv += ["--mode", m]
    if store is not None:
        argv += ["--store", str(store)]
    argv += list(args)
    with open(stderr, "wb") as err:
        group = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                env=dict(os.environ if env is None else env), **group)  # type: ignore[call-overload]
    srv = FakeServer(process=proc, pid=proc.pid, pids=[proc.pid], pid_file=None, runtime_dir=runtime_dir,
                     events_path=events, ready_path=ready, ready={}, stderr_path=stderr)
    if not wait:
        return _reaped(srv, reap)
    # The readiness handshake: the ready file appears (atomically) or the fake dies.
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            srv.kill()
            what = f"exited with {proc.returncode}" if proc.returncode is not None else f"not ready in {timeout} s"
            raise RuntimeError(f"fake-server {' '.join(argv[1:])}: {what}\n{srv.stderr()}")
        time.sleep(0.002)
    srv.ready = json.loads(ready.read_text())
    srv.pid = int(srv.ready["pid"])
    srv.pids = [int(p) for p in srv.ready.get("pids") or [srv.pid]]
    srv.pid_file = Path(srv.ready["pid_file"]) if srv.ready.get("pid_file") else None
    return _reaped(srv, reap)


def _reaped(srv: FakeServer, reap: bool) -> FakeServer:
    if reap:
        srv._reaper = threading.Thread(target=srv.process.wait, daemon=True)
        srv._reaper.start()
    return srv


@dataclass
class FakeUv:
    """fake-uv as ``uv``: a bin dir to put first on PATH and the scratch dirs it writes."""

    binary: str
    #: A directory holding ``uv`` → fake-uv.
    bin_dir: Path
    #: ``UV_TOOL_DIR`` (and ``FAKE_UV_TOOL_DIR``): where installs land.
    tool_dir: Path
    #: ``UV_TOOL_BIN_DIR``: the entry-point links.
    tool_bin_dir: Path
    #: JSON lines, one per uv call (``FAKE_UV_LOG``).
    log_path: Path

    def env(self) -> Dict[str, str]:
        """The variables that make a child's ``uv`` this one, writing only to scratch dirs."""
        return {
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "UV_TOOL_DIR": str(self.tool_dir),
            "UV_TOOL_BIN_DIR": str(self.tool_bin_dir),
            "FAKE_UV_TOOL_DIR": str(self.tool_dir),
            "FAKE_UV_LOG": str(self.log_path),
            "FAKE_UV_SERVER_BIN": find_binary("fake-server"),
        }

    def calls(self) -> List[Dict[str, Any]]:
        """Every uv call logged so far."""
        try:
            with open(self.log_path) as fh:
                return [json.loads(line) for line in fh if line.strip()]
        except FileNotFoundError:
            return []


def make_fake_uv(workdir: Path) -> FakeUv:
    binary = find_binary("fake-uv")
    bin_dir = workdir / "uv-bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    link = bin_dir / "uv"
    if not link.exists():
        link.symlink_to(binary)
    return FakeUv(binary=binary, bin_dir=bin_dir, tool_dir=workdir / "tools", tool_bin_dir=workdir / "bin",
                  log_path=workdir / "uv.jsonl")
