"""Evidence hubs: RED/GREEN test logs, the deterministic training CLI runs, and their SHA256 archive.

A hub is ``plans/active/<initiative>/reports/<UTC stamp>/<name>/`` with ``red/ green/ collect/
cli/ prep/ data/ analysis/``. The Makefile's ``red``, ``green``, ``collect``, ``train-evidence``,
``archive`` and ``archive-check`` targets call the subcommands of this module::

    python -m fly64study.evidence pytest --expect fail|pass|collect --selector SEL --hub HUB
    python -m fly64study.evidence train --hub HUB --dose 1e3 --view dense --view baseline
    python -m fly64study.evidence archive --hub HUB
    python -m fly64study.evidence verify --hub HUB

``archive`` refuses (naming the file) a bundle whose SHA256 differs from its training manifest
or from the line the training CLI printed, and keeps the params the bundles were trained with
(``analysis/params.yaml``). ``verify`` re-checks an archived hub in any clone: a bundle whose
bytes are here is checked as it is; one that is missing is pulled from the DVC remote; failing
that it is regenerated from the hub's params (phases C, D and the deterministic training CLI,
in a scratch folder), which gives the same bytes on any x86-64 CPU (pinned numerics). It says
which route each bundle took. A hub records the code revision that made it (``analysis/code.json``;
a hub from before that record: the commit that added its params), and a regeneration runs that
revision's code, checked out in a ``git worktree``, so a hub stays verifiable after the code and
its params keys move on. Archived bundles are tracked by DVC (``dvc add``: a ``.dvc`` file
in git, the bytes in the cache and the remote), never committed to git.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

from fly64study.contract import ContractError
from fly64study.design import ParamsError, load_params
from fly64study.files import atomic_copy, atomic_path, sha256_file, write_json

LAYOUT = ("red", "green", "collect", "cli", "prep", "data", "analysis")
# the first seed of train.seeds prints the study's line; a further seed adds ", seed <s>"
SHA_LINE = re.compile(r"^(?P<view>\S+) \(dose=(?P<dose>[^)]+)\)(?:, seed (?P<seed>\d+))? → SHA256: (?P<sha>[0-9a-f]{64})$",
                      re.M)
EXPECT = {"fail": "red", "pass": "green", "collect": "collect"}
PARAMS = "params.yaml"  # the file DVC reads: a hub's inputs and its trainings come from this one


class EvidenceError(RuntimeError):
    """An evidence step did not give the expected outcome; the message says which and where."""


def make_hub(hub: str | Path) -> Path:
    hub = Path(hub)
    for sub in LAYOUT:
        (hub / sub).mkdir(parents=True, exist_ok=True)
    return hub


def inside_repo(hub: str | Path, root: Path = Path(".")) -> Path:
    """``hub`` if it lies inside the repository at ``root``; an :class:`EvidenceError` otherwise: an
    archived hub's bundles are tracked by this repository's DVC (``dvc add``) and its logs and
    ``.dvc`` files are committed to its git, which a folder outside it cannot be."""
    hub, top = Path(hub), root.resolve()
    if not hub.resolve().is_relative_to(top):
        raise EvidenceError(f"HUB={hub}: outside the repository ({top}); its bundles are tracked by this "
                            f"repository's DVC and its files committed to its git, so give a folder inside it, "
                            f"e.g. HUB=plans/active/<initiative>/reports/<stamp>/<name>")
    return hub


def log_name(selector: str) -> str:
    """A file name for a pytest selector: ``tests/test_x.py::test_y`` -> ``pytest_test_x_test_y``."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", selector.replace(".py", "").split("/")[-1]).strip("_")
    return f"pytest_{stem or 'all'}"


