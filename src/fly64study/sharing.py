"""One study on several machines: a team remote, and the job matrix fanned out by dose.

DVC does the work. A remote holds data and the run-cache (one small entry per stage run: its
command, dependency and params hashes, and its outputs' hashes), and `dvc repro` restores a
stage whose entry it finds instead of running it ("Stage '...' is cached - skipping run").
So each machine runs `dvc repro` on its share of the stages and pushes; a collector fetches the
run-cache and runs `dvc repro --pull`, which restores every shared stage and runs only the stages
of no dose (design, a few seconds; the report, which reads every dose).

One gap of DVC 3.67 is closed here (:func:`push`): `dvc push --run-cache` sends the run-cache
entries, but of the files they name only those the workspace's dvc.lock names in the DVC cache.
A stage's git-kept metrics and plot tables (`cache: false`) are in neither, so without them a
collector could not restore the stage and would run it again.

Command line (the Makefile's push, share and gather targets):
    python -m fly64study.sharing push [--remote R]
    python -m fly64study.sharing share --dose 1e3 [--dose ...] [--remote R]
    python -m fly64study.sharing gather            (the default remote)
"""
from __future__ import annotations

import argparse
import fnmatch
import logging
import subprocess
from pathlib import Path

from fly64study.cli import run
from fly64study.design import ParamsError, load_params

log = logging.getLogger(__name__)


def dvc(*args: str, cwd: Path, capture: bool = False) -> str:
    """Run a dvc command in ``cwd``: echoed with its output shown, or quietly with its stdout
    returned (``capture``); a failure ends the program with DVC's message."""
    cmd = ["dvc", *args]
    if not capture:
        print("+ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=cwd, capture_output=capture, text=True)
    if proc.returncode:
        raise SystemExit(f"`{' '.join(cmd)}` failed" + (f": {proc.stderr.strip()}" if capture else " (above)"))
    return proc.stdout if capture else ""


def _remote(remote: str | None) -> list[str]:
    return ["-r", remote] if remote else []


def share_targets(doses: list[str]) -> list[str]:
    """`dvc repro --glob` targets of the stages of these doses: ``<stage>@<dose>`` and
    ``<stage>@<dose>-<view>``, with what they depend on. The stages of no dose (design, report)
    are left to the collector."""
    return [t for d in doses for t in (f"*@{d}", f"*@{d}-*")]


def push_run_cache(root: Path, remote: str | None = None) -> tuple[int, int]:
    """Send every run-cache entry of ``root`` and every file its entries name that the local
    cache holds. Returns (entries, files sent); files the remote had already are not sent again."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        entries = repo.stage_cache.push(remote)
        objs = set()
        # force: an entry naming a directory this cache lacks is skipped, not asked about
        for found in repo.stage_cache.get_used_objs(entries, force=True).values():
            objs |= found
        # an entry of a run whose files `dvc gc` removed: skipped (that stage reruns elsewhere)
        held = {h for h in objs if (repo.cache.local if h.name == "md5" else repo.cache.legacy).exists(h.value)}
        result = repo.cloud.push(held, remote=remote)
        if result.failed:
            raise SystemExit(f"push: {len(result.failed)} run-cache files failed to reach the remote")
    log.info("run-cache: %d entries, %d of their files sent (%d not held here)", len(entries),
             len(result.transferred), len(objs) - len(held))
    return len(entries), len(result.transferred)


def push(root: Path, remote: str | None = None, stages: list[str] | None = None) -> None:
    """`dvc push` (what dvc.lock and the .dvc files name; with ``stages``, stage names or
    dvc.yaml, their outputs alone) and the run-cache with all its files."""
    dvc("push", *_remote(remote), *(stages or []), cwd=root)
    entries, sent = push_run_cache(root, remote)
    print(f"run-cache: {entries} entries pushed, with {sent} files the remote lacked", flush=True)


def share(root: Path, doses: list[str], remote: str | None = None) -> None:
    """Run this machine's share of the study (every stage of ``doses``) and push it."""
    known = list(dict.keys(load_params(Path(root) / "params.yaml").design.doses))
    for d in doses:
        if d not in known:
            raise ParamsError(f"--dose {d}: not a dose of design.doses; choose from {known}")
    if not doses:
        raise ParamsError(f"share: name at least one dose (--dose), of {known}")
    targets = share_targets(doses)
    dvc("repro", "--glob", *targets, cwd=root)
    # this share's outputs (the lock's other entries are other shares': not here to push);
    # `dvc push --glob` matches file paths, not stage names, so the names are matched here
    listed = dvc("stage", "list", "--name-only", cwd=root, capture=True).split()
    push(root, remote, [name for name in listed if any(fnmatch.fnmatchcase(name, t) for t in targets)])


def gather(root: Path) -> None:
    """Fetch every share's run-cache, then `dvc repro --pull`: shared stages are restored (their
    files pulled as needed), the rest run; then push the pipeline's outputs (not the archived
    hubs' bundles, which a collector need not hold), so the next colleague restores those too.
    The default remote only: `dvc repro --pull` has no remote option."""
    dvc("fetch", "--run-cache", cwd=root)
    dvc("repro", "--pull", cwd=root)
    push(root, stages=["dvc.yaml"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("push", "share", "gather"))
    parser.add_argument("--dose", action="append", default=[], help="share: a dose label of design.doses "
                        "(repeatable)")
    parser.add_argument("--remote", help="push, share: a DVC remote's name (default: core.remote, e.g. set in "
                        ".dvc/config.local)")
    args = parser.parse_args(argv)
    root = Path.cwd()
    if args.action == "share":
        share(root, args.dose, args.remote)
    elif args.dose:
        raise ParamsError(f"--dose: only for share, not {args.action}")
    elif args.action == "push":
        push(root, args.remote)
    elif args.remote:
        raise ParamsError("--remote: gather uses the default remote (`dvc repro --pull` has no remote option); "
                          "make it the default with `dvc remote default --local <name>`")
    else:
        gather(root)


if __name__ == "__main__":
    run(main)
