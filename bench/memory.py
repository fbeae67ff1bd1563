"""Peak memory of phases C and D against the estimates the stages check before they start
(`fly64study.resources`): `generate@1e3` and the three `overlap@1e3-<view>` command lines of a
profile, each under `/usr/bin/time -v`, in a scratch folder (no DVC).

    .venv/bin/python bench/memory.py default full
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from fly64study import resources  # noqa: E402
from fly64study.design import load_params  # noqa: E402
from fly64study.profiles import compose  # noqa: E402


def peak(cmd: list[str], cwd: Path) -> tuple[int, float]:
    """(maximum resident set size in bytes, wall seconds) of ``cmd``."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) * 1024
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", proc.stderr).group(1)
    seconds = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
    return rss, seconds


def main(profiles: list[str]) -> None:
    print("| profile | stage | estimate | measured peak (RSS) | estimate / measured | wall |")
    print("|---|---|---|---|---|---|")
    for profile in profiles:
        with tempfile.TemporaryDirectory(prefix=f"fly64-memory-{profile}-") as tmp:
            root = Path(tmp)
            (root / "params.yaml").write_text(compose(profile, REPO / "profiles"))
            params = load_params(root / "params.yaml")
            dose = next(iter(params.design.doses))
            rows = [("generate@" + dose, lambda: resources.generate(params),
                     ["python", str(REPO / "stages/generate.py"), "--dose", dose, "--out", "c"])]
            rows += [(f"overlap@{dose}-{view}", lambda: resources.overlap(root / "c"),
                      ["python", str(REPO / "stages/overlap.py"), "--view", view, "--phase-c", "c", "--out", f"d/{view}"])
                     for view in params.design.views]
            for stage, estimate, cmd in rows:
                need = estimate()  # overlap's, from the files generate wrote
                rss, wall = peak(cmd, root)
                print(f"| {profile} | {stage} | {need.memory / 2**30:.2f} GiB | {rss / 2**30:.2f} GiB | "
                      f"{need.memory / rss:.2f} | {wall:.0f} s |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["default"])
