#!/usr/bin/env python3
"""mm-upgrade vs memtomem's own `mm upgrade`: whole-process timings, side by side.

Run through bench/run.sh (it builds the release binaries and prepares uv). Three kinds
of rows; runs alternate ours/theirs (the order flips every run) in all of them.

Synthetic rows. Every sample starts fresh servers (workspace fake-server, launched like an
MCP client launches a server: stdin pipe, own process group, reaped at once unless the
row says otherwise) in a scratch runtime dir that both tools are pointed at (ours:
--runtime-dir; theirs: memtomem's own test override _MEMTOMEM_TEST_RUNTIME_DIR +
PYTEST_CURRENT_TEST), on a fake installation of memtomem 0.6.11 laid out afresh by the
workspace's fake-uv, then times one upgrade process to 0.6.12. uv is fake-uv for both
(ours: --uv; theirs: `uv` on PATH): ours does all its real work against it (a staged
install into <tool dir>/.mm-upgrade/, the proof: the staged interpreter's metadata and an
MCP initialize to the staged memtomem-server, which is fake-server; the exchange, the
links); theirs' `uv tool install --refresh --reinstall` lays out the same fake env in
place.

Real rows. Real uv with the warm cache, a real memtomem 0.6.11 in a scratch tool dir with
one real memtomem-server running, upgraded to 0.6.12; theirs is the `mm` of that 0.6.11.

MCP-host rows. The server is started by bench/mcp_host.py, a respawning MCP client written
with the official MCP Python SDK (run by the python of a separate memtomem 0.6.12 tool env,
which has `mcp`): the time from the old server's death to the first session that reports
0.6.12, for ours, for theirs, and for a plain restart of the 0.6.12 server (the baseline).
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import many
from common import OLD, VERSION
from report import BEGIN, END, loadavg, machine, render, verdicts, write_md

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_TIMEOUT = 180.0  # seconds the MCP host may take to report a session we wait for


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Launched:
    """A process group we started; its leader is reaped by a thread the moment it exits
    (as an MCP client does), and the time of that exit is recorded."""

    def __init__(self, argv, env, stderr_path, stdin=True):
        self.err = open(stderr_path, "ab")
        self.p = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.err,
            process_group=0,
        )
        self.exited_at = None
        self.t = threading.Thread(target=self._reap, daemon=True)
        self.t.start()

    def _reap(self):
        self.p.wait()
        self.exited_at = time.perf_counter()

    def kill(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.p.stdin:
            try:
                self.p.stdin.close()
            except OSError:
                pass
        self.t.join(10)
        self.err.close()


class Host(Launched):
    """bench/mcp_host.py: an MCP host that respawns memtomem-server whenever it dies."""

    def __init__(self, bench, server, env, tag):
        self.log_path = os.path.join(bench.dir, f"host-{tag}.jsonl")
        argv = [bench.client_py, os.path.join(ROOT, "bench", "mcp_host.py"), self.log_path,
                os.path.join(bench.dir, "host-server.stderr"), server]
        super().__init__(argv, env, os.path.join(bench.dir, "host.stderr"))

    def events(self):
        try:
            with open(self.log_path) as fh:
                return [json.loads(l) for l in fh if l.strip()]
        except (OSError, ValueError):
            return []

    def wait_for(self, pred, what, timeout=HOST_TIMEOUT):
        """The first event satisfying pred; exits the bench on timeout or a dead host."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events():
                if pred(e):
                    return e
            if self.p.poll() is not None:
                sys.exit(f"bench: the MCP host exited (rc={self.p.returncode}) waiting for {what}; "
                         f"see {os.path.join(os.path.dirname(self.log_path), 'host.stderr')}")
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def kill(self):
        super().kill()
        for e in self.events():  # every server it spawned, each in its own session
            pid = e.get("pid")
            if e["event"] == "spawned" and pid and is_memtomem_server(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


def is_memtomem_server(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"memtomem-server" in fh.read()
    except OSError:
        return False


class Bench:
    def __init__(self, a):
        self.a = a
        self.dir = tempfile.mkdtemp(prefix="mm-bench-")
        self.home = os.path.join(self.dir, "home")
        self.rt = os.path.join(self.dir, "rt")
        os.makedirs(self.home)
        self.live = []
        self.sleepers = []
        self.seq = 0

    # -- setup ---------------------------------------------------------------
    def install(self, name, version, extra=()):
        tools = os.path.join(self.dir, name, "tools")
        bin_ = os.path.join(self.dir, name, "bin")
        out = subprocess.run(
            ["bash", os.path.join(ROOT, "scripts/install-memtomem.sh"), tools, bin_, version, *extra],
            env={**os.environ, "HOME": self.home},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            sys.exit(f"bench: installing memtomem=={version} failed:\n{out.stderr}")
        return tools, bin_

    def setup(self):
        # A real memtomem 0.6.12: theirs' `mm` for the synthetic rows, and the python
        # (with the `mcp` SDK) that runs the MCP host. No row upgrades it.
        tools, bin_ = self.install("theirs", VERSION)
        self.mm = os.path.join(bin_, "mm")
        self.client_py = os.path.join(tools, "memtomem", "bin", "python")
        # The fake installation the synthetic rows upgrade, and fake-uv as `uv` for theirs.
        self.ftools = os.path.join(self.dir, "fake", "tools")
        self.fbin = os.path.join(self.dir, "fake", "bin")
        uvdir = os.path.join(self.dir, "uvbin")
        os.makedirs(uvdir)
        os.symlink(self.a.fake_uv, os.path.join(uvdir, "uv"))
        env = dict(os.environ)
        for k in ("XDG_RUNTIME_DIR", "TMPDIR", "MEMTOMEM_STORAGE__SQLITE_PATH",
                  "MM_UPGRADE_RUNTIME_DIR", "MM_UPGRADE_UV", "MM_UPGRADE_HOME", "VIRTUAL_ENV"):
            env.pop(k, None)
        for k in [k for k in env if k.startswith("FAKE_UV_")]:
            env.pop(k)
        env.update({"HOME": self.home, "_MEMTOMEM_TEST_RUNTIME_DIR": self.rt, "PYTEST_CURRENT_TEST": "bench"})
        self.env = env
        self.fake_env = {
            **env,
            "PATH": uvdir + os.pathsep + env.get("PATH", ""),
            "UV_TOOL_DIR": self.ftools,
            "UV_TOOL_BIN_DIR": self.fbin,
            "FAKE_UV_TOOL_DIR": self.ftools,
            "FAKE_UV_SERVER_BIN": self.a.fake,
        }

    def seed_fake(self):
        """A fresh fake memtomem 0.6.11 installation (fake-uv's install call), untimed."""
        shutil.rmtree(os.path.join(self.dir, "fake"), ignore_errors=True)
        out = subprocess.run([self.a.fake_uv, "tool", "install", f"memtomem=={OLD}"], env=self.fake_env,
                             stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"bench: fake-uv could not lay out memtomem {OLD}:\n{out.stderr}")

    # -- processes -----------------------------------------------------------
    def fake(self, extra=(), store=None, timeout=10):
        return self.fakes([extra], store, timeout)[0]

    def fakes(self, extras, store=None, timeout=10):
        """One fake per entry of extras, all started at once (as a host starts its
        registrations), then each waited for until its ready file is written."""
        started = []
        for extra in extras:
            self.seq += 1
            ready = os.path.join(self.dir, f"fake{self.seq}.ready")
            argv = [self.a.fake, "--runtime-dir", self.rt, "--ready-file", ready, *extra]
            if store:
                argv += ["--store", store]
            l = Launched(argv, self.env, os.path.join(self.dir, "fake.stderr"))
            self.live.append(l)
            started.append((l, ready, extra))
        deadline = time.monotonic() + timeout
        for l, ready, extra in started:
            while not os.path.exists(ready):
                if l.p.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"bench: fake-server {extra} not ready (rc={l.p.poll()})")
                time.sleep(0.002)
            with open(ready) as f:
                l.info = json.load(f)
        return [l for l, _, _ in started]

    def teardown(self):
        for l in self.live:
            l.kill()
            for pid in l.info.get("pids", []) if hasattr(l, "info") else []:
                try:
                    os.kill(pid, signal.SIGKILL)  # pids this fake reported as its own
                except (ProcessLookupError, PermissionError):
                    pass
        self.live = []
        shutil.rmtree(self.rt, ignore_errors=True)

    def start_sleepers(self, n):
        first = subprocess.Popen(["sleep", "3600"], process_group=0, stdin=subprocess.DEVNULL)
        self.sleepers = [first]
        for _ in range(n - 1):
            self.sleepers.append(
                subprocess.Popen(["sleep", "3600"], process_group=first.pid, stdin=subprocess.DEVNULL))

    def stop_sleepers(self):
        if self.sleepers:
            try:
                os.killpg(self.sleepers[0].pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            for s in self.sleepers:
                s.wait()
        self.sleepers = []

    # -- the two tools -------------------------------------------------------
    def argv(self, who, args):
        if who == "ours":
            # Everything ours does by default: stage, prove (metadata + MCP initialize),
            # stop, exchange, links, commit.
            return [self.a.ours, *args, "--runtime-dir", self.rt, "--uv", self.a.fake_uv]
        return [self.mm, "upgrade", *args]

    def timed(self, argv, env):
        t0 = time.perf_counter()
        out = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        ms = (time.perf_counter() - t0) * 1000
        return ms, out

    # -- synthetic rows --------------------------------------------------------
    def row(self, name, title, start, args, expect_kill, theirs_may_refuse=False):
        """One synthetic row. With theirs_may_refuse, a refusal of theirs (exit 1, `ok: false`)
        is a result, recorded with its problems, once it is checked that it stopped nothing."""
        log(f"row {name}: {self.a.runs} alternating runs")
        res = {"name": name, "title": title, "ours": [], "theirs": [], "after_ms": [], "downtime_ms": [],
               "switch_ms": [], "staged_ms": [], "init_ms": [], "args": " ".join(args),
               "killed": {"ours": [], "theirs": []}, "refusals": []}
        dry = "--dry-run" in args
        for i in range(self.a.runs):
            order = ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours")
            for who in order:
                if not dry or fake_version(self.ftools) != OLD:
                    self.seed_fake()
                servers = start()
                ms, out = self.timed(self.argv(who, args), self.fake_env)
                doc = parse_json(out.stdout)
                if theirs_may_refuse and who == "theirs" and out.returncode == 1 and doc \
                        and doc.get("ok") is False:
                    self.refused(name, servers, doc, res)
                    res[who].append(ms)
                    self.teardown()
                    continue
                if out.returncode != 0 or doc is None or doc.get("ok") is not True:
                    self.teardown()
                    sys.exit(f"bench: {who} failed in row {name} (rc={out.returncode}):\n{out.stdout}\n{out.stderr}")
                res["killed"][who].append(len(doc.get("killed", [])))
                if expect_kill:
                    want = sorted(p for s in servers for p in server_pids(s))
                    key = "would_kill" if dry else "killed"
                    got = sorted(doc.get(key, []))
                    if got != want:
                        self.teardown()
                        sys.exit(f"bench: {who} in row {name}: {key}={got}, expected {want}\n{out.stdout}")
                if not dry:
                    installed = fake_version(self.ftools)
                    if installed != VERSION:
                        self.teardown()
                        sys.exit(f"bench: {who} in row {name} left memtomem {installed} installed, not {VERSION}")
                res[who].append(ms)
                if who == "ours":
                    res["after_ms"] += [s.get("after_ms") for s in doc.get("stops", []) if s.get("after_ms") is not None]
                    for k, v in (("downtime_ms", doc.get("downtime_ms")), ("switch_ms", doc.get("switch_ms")),
                                 ("staged_ms", dig(doc, "staged", "ms")),
                                 ("init_ms", dig(doc, "proof", "initialize", "ms"))):
                        if v is not None:
                            res[k].append(v)
                if name != "discovery":
                    self.teardown()
        return res

    def refused(self, name, servers, doc, res):
        """Theirs refused: every server still runs and the old version is still installed."""
        dead = [p for s in servers for p in server_pids(s) if not alive(p)]
        installed = fake_version(self.ftools)
        if doc.get("killed") or dead or installed != OLD:
            self.teardown()
            sys.exit(f"bench: theirs refused in row {name} but killed {doc.get('killed')}, {len(dead)} servers "
                     f"are gone, memtomem {installed} is installed")
        problems = [l[2:] for l in (doc.get("error") or "").splitlines() if l.startswith("- ")]
        res["refusals"].append(problems)

    def rows(self):
        up = ["-y", "--json", "--version", VERSION]
        want = set(self.a.rows.split(",")) if self.a.rows else None
        out = []

        def on(n):
            return want is None or n in want

        if on("cooperative"):
            out.append(self.row("cooperative", "1 cooperative server", lambda: [self.fake()], up, True))
        if on("ignore-sigterm"):
            out.append(self.row("ignore-sigterm", "1 server ignoring SIGTERM, `--grace 2`",
                                lambda: [self.fake(["--mode", "ignore-sigterm"])], up + ["--grace", "2"], True))
        if on("zombie"):
            out.append(self.row("zombie", "1 server whose launcher never reaps (zombie after SIGTERM), default grace 5 s",
                                lambda: [self.fake(["--mode", "zombie"])], up, True))
        if on("eight"):
            stores = [os.path.join(self.dir, "stores", f"s{i}.db") for i in range(8)]
            out.append(self.row("eight", "8 servers on 8 stores",
                                lambda: [self.fake(store=s) for s in stores], up, True))
        out += many.rows(self, on, up)
        if on("discovery"):
            log("starting 1000 unrelated sleep processes")
            self.start_sleepers(1000)
            try:
                srv = []

                def once():
                    if not srv:
                        srv.append(self.fake())
                    return srv

                out.append(self.row("discovery", "discovery alone (`--dry-run`), 1 server + 1000 unrelated processes",
                                    once, ["--dry-run", "--json", "-y", "--version", VERSION], True))
            finally:
                self.stop_sleepers()
                self.teardown()
        return out

    # -- real uv, real memtomem -------------------------------------------------
    def real_install(self, name, rt):
        """A fresh real memtomem 0.6.11 in its own scratch tool dir; the env both tools use."""
        shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)
        shutil.rmtree(rt, ignore_errors=True)
        tools, bin_ = self.install(name, OLD)
        home = os.path.join(self.dir, name, "home")  # a fresh store every run
        os.makedirs(home)
        uv_dir = os.path.dirname(os.environ["MM_TEST_UV"])
        env = {**self.env, "HOME": home, "UV_TOOL_DIR": tools, "UV_TOOL_BIN_DIR": bin_,
               "_MEMTOMEM_TEST_RUNTIME_DIR": rt, "PATH": uv_dir + os.pathsep + self.env.get("PATH", "")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        # A user's 0.6.11 has been used: its CLI's bytecode exists (the running
        # server writes its own as it starts).
        subprocess.run([os.path.join(bin_, "mm"), "--help"], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, timeout=120)
        return tools, bin_, env

    def real_argv(self, who, bin_, rt):
        if who == "ours":
            return [self.a.ours, "-y", "--json", "--version", VERSION, "--runtime-dir", rt,
                    "--uv", os.environ["MM_TEST_UV"]]
        return [os.path.join(bin_, "mm"), "upgrade", "-y", "--json", "--version", VERSION]

    def real(self):
        n = self.a.real_runs
        if n <= 0:
            return None
        log(f"real install rows: {n} runs each (real uv, warm cache, real memtomem-server {OLD} -> {VERSION})")
        rt = os.path.join(self.dir, "rt-real")
        res = {"ours": [], "theirs": []}
        for i in range(n):
            for who in (("ours", "theirs") if i % 2 == 0 else ("theirs", "ours")):
                tools, bin_, env = self.real_install("real", rt)
                srv = Launched([os.path.join(bin_, "memtomem-server")], env, os.path.join(self.dir, "real.stderr"))
                self.live.append(srv)
                pid = srv.p.pid
                deadline = time.monotonic() + 120
                while not pid_file_names(rt, pid):
                    if srv.p.poll() is not None or time.monotonic() > deadline:
                        sys.exit(f"bench: real memtomem-server did not start (rc={srv.p.poll()})")
                    time.sleep(0.02)
                ms, out = self.timed(self.real_argv(who, bin_, rt), env)
                end = time.perf_counter()
                doc = parse_json(out.stdout)
                if out.returncode != 0 or not doc or doc.get("ok") is not True or doc.get("killed") != [pid]:
                    self.teardown()
                    sys.exit(f"bench: real {who} failed (rc={out.returncode}):\n{out.stdout}\n{out.stderr}")
                installed = real_version(tools)
                if installed != VERSION:
                    self.teardown()
                    sys.exit(f"bench: real {who} left memtomem {installed} installed, not {VERSION}")
                srv.t.join(5)
                rec = {"wall_ms": ms, "exit_to_end_ms": (end - srv.exited_at) * 1000 if srv.exited_at else None}
                if who == "ours":
                    rec.update({k: doc.get(k) for k in ("downtime_ms", "switch_ms", "exit_to_switch_ms")})
                    rec["after_ms"] = doc["stops"][0]["after_ms"]
                    rec["staged_ms"] = dig(doc, "staged", "ms")
                    rec["init_ms"] = dig(doc, "proof", "initialize", "ms")
                res[who].append(rec)
                log(f"  real {who}: {ms:,.0f} ms" + (f" (switch {rec['switch_ms']} ms, staged {rec['staged_ms']} ms, "
                                                     f"initialize {rec['init_ms']} ms)" if who == "ours" else ""))
                self.teardown()
        shutil.rmtree(rt, ignore_errors=True)
        return res

    # -- a respawning MCP host --------------------------------------------------
    def mcp(self):
        n = self.a.mcp_runs
        if n <= 0:
            return None
        log(f"MCP-host rows: {n} runs each (respawning MCP SDK client, real memtomem-server {OLD} -> {VERSION})")
        rt = os.path.join(self.dir, "rt-mcp")
        res = {"ours": [], "theirs": [], "baseline": []}
        for i in range(n):
            for who in (("ours", "theirs") if i % 2 == 0 else ("theirs", "ours")):
                tools, bin_, env = self.real_install("mcp", rt)
                host = Host(self, os.path.join(bin_, "memtomem-server"), env, f"{who}{i}")
                self.live.append(host)
                try:
                    res[who].append(self.mcp_once(who, host, tools, bin_, rt, env, res["baseline"]))
                finally:
                    host.kill()
                    self.live.remove(host)
                    shutil.rmtree(rt, ignore_errors=True)
        return res

    def mcp_once(self, who, host, tools, bin_, rt, env, baseline):
        first = host.wait_for(lambda e: e["event"] == "initialized", f"the first {OLD} session")
        if first is None or first.get("version") != OLD:
            sys.exit(f"bench: the MCP host's first session is {first}, not {OLD}")
        old_pid = first["pid"]
        deadline = time.monotonic() + 30
        while not pid_file_names(rt, old_pid):
            if time.monotonic() > deadline:
                sys.exit(f"bench: memtomem-server {old_pid} wrote no pid file in {rt}")
            time.sleep(0.02)
        ms, out = self.timed(self.real_argv(who, bin_, rt), env)
        doc = parse_json(out.stdout) or {}
        rec = {"wall_ms": ms, "rc": out.returncode, "ok": doc.get("ok") is True,
               "error": None if doc.get("ok") else (doc.get("error") or out.stderr.strip()[-300:])}
        if who == "ours":
            rec.update({k: doc.get(k) for k in ("downtime_ms", "switch_ms", "exit_to_switch_ms")})
            rec["warnings"] = doc.get("warnings", [])
            rec["killed"] = doc.get("killed", [])
        died = host.wait_for(lambda e: e["event"] == "died" and e.get("pid") == old_pid,
                             f"the death of server {old_pid}", timeout=5)
        if died is None:
            rec["new_ms"] = None
            rec["note"] = f"the {OLD} server was not stopped"
            log(f"  mcp {who}: {rec['note']} (rc={out.returncode})")
            return rec
        t_death = died.get("t_eof") or died["t"]
        new = host.wait_for(lambda e: e["event"] == "initialized" and e.get("version") == VERSION
                            and e["t"] > t_death, f"a {VERSION} session")
        between = [e for e in host.events() if e["t"] > t_death and (new is None or e["t"] < new["t"])]
        rec["sessions_between"] = sum(1 for e in between if e["event"] == "spawned") - (1 if new else 0)
        rec["old_sessions_between"] = sum(1 for e in between if e["event"] == "initialized")
        rec["failed_spawns"] = sum(1 for e in between if e["event"] == "spawn_failed")
        rec["installed"] = real_version(tools)
        rec["spawned"] = [e.get("pid") for e in host.events() if e["event"] == "spawned"]
        if self.a.keep:
            with open(os.path.join(self.dir, f"upgrader-{who}-{old_pid}.json"), "w") as fh:
                fh.write(out.stdout)
        if new is None:
            rec["new_ms"] = None
            rec["note"] = f"no {VERSION} session within {HOST_TIMEOUT:.0f} s"
            log(f"  mcp {who}: {rec['note']} (rc={out.returncode})")
            return rec
        rec["new_ms"] = (new["t"] - t_death) * 1000
        log(f"  mcp {who}: death -> first {VERSION} session {rec['new_ms']:,.0f} ms; upgrader {ms:,.0f} ms, "
            f"rc {out.returncode}; in between {rec['sessions_between']} servers started "
            f"({rec['old_sessions_between']} initialized as {OLD}), {rec['failed_spawns']} failed spawns")
        # Baseline: a plain restart of the 0.6.12 server under the same host.
        time.sleep(0.5)
        pid = new["pid"]
        if not is_memtomem_server(pid):
            sys.exit(f"bench: the {VERSION} server {pid} is gone before the baseline restart")
        os.kill(pid, signal.SIGTERM)
        gone = host.wait_for(lambda e: e["event"] == "died" and e.get("pid") == pid, f"the death of {pid}", timeout=30)
        if gone is None:
            sys.exit(f"bench: the {VERSION} server {pid} did not exit on SIGTERM")
        t0 = gone.get("t_eof") or gone["t"]
        again = host.wait_for(lambda e: e["event"] == "initialized" and e["t"] > t0, "the restarted session")
        if again is None or again.get("version") != VERSION:
            sys.exit(f"bench: the restarted session is {again}, not {VERSION}")
        b = (again["t"] - t0) * 1000
        baseline.append({"ms": b, "after": who})
        log(f"  mcp baseline (after {who}): death -> next {VERSION} session {b:,.0f} ms")
        return rec


def server_pids(launched):
    """The servers a launch stands for: every record of a `many=N` launcher, else its one."""
    return [r["pid"] for r in launched.info.get("servers") or [launched.info]]


def alive(pid):
    """Running, not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def dig(doc, *keys):
    for k in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(k)
    return doc


def dist_version(env):
    site = os.path.join(env, "lib", "python3.12", "site-packages")
    try:
        for n in os.listdir(site):
            if n.startswith("memtomem-") and n.endswith(".dist-info"):
                return n[len("memtomem-"):-len(".dist-info")]
    except OSError:
        pass
    return None


def fake_version(tools):
    return dist_version(os.path.join(tools, "memtomem"))


def real_version(tools):
    return dist_version(os.path.join(tools, "memtomem"))


def pid_file_names(rt, pid):
    try:
        names = os.listdir(rt)
    except FileNotFoundError:
        return []
    hits = []
    for n in names:
        if n.endswith(".pid"):
            try:
                with open(os.path.join(rt, n)) as f:
                    if f.readline().strip() == str(pid):
                        hits.append(n)
            except OSError:
                pass
    return hits


def parse_json(text):
    lines = [l for l in text.splitlines() if l.strip()]
    if len(lines) != 1:
        return None
    try:
        return json.loads(lines[0])
    except ValueError:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True)
    ap.add_argument("--fake", required=True, help="the fake-server binary")
    ap.add_argument("--fake-uv", required=True, help="the fake-uv binary")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--real-runs", type=int, default=5)
    ap.add_argument("--mcp-runs", type=int, default=5)
    ap.add_argument("--rows", default="")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the scratch dir (logs of the MCP host) for a look")
    a = ap.parse_args()
    a.ours, a.fake, a.fake_uv = (os.path.abspath(x) for x in (a.ours, a.fake, a.fake_uv))
    # As on a user's machine: this one sets PYTHONDONTWRITEBYTECODE=1, which
    # would make every start of theirs (CLI and servers) recompile, and every
    # restart in the MCP-host baseline too.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    load = [loadavg(), None]
    b = Bench(a)
    try:
        b.setup()
        rows = b.rows()
        real = b.real()
        mcp = b.mcp()
    finally:
        for l in list(b.live):
            l.kill()
        b.live = []
        b.teardown()
        b.stop_sleepers()
        if a.keep:
            log(f"scratch dir kept: {b.dir}")
        else:
            shutil.rmtree(b.dir, ignore_errors=True)
    load[1] = loadavg()
    m = machine()
    cmd = f"bash bench/run.sh --runs {a.runs} --real-runs {a.real_runs} --mcp-runs {a.mcp_runs}" \
          + (f" --rows {a.rows}" if a.rows else "")
    # The 88-server rows have a block of their own: running only them leaves the rest.
    blocks = []
    many_rows = [r for r in rows if r["name"] in many.NAMES]
    rows = [r for r in rows if r["name"] not in many.NAMES]
    if rows or real or mcp:
        body = render(m, rows, real, mcp, a, load) + "\n" + verdicts(rows, real, mcp)
        blocks.append((body + f"\nCommand: `{cmd}`\n", BEGIN, END))
    if many_rows:
        blocks.append((many.render(m, many_rows, a, load) + f"\nCommand: `{cmd}`\n", many.BEGIN, many.END))
    for body, begin, end in blocks:
        print(body)
        if not a.no_write:
            write_md(os.path.join(ROOT, "BENCHMARKS.md"), body, begin, end)
            log(f"BENCHMARKS.md updated ({begin[5:15]}…)")


if __name__ == "__main__":
    main()
