#!/usr/bin/env python3
"""One MCP session of the official MCP Python SDK client, as a host that does not
respawn its servers (Claude Code keeps a failed server until the user reconnects it).
It stays alive after its server died, as such a host window does.

Usage: python session.py LOG COMMAND [ARGS...]

Starts COMMAND (memtomem-server) over stdio with the SDK's `stdio_client`, sends
`initialize` through its `ClientSession`, logs the server's pid and version, then waits
for the server to die (EOF on its stdout), logs that, and stays alive without starting
it again, until killed. LOG gets one JSON line per event:

  {"event": "initialized", "pid": P, "version": "0.6.11"}
  {"event": "died", "pid": P}

The server inherits this process's whole environment (the SDK passes only a safe subset
unless told otherwise).
"""
import json
import os
import sys
import time

import anyio
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client


def children():
    """Pids of this process's children (the SDK does not expose the server process)."""
    pids = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as fh:
                pids += [int(p) for p in fh.read().split()]
        except OSError:
            pass
    return sorted(set(pids))


def gone(pid):
    """Exited (a zombie until the SDK reaps it) or already reaped."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def log(path, **rec):
    with open(path, "a") as fh:
        fh.write(json.dumps(rec) + "\n")


async def main(path, argv):
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=dict(os.environ))
    async with stdio_client(params) as (read, write):
        pid = (children() or [None])[-1]
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            log(path, event="initialized", pid=pid, version=init.server_info.version)
            # Nothing starts it again once it died.
            while not gone(pid):
                await anyio.sleep(0.02)
            log(path, event="died", pid=pid)
            await anyio.sleep_forever()


if __name__ == "__main__":
    try:
        anyio.run(main, sys.argv[1], sys.argv[2:])
    except BaseException as e:  # the session ended; the host stays up all the same
        log(sys.argv[1], event="session-ended", error=repr(e))
    while True:
        time.sleep(3600)
