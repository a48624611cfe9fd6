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

sys.dont_write_bytecode = True  # no __pycache__ left in bench/
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
from mcp_host import children  # noqa: E402  (the server's pid, as the bench host finds it)


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
