"""The README's and the docs' commands, run as written in a new shell (no .venv on PATH) in a copy
of the shared tiny run: every ```bash block of README.md, CONTRIBUTING.md and docs/*.md, minus the
lines that would run the study, install or reach a network (listed below, so a new kind of command
must be sorted into one or the other); and the README's own shape: short, answer first."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, clone_run, project_env

pytestmark = pytest.mark.pipeline

BLOCK = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
# minutes of compute, an install, a network remote, or evidence runs with their own tests (test_evidence.py)
NOT_RUN = ("make repro", "make test", "dvc repro", "make bench", "make golden", "pip install", "make red",
           "make green", "make collect", "make train-evidence", "make archive", "make push", "make pull",
           "dvc remote add", "dvc remote modify",
           # the fan-out's three clones and the queued sweep: minutes, and run by tests of their own
           # (tests/conftest.py's shared run is that fan-out; test_pipeline.py runs a sweep)
           "study-", "make sweep",
           # DVC's way to change a parameter and rerun (dvc repro's minutes); git's network commands
           "dvc exp run", "git clone", "git push")
PAGES = ("README.md", "CONTRIBUTING.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")))
# a plain shell: the system's PATH without the project's environment
PLAIN_PATH = os.pathsep.join(p for p in ("/usr/local/bin", "/usr/bin", "/bin") if Path(p).is_dir())


def readme_blocks(page: str = "README.md") -> list[list[str]]:
    """A page's bash blocks as lists of command lines (comments and blank lines dropped)."""
    blocks = []
    for body in BLOCK.findall((REPO / page).read_text()):
        lines = [re.sub(r"\s+#.*$", "", line).strip() for line in body.splitlines()]
        blocks.append([line for line in lines if line and not line.startswith("#")])
    return blocks


def test_the_readme_commands_run_as_written_in_a_new_shell(tiny_pipeline, tmp_path):
    root = clone_run(tiny_pipeline, tmp_path / "study")
    # the clone's .venv: this interpreter's environment, already installed (make setup is a no-op)
    (root / ".venv").mkdir()
    for part in ("bin", "lib", "pyvenv.cfg"):  # .venv/bin/python finds its packages beside it
        (root / ".venv" / part).symlink_to(Path(sys.prefix) / part)
    (root / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    (root / ".venv" / ".installed").touch()
    env = {**project_env(root), "PATH": PLAIN_PATH}
    env.pop("VIRTUAL_ENV", None)

    ran = []
    for page in PAGES:
        for block in readme_blocks(page):
            lines = [line for line in block if not any(cmd in line for cmd in NOT_RUN)]
            if not lines:
                continue
            script = "set -eo pipefail\n" + "\n".join(lines) + "\n"
            proc = subprocess.run(["bash", "-c", script], cwd=root, env=env, capture_output=True, text=True)
            assert proc.returncode == 0, f"{page}: block failed:\n{script}\n{proc.stdout}\n{proc.stderr}"
            ran += lines
    # the commands a reader copies most: they must be among those run, not silently dropped
    assert any(line.startswith("dvc params diff") for line in ran), ran
    assert any(line.startswith("dvc metrics diff") for line in ran), ran
    assert "make profile PROFILE=full" in ran and "source .venv/bin/activate" in ran, ran


def test_a_bare_dvc_command_fails_in_a_new_shell_without_activation(tmp_path):
    """The negative control of the test above: its shell really lacks the project's dvc."""
    proc = subprocess.run(["bash", "-c", "dvc --version"], cwd=tmp_path, env={"PATH": PLAIN_PATH},
                          capture_output=True, text=True)
    assert proc.returncode == 127, proc.stdout


def test_make_setup_names_the_python_it_needs(tmp_path):
    """Where python3 is not 3.11 and there is no python3.11, `make setup` stops before pip, saying so."""
    (tmp_path / "Makefile").write_bytes((REPO / "Makefile").read_bytes())
    (tmp_path / "pyproject.toml").write_bytes((REPO / "pyproject.toml").read_bytes())
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text('#!/bin/sh\n[ "$1" = --version ] && echo "Python 3.12.7" && exit 0\nexit 1\n')
    (fake / "python3").chmod(0o755)
    make = shutil.which("make")
    for named in ([], ["PYTHON=python3"]):  # found on PATH, or named by the user
        proc = subprocess.run([make, "setup", *named], cwd=tmp_path, env={"PATH": str(fake)},
                              capture_output=True, text=True)
        assert proc.returncode == 2 and not (tmp_path / ".venv").exists(), proc.stderr
        assert "needs Python 3.11" in proc.stderr and "Python 3.12.7" in proc.stderr and "PYTHON=" in proc.stderr


def test_the_readme_is_short_and_gives_the_answer_first():
    """At most 220 lines; its first screen holds the answer and the headline table; no commit hash,
    CPU model or dated run in README.md or docs/ outside docs/results.md's captions."""
    from fly64study.report import README_START

    readme = (REPO / "README.md").read_text()
    lines = readme.splitlines()
    assert len(lines) <= 220, len(lines)
    first = "\n".join(lines[:40])
    assert "**Answer.**" in first and README_START in first and "| LSQML |" in first
    history = re.compile(r"\b[0-9a-f]{7,40}\b(?<![0-9]{7})|EPYC|Xeon|\bAMD\b|\bIntel\b|20[0-9]{2}-[01][0-9]-[0-3][0-9]")
    for page in (p for p in PAGES if p != "docs/results.md"):
        for n, line in enumerate((REPO / page).read_text().splitlines(), 1):
            assert not history.search(line), f"{page}:{n}: {line}"
    for n, line in enumerate((REPO / "docs/results.md").read_text().splitlines(), 1):
        if history.search(line):
            assert line.startswith("*") and line.endswith("*"), f"docs/results.md:{n}: outside a caption: {line}"
