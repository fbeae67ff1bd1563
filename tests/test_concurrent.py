"""Two at once, with real `dvc` processes on copies of the shared tiny run: a second `dvc repro` in
one workspace is refused by DVC's locks, naming the run that holds them, and neither run corrupts
`dvc.lock` or an output; two clones pushing the same results to one remote at the same time both
succeed, and the remote holds each object once, whole, under its content hash."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import clone_run, project_env, sh
from test_reproducible import output_digests

pytestmark = pytest.mark.pipeline


def _start(root: Path, *cmd: str) -> tuple[subprocess.Popen, list[str]]:
    """A process whose output lines are collected as they come (so a test can wait for one)."""
    proc = subprocess.Popen(cmd, cwd=root, env=project_env(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []

    def collect():
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=collect, daemon=True).start()
    return proc, lines


def _stage_process(pid: int, script: str) -> int | None:
    """The process, among ``pid``'s descendants, running ``script`` (DVC runs a stage's cmd in a shell)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                if script in (Path("/proc") / str(child) / "cmdline").read_bytes().decode(errors="replace"):
                    return child
            except OSError:
                continue
            todo.append(child)
    return None


def test_a_second_dvc_repro_in_one_workspace_is_refused_and_nothing_is_corrupted(tiny_pipeline, tmp_path):
    root = clone_run(tiny_pipeline, tmp_path / "study")
    before, lock = output_digests(root), (root / "dvc.lock").read_bytes()
    first, lines = _start(root, "dvc", "repro", "--force", "--single-item", "train@1e3-dense")
    deadline = time.monotonic() + 300
    while (stage := _stage_process(first.pid, "stages/train.py")) is None:  # DVC holds the stage's locks by then
        assert first.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.05)
    os.kill(stage, signal.SIGSTOP)  # held mid-stage while the second runs: the overlap is certain, not a race
    try:
        second = sh(root, "dvc", "repro", check=False)
    finally:
        os.kill(stage, signal.SIGCONT)
    first.wait(timeout=600)
    assert first.returncode == 0, "".join(lines)
    # the second is refused by DVC's read/write locks on the outputs the first is using, and says whose
    assert second.returncode != 0 and "is busy, it is being blocked by" in second.stderr, second.stderr
    assert f"(PID {first.pid})" in second.stderr and "Traceback" not in second.stderr
    # the forced rerun made the same bytes; nothing the refused run touched changed
    assert (root / "dvc.lock").read_bytes() == lock
    assert output_digests(root) == before
    assert "Data and pipelines are up to date" in sh(root, "dvc", "status").stdout


def test_two_clones_pushing_the_same_results_at_once_both_succeed(tiny_pipeline, tmp_path):
    """Both start at once (the test does not force their uploads to interleave); both succeed, the
    remote holds whole objects under their hashes, and a clone that pulls from it gets the run's bytes."""
    remote = tmp_path / "team-remote"
    clones = [clone_run(tiny_pipeline, tmp_path / name) for name in ("a", "b")]
    for clone in clones:
        sh(clone, "dvc", "remote", "add", "--local", "-f", "together", str(remote))
    pushes = [_start(clone, "dvc", "push", "-r", "together") for clone in clones]
    for proc, lines in pushes:
        proc.wait(timeout=600)
        assert proc.returncode == 0, "".join(lines)
    objects = [p for p in remote.rglob("*") if p.is_file()]
    assert objects
    for p in objects:  # whole, under its final name: files/md5/<2>/<30>[.dir], content hashed to that name
        rel = p.relative_to(remote).as_posix()
        assert re.fullmatch(r"files/md5/[0-9a-f]{2}/[0-9a-f]{30}(\.dir)?", rel), f"not an object name: {rel}"
        assert hashlib.md5(p.read_bytes()).hexdigest() == p.parent.name + p.name.removesuffix(".dir"), rel
    pushed = [sum(int(n) for n in re.findall(r"(\d+) files? pushed", "".join(lines))) for _, lines in pushes]
    assert sum(pushed) >= len(objects), pushed  # every object was uploaded, by one clone or both
    for clone in clones:  # and each clone's cache is all there
        status = sh(clone, "dvc", "status", "--cloud", "-r", "together").stdout
        assert "Cache and remote 'together' are in sync" in status, status
    # a colleague pulling from the raced remote gets the undisturbed run's bytes
    third = clone_run(tiny_pipeline, tmp_path / "c")
    shutil.rmtree(third / ".dvc" / "cache")
    shutil.rmtree(third / "data")
    sh(third, "git", "checkout", "--", "data")  # the metric tables git keeps
    sh(third, "dvc", "remote", "add", "--local", "-f", "together", str(remote))
    sh(third, "dvc", "pull", "-r", "together")
    assert output_digests(third) == output_digests(tiny_pipeline.root)