# ---------------------------------------------------------------------------- red / green
def run_pytest(hub: Path, selector: str, expect: str, name: str | None = None) -> Path:
    """Run pytest on ``selector``, tee its output to ``<hub>/<red|green|collect>/<name>.log`` and
    check the outcome from pytest's JUnit XML counts, not its exit code alone: ``fail`` (RED) needs
    at least one test that ran and failed in its own body and none that errored (a collection,
    import or fixture error is not the failure a RED test is written for); ``pass`` (GREEN) needs
    at least one test that ran and passed, and none failed, errored or all skipped; ``collect``
    must collect. Returns the log; raises :class:`EvidenceError` otherwise."""
    folder = make_hub(hub) / EXPECT[expect]
    log = folder / f"{name or log_name(selector)}.log"
    with tempfile.TemporaryDirectory(prefix="fly64-pytest-") as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", *(["--collect-only", "-q"] if expect == "collect" else ["-vv"]),
               f"--junitxml={junit}", *shlex.split(selector)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        with atomic_path(log) as out, open(out, "w") as fh:
            fh.write(f"$ {' '.join(c for c in cmd[1:] if not c.startswith('--junitxml'))}\n")
            for line in proc.stdout:
                sys.stdout.write(line)
                fh.write(line)
            rc = proc.wait()
            counts = junit_counts(junit)
            fh.write(f"exit code: {rc}\noutcome: {_describe(counts)}\n")
    ran = counts["tests"] - counts["skipped"]
    if expect == "fail":
        why = (f"{counts['errors']} error(s) in collection, setup or teardown (RED must fail in the test itself, "
               f"not before it runs)" if counts["errors"] else
               "" if counts["failures"] else "it passed" if ran else "no test ran")
        if why:
            raise EvidenceError(f"RED expected: {selector} must fail, but {why} ({_describe(counts)}, "
                                f"exit {rc}); log: {log}")
    elif expect == "pass":
        why = (f"{counts['failures']} failed, {counts['errors']} error(s)" if counts["failures"] or counts["errors"]
               else "no test was collected" if not counts["tests"]
               else "every selected test was skipped" if not ran
               else f"pytest exited {rc}" if rc else "")
        if why:
            raise EvidenceError(f"GREEN expected: {selector} must pass, but {why} ({_describe(counts)}); log: {log}")
    elif rc != 0:
        raise EvidenceError(f"collection expected: {selector} exited {rc}; log: {log}")
    return log


def junit_counts(path: Path) -> dict[str, int]:
    """tests / failures / errors / skipped summed over a pytest JUnit XML file's test suites (all
    zero when pytest wrote none: a usage error ends before any report)."""
    counts = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
    if not path.is_file():
        return counts
    root = ET.parse(path).getroot()
    for suite in ([root] if root.tag == "testsuite" else root.iter("testsuite")):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
    return counts


def _describe(counts: dict[str, int]) -> str:
    ran = counts["tests"] - counts["skipped"]
    return (f"{ran - counts['failures'] - counts['errors']} passed, {counts['failures']} failed, "
            f"{counts['errors']} errors, {counts['skipped']} skipped")


