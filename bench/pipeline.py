"""Pipeline overhead: a no-op `dvc repro` and `dvc status` on the current profile (run after
`dvc repro`), beside `dvc version` (DVC's own start-up, the floor).

    .venv/bin/python bench/pipeline.py
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import best_of  # noqa: E402


def dvc(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_STUDIO_OFFLINE": "1"}
    return subprocess.run(["dvc", *args], capture_output=True, text=True, env=env, check=True)


def main() -> None:
    if "up to date" not in dvc("status").stdout:
        sys.exit("the pipeline is not up to date: run `dvc repro` first (this measures a no-op)")
    stages = len(yaml.safe_load(Path("dvc.lock").read_text())["stages"])
    floor = best_of(lambda: dvc("version"))
    status = best_of(lambda: dvc("status"))
    repro = best_of(lambda: dvc("repro"))
    print("| stages | `dvc version` (s) | `dvc status` (s) | no-op `dvc repro` (s) | status / version | repro / version |")
    print("|---|---|---|---|---|---|")
    print(f"| {stages} | {floor:.2f} | {status:.2f} | {repro:.2f} | {status / floor:.1f}× | {repro / floor:.1f}× |")


if __name__ == "__main__":
    main()
