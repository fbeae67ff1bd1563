"""Queued sweeps: one params key over several values, as DVC experiments run by its queue.

Each value becomes `dvc exp run --queue -S <key>=<value> [targets]`; `dvc queue start -j N`
runs them N at a time, each in its own temporary copy of the project. Stages a value does not
change are restored from the run-cache, so a point costs only what it changes. Every value is
checked against the params rules before anything is queued. `dvc exp show` then lists each
point's params and metrics (the study's metrics files: phase D overlap, phase E evaluation,
phase G headline numbers); `dvc exp apply <name>` brings one into the workspace.

    python -m fly64study.sweeps design.views.sparse 0.1 0.2 0.3 0.4 [--jobs 2] [--target STAGE ...]
"""
from __future__ import annotations

import argparse
import copy
import re
import time
from pathlib import Path

from fly64study.cli import run
from fly64study.design import ParamsError, _yaml, params_from_dict, read_params
from fly64study.sharing import dvc

_QUEUED = re.compile(r"Queued experiment '([^']+)'")
_POLL_S = 2.0


def check_values(params_file: Path, key: str, values: list[str]) -> None:
    """Refuse, before anything is queued, a key the params file lacks or a value its rules reject."""
    raw = read_params(params_file)
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"{key}: no such key in {params_file} ('{'.'.join(parts[:i + 1])}' is missing)")
        node = node[part]
    *parents, leaf = parts
    for value in values:
        trial = copy.deepcopy(raw)
        target = trial
        for part in parents:
            target = target[part]
        try:  # as `-S key=value` will write it: YAML, so 0.3 is a number and [7, 8] a list
            target[leaf] = _yaml().load(value)
        except Exception as err:  # ruamel's parse errors have no common public base
            raise ParamsError(f"sweep value {key}={value}: not YAML ({str(err).splitlines()[0]})") from None
        try:
            params_from_dict(trial)
        except ParamsError as err:
            raise ParamsError(f"sweep value {key}={value}: {err}") from None


_WORKERS = re.compile(r"Worker status: (\d+) active, (\d+) idle")


def queue_status(root: Path) -> tuple[dict[str, str], int]:
    """(experiment name -> its queue state: Queued, Running, Success, Failed, ...; live workers)."""
    out = dvc("queue", "status", cwd=root, capture=True)
    rows, workers = {}, 0
    for line in out.splitlines():
        parts = line.split()
        if (found := _WORKERS.search(line)) is not None:
            workers = int(found.group(1)) + int(found.group(2))
        elif len(parts) >= 4 and parts[0] != "Task":
            rows[parts[1]] = parts[-1]
    return rows, workers


def sweep(root: Path, key: str, values: list[str], *, jobs: int = 1,
          targets: list[str] | None = None) -> dict[str, str]:
    """Queue one experiment per value, run the queue ``jobs`` at a time and wait for it.
    Returns value -> experiment name; an experiment that did not succeed is an error naming it."""
    if not values:
        raise ParamsError(f"sweep {key}: give at least one value")
    if jobs < 1:
        raise ParamsError("--jobs: must be >= 1")
    check_values(Path(root) / "params.yaml", key, values)
    names = {}
    for value in values:
        out = dvc("exp", "run", "--queue", "-S", f"{key}={value}", *(targets or []), cwd=root, capture=True)
        found = _QUEUED.search(out)
        if not found:
            raise SystemExit(f"dvc exp run --queue printed no experiment name:\n{out}")
        names[value] = found.group(1)
        print(f"queued {key}={value} as experiment '{names[value]}'", flush=True)
    dvc("queue", "start", "-j", str(jobs), cwd=root)
    last, idle_polls = None, 0
    while True:
        status, workers = queue_status(root)
        states = {n: status.get(n, "missing") for n in names.values()}
        summary = ", ".join(f"{n} {s}" for n, s in states.items())
        if summary != last:
            print(f"{time.strftime('%H:%M:%S')} {summary}", flush=True)
            last = summary
        if all(s not in ("Queued", "Running") for s in states.values()):
            break
        # workers start a few seconds after `dvc queue start`: only a lasting absence is an error
        idle_polls = idle_polls + 1 if workers == 0 else 0
        if idle_polls * _POLL_S > 60:
            raise SystemExit(f"sweep: no queue worker is alive and {summary}; restart them with "
                             "`dvc queue start -j N` (or see `dvc queue logs <name>`)")
        time.sleep(_POLL_S)
    failed = [f"{key}={v} ({n}: {states[n]})" for v, n in names.items() if states[n] != "Success"]
    if failed:
        raise SystemExit(f"sweep: {', '.join(failed)} did not succeed; see `dvc queue logs <name>`")
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("key", help="a params key, dotted (design.views.sparse, train.learning_rate)")
    parser.add_argument("values", nargs="+", help="the values, as YAML (0.3, [7, 8])")
    parser.add_argument("--jobs", type=int, default=1, help="experiments at a time (dvc queue start -j)")
    parser.add_argument("--target", action="append", help="only these stages and what they need (repeatable; "
                        "default: the whole pipeline)")
    args = parser.parse_args(argv)
    root = Path.cwd()
    sweep(root, args.key, args.values, jobs=args.jobs, targets=args.target)
    # the sweep's table: every point's changed params and metrics
    dvc("exp", "show", "--no-pager", "--only-changed", "--md", "--drop", "Created|State|Executor", cwd=root)


if __name__ == "__main__":
    run(main)