# ------------------------------------------------------------------------- training runs
def _dvc(root: Path, *args: str, log=None) -> subprocess.CompletedProcess:
    proc = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode and "Unable to read RWLock-file" in proc.stderr:
        # DVC writes .dvc/tmp/rwlock in place: a DVC killed mid-write leaves it corrupt, and DVC's
        # own advice is to delete it. It only records locks of running DVC commands.
        print("warning: DVC's .dvc/tmp/rwlock is corrupt (a DVC process was killed); removing it", file=sys.stderr)
        (root / ".dvc" / "tmp" / "rwlock").unlink(missing_ok=True)
        proc = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    if log is not None:
        log.write(f"$ dvc {' '.join(args)}\n{proc.stdout}{proc.stderr}exit code: {proc.returncode}\n")
    if proc.returncode:
        raise EvidenceError(f"dvc {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc


def train(hub: Path, *, dose: str, views: list[str], gridsizes: dict[str, int], root: Path = Path(".")) -> list[dict]:
    """Bring the jobs' phase C and D inputs up to date with ``params.yaml`` (``dvc repro
    overlap@<dose>-<view>``: a no-op when they are, a rerun of what changed otherwise; logged under
    ``prep/``, also when it fails), then run the deterministic training CLI once per job with the
    same ``params.yaml``, keeping its output and exit code under ``cli/``. Bundles go to
    ``data/evidence/<stamp>/`` (git-ignored, like every pipeline output); the hub records where
    in ``cli/artifact_root.txt``."""
    hub = make_hub(hub)
    artifacts = Path("data/evidence") / hub.parent.name / hub.name
    log = io.StringIO()
    try:
        for view in views:
            _dvc(root, "repro", f"overlap@{dose}-{view}", log=log)
    finally:
        with atomic_path(hub / "prep" / "prep.log") as tmp:
            tmp.write_text(log.getvalue())
    with atomic_path(hub / "cli" / "artifact_root.txt") as tmp:
        tmp.write_text(f"{artifacts}\n")
    atomic_copy(root / PARAMS, hub / "cli" / "params.yaml")  # the params these bundles are trained with
    write_json(hub / "cli" / "code.json", code_record(root))  # and the code
    results = []
    for view in views:
        g = gridsizes[view]
        stem = hub / "cli" / f"train_{dose}_{view}_gs{g}"
        cmd = [sys.executable, "stages/train.py", "--params", PARAMS, "--dose", dose, "--view", view,
               "--accelerator", "cpu", "--deterministic", "--num-workers", "0",
               "--artifact-root", str(artifacts), "--manifest-dir", str(artifacts / "runs" / f"{dose}-{view}"),
               "--timing-dir", str(artifacts / "timing")]
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
        with atomic_path(stem.with_suffix(".log")) as tmp:
            tmp.write_text(f"$ {' '.join(cmd[1:])}\n--- stdout\n{proc.stdout}--- stderr\n{proc.stderr}")
        with atomic_path(stem.with_suffix(".exit")) as tmp:
            tmp.write_text(f"{proc.returncode}\n")
        results.append({"dose": dose, "view": view, "gridsize": g, "exit_code": proc.returncode,
                        "log": str(stem.with_suffix(".log"))})
        print(f"{view} (dose={dose}) gs{g}: exit {proc.returncode}, log {stem.with_suffix('.log')}", flush=True)
    return results


# ------------------------------------------------------------------------------ archive
def _cli_digests(hub: Path) -> dict[tuple[str, str, int | None], str]:
    """(view, dose, seed) -> the SHA256 the training CLI printed, from every log under ``cli/``
    (seed None: the first seed's line, which does not name it)."""
    out = {}
    for log in sorted((hub / "cli").glob("*.log")):
        for m in SHA_LINE.finditer(log.read_text()):
            out[(m["view"], m["dose"], int(m["seed"]) if m["seed"] else None)] = m["sha"]
    return out


def archive(hub: Path, root: Path = Path(".")) -> list[dict]:
    """Copy manifests, skip summaries and bundles of the hub's CLI runs into ``data/`` and write
    ``analysis/``; refuse a bundle whose SHA256 differs from its manifest or the CLI's line."""
    hub = make_hub(hub)
    pointer = hub / "cli" / "artifact_root.txt"
    if not pointer.is_file():
        raise EvidenceError(f"{pointer}: missing; run `make train-evidence` for this hub first")
    trained_with = hub / "cli" / "code.json"
    if not trained_with.is_file():
        raise EvidenceError(f"{trained_with}: missing; run `make train-evidence` for this hub again")
    code = json.loads(trained_with.read_text())
    if code.get("trees") != code_record(root).get("trees"):
        raise EvidenceError("the code (src/, stages/, pyproject.toml) changed since `make train-evidence` made this hub's "
                            "bundles; run `make train-evidence` again, then `make archive`")
    artifacts = root / pointer.read_text().strip()
    manifests = sorted((artifacts / "runs").glob("*/training_manifest.json"))
    if not manifests:
        raise EvidenceError(f"{artifacts / 'runs'}: no training_manifest.json; did the CLI runs fail? see {hub / 'cli'}")
    printed = _cli_digests(hub)
    exits = {p.stem: int(p.read_text()) for p in (hub / "cli").glob("*.exit")}
    jobs, skipped, archived = [], [], []
    for path in manifests:
        jobs += json.loads(path.read_text())["jobs"]
        skip = path.with_name("skip_summary.json")
        if skip.is_file():
            skipped += json.loads(skip.read_text())["skipped"]
    for job in jobs:
        src = artifacts / job["bundle_path"]
        extra = job["seed"] if Path(job["bundle_path"]).parent.name.startswith("seed_") else None
        name = f"wts_{job['view']}_gs{job['gridsize']}{'' if extra is None else f'_seed{extra}'}.h5.zip"
        actual = sha256_file(src)
        if actual != job["sha256"]:
            raise EvidenceError(f"{src}: SHA256 {actual} differs from its training manifest ({job['sha256']})")
        cli = printed.get((job["view"], job["dose"], extra))
        if cli != actual:
            raise EvidenceError(f"{src}: SHA256 {actual} differs from the training CLI's stdout "
                                f"({cli or 'no SHA256 line'}, {hub / 'cli'})")
        atomic_copy(src, hub / "data" / name)
        if sha256_file(hub / "data" / name) != actual:
            raise EvidenceError(f"{hub / 'data' / name}: the copy differs from {src}")
        archived.append({**job, "archived_as": f"data/{name}"})
    params = pointer.with_name("params.yaml")
    if not params.is_file():
        raise EvidenceError(f"{params}: missing; run `make train-evidence` for this hub again")
    atomic_copy(params, hub / "analysis" / "params.yaml")  # what verify regenerates from
    atomic_copy(trained_with, hub / "analysis" / "code.json")  # verify regenerates with this code
    merged = {"jobs": archived, "sources": [str(p) for p in manifests]}
    write_json(hub / "data" / "training_manifest.json", merged)
    write_json(hub / "data" / "skip_summary.json", {"count": len(skipped), "skipped": skipped})
    with atomic_path(hub / "analysis" / "bundle_checksums.txt") as tmp:
        tmp.write_text("".join(f"{j['sha256']}  {j['archived_as']}\n" for j in archived))
    with atomic_path(hub / "analysis" / "training_manifest_pretty.json") as tmp:
        tmp.write_text(json.dumps(merged, indent=4, sort_keys=True, ensure_ascii=False) + "\n")
    with atomic_path(hub / "analysis" / "summary.md") as tmp:
        tmp.write_text(_summary(hub, archived, skipped, exits))
    # the bundles' bytes go to the DVC cache (and remote); git gets the small .dvc files
    _dvc(root, "add", *[str((hub / j["archived_as"]).resolve().relative_to(root.resolve())) for j in archived])
    return archived


CODE = ("src", "stages", "pyproject.toml")  # what a regeneration runs: the package, the stage scripts, the pins
_SHA = re.compile(r"[0-9a-f]{40}")


def _git(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, env=env)
    except FileNotFoundError:  # no git at all: as outside a checkout
        return subprocess.CompletedProcess(["git", *args], 127, "", "git: not installed")


def code_record(root: Path) -> dict:
    """The code a hub's bundles are trained with: the commit, and the git tree ids of :data:`CODE`
    as they are in the working tree (uncommitted changes included), so that ``verify`` uses a
    commit only if it holds exactly that code."""
    head = _git(root, "rev-parse", "--verify", "HEAD")
    if head.returncode:
        return {"commit": None, "trees": {}, "note": "not a git checkout: the code is not recorded"}
    with tempfile.TemporaryDirectory(prefix="fly64-index-") as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}  # git's own index stays untouched
        present = [p for p in CODE if (root / p).exists()]  # git add refuses the lot over one missing path
        for args in (("read-tree", "HEAD"), ("rm", "-r", "--cached", "--quiet", "--ignore-unmatch", "--", *CODE),
                     ("add", "--all", "--", *present)):
            _git(root, *args, env=env)
        tree = _git(root, "write-tree", env=env).stdout.strip()
    trees = {p: _object(root, f"{tree}:{p}") for p in CODE}
    return {"commit": head.stdout.strip(), "trees": trees,
            "uncommitted_changes": any(trees[p] != _object(root, f"HEAD:{p}") for p in CODE)}


