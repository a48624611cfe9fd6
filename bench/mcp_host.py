#!/usr/bin/env python3
"""A respawning MCP host for bench/bench.py, written with the official MCP Python SDK.

Usage: python mcp_host.py LOG SERVER_STDERR COMMAND [ARGS...]

Starts COMMAND (memtomem-server) over stdio with the SDK's `stdio_client`, sends
`initialize` through its `ClientSession`, and waits for the server to die (EOF on its
stdout). Whenever that happens it starts the server again at once and initializes again,
like an MCP host that keeps its tool servers up. A spawn that fails (the entry point is
missing while an installer rewrites it) is retried after 5 ms.

Every event is one JSON line appended to LOG, with `t` = time.monotonic() (CLOCK_MONOTONIC,
comparable with the harness's clock):

  {"event": "spawned", "session": N, "t": ..., "pid": P}
  {"event": "initialized", "session": N, "t": ..., "pid": P, "version": "0.6.12", "name": ...}
  {"event": "init_failed", "session": N, "t": ..., "error": "..."}
  {"event": "died", "session": N, "t": ..., "pid": P, "initialized": true}
  {"event": "spawn_failed", "session": N, "t": ..., "error": "..."}

The server inherits this process's whole environment (the SDK passes only a safe subset
unless told otherwise). Runs until killed. Needs the `mcp` package (>= 2), which is
installed in memtomem's own tool environment.
"""
import json
import os
import sys
import time

import anyio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

INIT_TIMEOUT = 120.0


def children():
    """Pids of this process's children (the SDK does not expose the server process)."""
    pids = []
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/children") as fh:
                    pids += [int(p) for p in fh.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return sorted(set(pids))


class Log:
    def __init__(self, path):
        self.fh = open(path, "a", buffering=1)

    def __call__(self, event, **fields):
        rec = {"event": event, "t": time.monotonic(), **fields}
        self.fh.write(json.dumps(rec) + "\n")
        self.fh.flush()


async def one_session(params, errlog, log, n):
    """One server process: spawn, initialize, wait for its death."""
    async with stdio_client(params, errlog=errlog) as (read, write):
        kids = children()
        pid = kids[-1] if kids else None
        log("spawned", session=n, pid=pid)
        # Forward the transport's read stream so that its end (the server's stdout
        # reaching EOF: the server died) is seen the moment it happens.
        fwd_send, fwd_recv = anyio.create_memory_object_stream(0)
        died = anyio.Event()
        death = {}

        async def forward():
            async with fwd_send:
                try:
                    async for msg in read:
                        await fwd_send.send(msg)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
                    pass
            death["t"] = time.monotonic()
            died.set()

        result = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(forward)
            async with ClientSession(fwd_recv, write) as session:
                async with anyio.create_task_group() as race:

                    async def init():
                        nonlocal result
                        try:
                            with anyio.fail_after(INIT_TIMEOUT):
                                result = await session.initialize()
                        except Exception as e:  # the server died mid-handshake, or answered badly
                            if not died.is_set():
                                log("init_failed", session=n, pid=pid, error=repr(e)[:300])
                        race.cancel_scope.cancel()

                    async def watch():
                        await died.wait()
                        race.cancel_scope.cancel()

                    race.start_soon(init)
                    race.start_soon(watch)
                if result is not None:
                    info = result.server_info
                    log("initialized", session=n, pid=pid, version=info.version, name=info.name)
                    await died.wait()
            tg.cancel_scope.cancel()
        log("died", session=n, pid=pid, initialized=result is not None, t_eof=death.get("t"))


async def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    log = Log(sys.argv[1])
    errlog = open(sys.argv[2], "ab")
    params = StdioServerParameters(command=sys.argv[3], args=sys.argv[4:], env=dict(os.environ))
    n = 0
    while True:
        n += 1
        try:
            await one_session(params, errlog, log, n)
        except OSError as e:
            log("spawn_failed", session=n, error=repr(e)[:300])
            await anyio.sleep(0.005)
        except Exception as e:  # keep hosting whatever went wrong with one session
            log("session_error", session=n, error=repr(e)[:300])
            await anyio.sleep(0.005)


if __name__ == "__main__":
    anyio.run(main)
