"""The pytest fixtures (registered through the ``pytest11`` entry point).

- ``fake_runtime_dir``: a scratch memtomem runtime dir (mode 0700), exported to code under
  test as memtomem's own override, ``_MEMTOMEM_TEST_RUNTIME_DIR`` (pytest sets
  ``PYTEST_CURRENT_TEST``, the other half of that override), so nothing touches
  ``/tmp/memtomem-<uid>``.
- ``fake_server``: a factory, ``fake_server(mode="ignore-sigterm", version="0.6.11")``,
  that starts fake-servers in that dir and kills each one's process group at teardown,
  whatever the test's outcome.
- ``fake_uv``: fake-uv as ``uv`` on PATH, with the uv tool dirs in scratch dirs, so an
  ``mm upgrade`` under test never reinstalls anything real.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

from ._server import FakeServer, FakeUv, make_fake_uv, make_runtime_dir, start


@pytest.fixture
def fake_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The runtime dir shared by the test's fakes and memtomem code it runs."""
    rt = make_runtime_dir(tmp_path / "memtomem-rt")
    monkeypatch.setenv("_MEMTOMEM_TEST_RUNTIME_DIR", str(rt))
    return rt


@pytest.fixture
def fake_server(tmp_path: Path, fake_runtime_dir: Path) -> Iterator[Callable[..., FakeServer]]:
    """``fake_server(mode=..., version=..., store=..., args=..., env=..., reap=True)``:
    a started, ready fake-server (see ``_server.start``)."""
    started: List[FakeServer] = []

    def factory(**kwargs: Any) -> FakeServer:
        srv = start(tmp_path / f"fake-server-{len(started) + 1}", fake_runtime_dir, **kwargs)
        started.append(srv)
        return srv

    try:
        yield factory
    finally:
        for srv in started:
            srv.kill()


@pytest.fixture
def fake_uv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeUv:
    """fake-uv as ``uv`` for this test (PATH and the uv tool dirs are set in os.environ)."""
    uv = make_fake_uv(tmp_path / "fake-uv")
    env = uv.env()
    for key in [k for k in os.environ if k.startswith("FAKE_UV_") and k not in env]:
        monkeypatch.delenv(key)  # a behaviour set outside the test is not this test's
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return uv