def _object(root: Path, spec: str) -> str | None:
    """The git object id of ``<tree-ish>:<path>``; None where the path is not there."""
    proc = _git(root, "rev-parse", "--verify", "--quiet", spec)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def _holds(root: Path, commit: str, trees: dict) -> bool:
    """Whether ``commit`` is in this clone and holds exactly the recorded code."""
    if _git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode:
        return False
    return all(_object(root, f"{commit}:{p}") == tree for p, tree in trees.items())


def _added(hub: Path, root: Path) -> str | None:
    """The commit that added the hub's params to git at their path (no --follow: its rename detection
    takes a hub's params.yaml for a copy of the study's own and follows that file's history instead)."""
    log = _git(root, "log", "--diff-filter=A", "--format=%H", "--",
               str((hub / "analysis" / "params.yaml").resolve()))
    return (log.stdout.split() or [None])[-1]


def _hub_code(hub: Path, root: Path) -> tuple[str | None, str]:
    """The commit whose code made the hub, and how it was found; None: this checkout's own code."""
    shallow = _git(root, "rev-parse", "--is-shallow-repository").stdout.strip() == "true"
    unshallow = " (this clone is shallow: `git fetch --unshallow` brings the history)" if shallow else ""
    record = hub / "analysis" / "code.json"
    if record.is_file():
        try:
            code = json.loads(record.read_text())
            commit, trees = code.get("commit"), dict(code.get("trees") or {})
        except (ValueError, AttributeError, TypeError) as err:
            raise EvidenceError(f"{record}: not a code record ({err}); it is written by `make archive`") from None
        if commit is None:
            return None, "this checkout's code: the hub was made outside a git checkout"
        for candidate, how in ((commit, "recorded in the hub"), (_added(hub, root), "the commit that added the hub, "
                                                                   "which holds the code the hub recorded")):
            if candidate and _SHA.fullmatch(candidate) and _holds(root, candidate, trees):
                return candidate, how
        dirty = ", with uncommitted changes to its code that no commit here holds" if code.get("uncommitted_changes") else ""
        raise EvidenceError(f"{record}: the hub was made by {commit[:12]}{dirty}; this clone has no commit with that "
                            f"code{unshallow}")
    if shallow:
        raise EvidenceError(f"{hub}: a hub from before code records, in a shallow clone: which commit added it "
                            "cannot be told; `git fetch --unshallow` first")
    added = _added(hub, root)
    if added:  # it was committed with the code that made it
        return added, "the commit that added the hub, which predates code records"
    return None, "this checkout's code: the hub is not in git"


