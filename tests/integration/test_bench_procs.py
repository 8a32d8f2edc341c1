"""The bench's child processes: one whose port was taken before it bound it is started again
on another, as a benchmark run lost to that race (the emulator "exited early") was."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil
import pytest

from bench import procs

EMULATOR = {"endpoints": {"echo": {"workers": 1, "perf": 100}}}


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another socket listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((procs.HOST, 0))
        sock.listen()
        yield int(sock.getsockname()[1])


async def test_a_child_whose_port_was_taken_is_started_again_on_another(
    tmp_path: Path, taken_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_free_port = procs.free_port
    handed = iter([taken_port])
    monkeypatch.setattr(procs, "free_port", lambda: next(handed, None) or real_free_port())
    async with (
        aiohttp.ClientSession() as http,
        procs.emulator_process(http, EMULATOR, tmp_path) as emulator,
    ):
        assert not emulator.url.endswith(f":{taken_port}")
        async with http.get(f"{emulator.url}/admin/stats") as resp:
            assert resp.status == 200


async def test_a_child_that_fails_for_another_reason_is_not_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned: list[str] = []
    spawn = procs._spawn

    def counted(name: str, args: list[str], workdir: Path) -> subprocess.Popen[bytes]:
        spawned.append(name)
        return spawn(name, args, workdir)

    monkeypatch.setattr(procs, "_spawn", counted)
    bad = {"endpoints": {"echo": {"workers": "many"}}}
    async with aiohttp.ClientSession() as http:
        with pytest.raises(RuntimeError, match="exited early"):
            async with procs.emulator_process(http, bad, tmp_path):
                pass
    assert spawned == ["emulator"]


async def test_children_started_inside_scheduler_source_run_that_copy(tmp_path: Path) -> None:
    """A side-by-side screen (``BENCH_SCHEDULER_SRC_B``) starts each run's emulator and daemon
    from the copy under test: the child runs in that copy (its ``python -m`` imports the
    ``scheduler`` package there), and the default comes back after the block."""
    copy = tmp_path / "copy"
    shutil.copytree(procs.REPO / "scheduler", copy / "scheduler",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    before = procs.SCHEDULER_SRC
    async with aiohttp.ClientSession() as http:
        with procs.scheduler_source(copy):
            async with procs.emulator_process(http, EMULATOR, tmp_path) as emulator:
                assert Path(psutil.Process(emulator.popen.pid).cwd()) == copy.resolve()
                async with http.get(f"{emulator.url}/admin/stats") as resp:
                    assert resp.status == 200
    assert before == procs.SCHEDULER_SRC
