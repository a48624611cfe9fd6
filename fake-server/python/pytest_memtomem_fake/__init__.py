"""pytest fixtures that run memtomem's fake-server (see fake-server/README.md, "From pytest")."""

from ._server import FakeServer, FakeUv, find_binary, make_fake_uv, make_runtime_dir, start

__all__ = ["FakeServer", "FakeUv", "find_binary", "make_fake_uv", "make_runtime_dir", "start"]