def _code_tree(rev: str | None, root: Path, scratch: Path, created: list[Path]) -> Path:
    """A checkout of ``rev`` (a ``git worktree`` in ``scratch``, appended to ``created``), or ``root``
    itself where that is exactly its code."""
    head = _git(root, "rev-parse", "--verify", "HEAD").stdout.strip()
    dirty = _git(root, "status", "--porcelain", "--untracked-files=no", "--", *CODE).stdout.strip()
    if rev is None or (rev == head and not dirty):
        return root
    tree = (scratch / f"code_{rev[:12]}").resolve()
    proc = _git(root, "worktree", "add", "--detach", str(tree), rev)
    if proc.returncode:
        raise EvidenceError(f"checking out {rev[:12]}, the code that made the hub: {proc.stderr.strip()[-300:]}")
    created.append(tree)
    ours, theirs = (_pins(d / "pyproject.toml") for d in (root, tree))
    notes = ([f"{rev[:12]} pinned {', '.join(sorted(theirs - ours))}"] if theirs - ours else []) + (
        [f"this checkout pins {', '.join(sorted(ours - theirs))}"] if ours - theirs else [])
    if notes:  # the study's own environment runs that code; say where the pins differ
        print(f"  note: {'; '.join(notes)}", flush=True)
    return tree


def _pins(pyproject: Path) -> set[str]:
    try:
        return set(tomllib.loads(pyproject.read_text())["project"]["dependencies"])
    except (OSError, KeyError, ValueError):
        return set()


def _summary(hub: Path, jobs: list[dict], skipped: list[dict], exits: dict[str, int]) -> str:
    lines = [f"# Evidence summary: {hub.name}", "", "## What ran", "",
             "| CLI run | exit code |", "|---|---|"]
    lines += [f"| `cli/{stem}.log` | {rc} |" for stem, rc in sorted(exits.items())]
    lines += ["", "## Bundles (SHA256 equal in the training manifest, the CLI's stdout and the archived copy)", "",
              "| view | dose | gridsize | seed | archived as | SHA256 | size (bytes) | held-out phase RMSE (flat) |",
              "|---|---|---|---|---|---|---|---|"]
    for j in jobs:
        ev = j.get("evaluation", {})
        rmse = f"{ev['phase_rmse_rad']:.3f} ({ev['flat_phase_rmse_rad']:.3f})" if "phase_rmse_rad" in ev else "—"
        lines.append(f"| {j['view']} | {j['dose']} | {j['gridsize']} | {j['seed']} | `{j['archived_as']}` | `{j['sha256']}` | "
                     f"{j['size']} | {rmse} |")
    lines += ["", "## Skipped jobs", ""]
    lines += [f"- {s['view']} (dose={s['dose']}): {s['reason']}" for s in skipped] or ["- none"]
    failed = [stem for stem, rc in exits.items() if rc]
    lines += ["", "## Open items", ""]
    lines += [f"- `cli/{stem}.log` exited non-zero: see the log" for stem in failed] or [
        "- none from these runs; check: `cd " + str(hub) + " && sha256sum -c analysis/bundle_checksums.txt`"]
    return "\n".join(lines) + "\n"


def _regenerate(hub: Path, rel: str, job: dict, scratch: Path, root: Path, code: Path) -> Path:
    """Train the job of ``rel`` again from the hub's params, in ``scratch``: phase C of its dose,
    phase D of its view, then the deterministic training CLI (the same command as ``cli/``), all
    with the code checked out in ``code`` (:func:`_code_tree`)."""
    params = hub / "analysis" / "params.yaml"
    if not params.is_file():
        raise EvidenceError(f"{hub / rel}: missing, not in the DVC cache or remote, and {params} is missing, "
                            "so the bundle cannot be regenerated (the hub predates archived params)")
    dose, view = job["dose"], job["view"]
    phase_c, phase_d = scratch / "phase_c" / f"dose_{dose}", scratch / "phase_d"
    steps = []
    if not (phase_c / "patched_train.npz").is_file():
        steps.append(["stages/generate.py", "--dose", dose, "--out", str(phase_c)])
    if not (phase_d / f"dose_{dose}" / view / "train.npz").is_file():
        steps.append(["stages/overlap.py", "--view", view, "--phase-c", str(phase_c),
                      "--out", str(phase_d / f"dose_{dose}" / view)])
    steps.append(["stages/train.py", "--dose", dose, "--view", view, "--phase-d", str(phase_d),
                  "--artifact-root", str(scratch / "phase_e"), "--timing-dir", str(scratch / "timing"),
                  "--accelerator", "cpu", "--deterministic", "--num-workers", "0"])
    for step in steps:
        print(f"  regenerating {rel}: {' '.join(step[:1] + step[1:5])} …", flush=True)
        proc = subprocess.run([sys.executable, step[0], "--params", str(params.resolve()), *step[1:]],
                              cwd=code, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  [str((code / "src").resolve()), *filter(None, [os.environ.get("PYTHONPATH")])])},
                              capture_output=True, text=True)
        if proc.returncode:
            raise EvidenceError(f"regenerating {rel}: {step[0]} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return scratch / "phase_e" / job["bundle_path"]


@contextlib.contextmanager
def _worktrees(root: Path):
    """The git worktrees a verification checks out (it appends them), removed afterwards whatever happens."""
    created: list[Path] = []
    try:
        yield created
    finally:
        for tree in created:
            proc = _git(root, "worktree", "remove", "--force", str(tree))
            if proc.returncode:
                print(f"  note: could not remove the worktree {tree}: {proc.stderr.strip()}", file=sys.stderr)
        if created:
            _git(root, "worktree", "prune")


def verify(hub: Path, root: Path = Path("."), scratch: Path | None = None) -> dict[str, str]:
    """Re-check an archived hub: every bundle of its training manifest must be listed in
    ``analysis/bundle_checksums.txt`` with the manifest's SHA256, and its bytes must have it.
    Bytes come from the hub (route ``present``), else the DVC remote (``pulled``), else a
    regeneration in ``scratch`` (``regenerated``; a temporary folder by default). Returns the
    route per archived file."""
    sums = hub / "analysis" / "bundle_checksums.txt"
    manifest_path = hub / "data" / "training_manifest.json"
    for path, fix in ((sums, "run `make archive` first"), (manifest_path, "the hub is incomplete; run `make archive`")):
        if not path.is_file():
            raise EvidenceError(f"{path}: missing; {fix}")
    try:
        jobs = {j["archived_as"]: j for j in json.loads(manifest_path.read_text())["jobs"]}
    except (ValueError, KeyError, TypeError) as err:
        raise EvidenceError(f"{manifest_path}: not a training manifest ({err})") from None
    listed = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            try:
                digest, rel = line.split(None, 1)
            except ValueError:
                raise EvidenceError(f"{sums}: {line!r} is not '<sha256>  <path>'; rerun `make archive`") from None
            listed[rel.strip()] = digest
    if not jobs:
        raise EvidenceError(f"{manifest_path}: no job; an empty hub proves nothing")
    missing = sorted(set(jobs) - set(listed))
    if missing:
        raise EvidenceError(f"{sums}: no checksum for {missing} of the training manifest's jobs")
    extra = sorted(set(listed) - set(jobs))
    if extra:
        raise EvidenceError(f"{sums}: lists {extra}, which the training manifest does not hold")
    routes, code = {}, None
    with tempfile.TemporaryDirectory(prefix="fly64-verify-") as tmp, _worktrees(root) as created:
        scratch = Path(scratch or tmp)
        for rel, digest in listed.items():
            path, route = hub / rel, "present"
            if jobs[rel]["sha256"] != digest:
                raise EvidenceError(f"{path}: {sums.name} says {digest}, the archived manifest {jobs[rel]['sha256']}")
            if not path.is_file() and path.with_name(path.name + ".dvc").is_file():
                pulled = subprocess.run(["dvc", "pull", "-q", str(path.with_name(path.name + ".dvc"))], cwd=root,
                                        capture_output=True, text=True)
                route = "pulled" if pulled.returncode == 0 and path.is_file() else route
            if not path.is_file():
                if code is None:  # the first bundle to regenerate: find and check out the hub's code once
                    rev, known = _hub_code(hub, root)
                    code = _code_tree(rev, root, scratch, created)
                    print(f"  regenerating with the code of {rev[:12] if rev else 'this checkout'} ({known})", flush=True)
                path, route = _regenerate(hub, rel, jobs[rel], scratch, root, code), "regenerated"
            actual = sha256_file(path)
            if actual != digest:
                hint = (" (regenerated from the hub's params with the code that made it: the numerics or the "
                        "environment differ from the run that made the hub)" if route == "regenerated" else "")
                raise EvidenceError(f"{hub / rel}: SHA256 {actual} differs from {sums.name} ({digest}){hint}")
            routes[rel] = route
            print(f"{rel}: SHA256 {digest} matches ({route})", flush=True)
    return routes


# ------------------------------------------------------------------------ command line
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fly64study.evidence", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pytest", help="RED / GREEN / collect-only pytest evidence")
    p.add_argument("--hub", required=True)
    p.add_argument("--selector", required=True)
    p.add_argument("--expect", choices=sorted(EXPECT), required=True)
    p.add_argument("--name", help="log file name (default: from the selector)")
    p = sub.add_parser("train", help="prepare inputs, run the deterministic training CLI per job")
    p.add_argument("--hub", required=True)
    p.add_argument("--dose", default="1e3")
    p.add_argument("--view", action="append", help="job / view (repeatable; default: dense, baseline)")
    for name in ("archive", "verify"):
        sub.add_parser(name).add_argument("--hub", required=True)
    args = parser.parse_args(argv)
    hub = Path(args.hub)
    try:
        if args.command != "pytest":  # test logs may go anywhere; bundles must be this repository's
            hub = inside_repo(hub)
        if args.command == "pytest":
            log = run_pytest(hub, args.selector, args.expect, args.name)
            print(f"{ {'fail': 'RED', 'pass': 'GREEN', 'collect': 'collected'}[args.expect]} as expected: {log}")
        elif args.command == "train":
            params = load_params(PARAMS)
            views = args.view or ["dense", "baseline"]
            unknown = [v for v in views if v not in params.train.jobs]
            if unknown:
                raise EvidenceError(f"--view {unknown[0]}: not a job of train.jobs {list(params.train.jobs)}")
            if args.dose not in params.design.doses:
                raise EvidenceError(f"--dose {args.dose}: not a dose of design.doses {list(params.design.doses)}")
            results = train(hub, dose=args.dose, views=views, gridsizes=params.train.jobs)
            failed = [r for r in results if r["exit_code"]]
            if failed:
                raise EvidenceError(f"training CLI failed for {[r['view'] for r in failed]}; see {failed[0]['log']}")
        elif args.command == "archive":
            jobs = archive(hub)
            print(f"archived {len(jobs)} bundles in {hub / 'data'}; check: cd {hub} && sha256sum -c "
                  f"analysis/bundle_checksums.txt")
        else:
            routes = verify(hub)
            print(f"{len(routes)} bundles match {hub / 'analysis' / 'bundle_checksums.txt'} and the manifest "
                  f"({', '.join(f'{n} {r}' for r in ('present', 'pulled', 'regenerated') if (n := list(routes.values()).count(r)))})")
    except (EvidenceError, ParamsError, ContractError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    main()
