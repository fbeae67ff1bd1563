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

Command line (the Makefile's push, pull, share and gather targets):
    python -m fly64study.sharing push [--remote R]
    python -m fly64study.sharing pull [--remote R]   (then every object it brought in re-hashed)
    python -m fly64study.sharing share --dose 1e3 [--dose ...] [--remote R]
    python -m fly64study.sharing gather            (the default remote)
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from fly64study.cli import run
from fly64study.design import ParamsError, load_params
from fly64study.files import atomic_path, existing_folder, md5_file

log = logging.getLogger(__name__)
# a checkout that failed with less free than this, where DVC does not say why, is called a full disk
FULL_BELOW_MIB = 64


def dvc(*args: str, cwd: Path, capture: bool = False) -> str:
    """Run a dvc command in ``cwd``: echoed with its output shown, or quietly with its stdout
    returned (``capture``). A failure ends the program with one line saying what went wrong
    (:func:`transfer_failure`); DVC's own messages are kept in ``.dvc/tmp/<command>.log``."""
    cmd = ["dvc", *args]
    if not capture:
        print("+ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE,
                            text=True)
    stdout, messages = "", []
    if capture:
        stdout, err = proc.communicate()
        messages.append(err)
    else:
        for line in proc.stderr:  # shown as they come (a stage's log, DVC's warnings), and kept
            if not line.startswith("ERROR"):
                print(line, end="", file=sys.stderr, flush=True)
            messages.append(line)
    stderr = "".join(messages)
    if proc.wait():
        saved = Path(cwd) / ".dvc" / "tmp" / f"{args[0]}.log"
        with contextlib.suppress(OSError), atomic_path(saved) as tmp:  # a full disk may have no room for it
            tmp.write_text(stderr)
        raise SystemExit(f"error: {transfer_failure(cmd, proc.returncode, stderr, Path(cwd))} (DVC's messages: "
                         f"{saved.relative_to(cwd) if saved.is_file() else 'not kept: no space'})")
    return stdout


def transfer_failure(cmd: list[str], code: int, stderr: str, cwd: Path = Path(".")) -> str:
    """What a failed dvc command's messages come to, in one line: a full disk (and where), a
    connection that broke, or DVC's last error. DVC moves an object into a cache or remote only
    once it is whole (a temporary name, then a rename), so what failed is only not there yet."""
    what = " ".join(cmd[:2])
    errors = [line[len("ERROR: "):] for line in stderr.splitlines() if line.startswith("ERROR: ")]
    failed = re.search(r"(\d+) files? failed to (upload|download)", stderr)
    count = f"; {failed.group(1)} files were not {failed.group(2)}ed" if failed else ""
    again = "then run the same command again: it transfers only what is missing"

    def room(path: Path) -> tuple[str, bool]:
        """How much is free where ``path`` would be written, and whether that is a full disk's little."""
        free = shutil.disk_usage(existing_folder(path)).free / 2**20
        return f"{free:.1f} MiB free there", free < FULL_BELOW_MIB
    full = re.search(r"\[Errno (28|122)\] [^:]*: '[^']*' -> '([^']*)'", stderr)
    if full or "[Errno 28] No space left on device" in stderr:
        place = ""
        if full:
            where = Path(full.group(2)).parent  # <root>/files/md5/<xx>/.<tmp>: the cache or remote
            root = where.parents[2] if where.parent.name == "md5" and len(where.parents) > 2 else where
            place = f" at {root} ({room(where)[0]})"
        kind = "disk quota exceeded" if full and full.group(1) == "122" else "disk full"
        return f"`{what}`: {kind}{place}{count}; no object is half-written under its name; free space, {again}"
    link = re.search(r"No possible cache link types for '([^',]*)", stderr)
    if link:  # DVC's words for a checkout that could not write a file
        free, little = room(Path(link.group(1)).parent)
        why = "the disk is full" if little else "DVC could neither link nor copy it there"
        return (f"`{what}`: could not put {link.group(1)} in place (DVC: 'no possible cache link types'; "
                f"{free}: {why}); {'free space, ' if little else ''}{again}")
    checkout = re.search(r"Checkout failed for following targets:\n(.*?)\nIs your cache up to date", stderr, re.S)
    if checkout:  # DVC's words for both a file it could not write and an object it does not have
        targets = [t.strip() for t in checkout.group(1).splitlines() if t.strip()]
        which = f"{targets[0]}" + (f" and {len(targets) - 1} more" if len(targets) > 1 else "") if targets else "files"
        if "do not exist neither locally nor on remote" in stderr:
            return (f"`{what}`: {which} not checked out: their objects are neither in the cache nor on the remote "
                    "(never pushed there, or dropped by DVC as corrupted); `dvc repro` remakes them, or `make push` "
                    "them from a clone that has them")
        free, little = room(cwd / targets[0] if targets else cwd)
        why = "the disk is full" if little else "DVC says no more (`dvc checkout -v` shows why)"
        return f"`{what}`: could not check out {which} ({free}: {why}); {'free space, ' if little else ''}{again}"
    broke = next((m.group(0) for line in errors if (m := re.search(
        r"Connection (?:not open|lost|refused|reset|closed)|Could not connect|Host is unreachable", line))), None)
    if broke:
        return (f"`{what}`: the connection to the remote failed ({broke}){count}; objects that reached it are "
                f"whole; once the remote is reachable, {again}")
    if code == 141 and not errors:
        # DVC takes any BrokenPipeError for its own stdout's and exits 141 in silence (dvc/cli/__init__.py):
        # a connection to an SSH remote that broke mid-transfer looks so
        return (f"`{what}` ended with status 141 and no message: a broken pipe, here a connection to the remote "
                f"that broke mid-transfer (or a reader of its output that went away); objects that reached the "
                f"remote are whole; once it is reachable, {again}")
    return f"`{' '.join(cmd)}` failed (exit {code}): " + (errors[-1] if errors else stderr.strip()[-300:])


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
            raise SystemExit(f"error: `make push`: {len(result.failed)} run-cache files did not reach the remote "
                             "(a full disk or a broken connection; `dvc push` before it succeeded); run it again")
    log.info("run-cache: %d entries, %d of their files sent (%d not held here)", len(entries),
             len(result.transferred), len(objs) - len(held))
    return len(entries), len(result.transferred)


def push(root: Path, remote: str | None = None, stages: list[str] | None = None) -> None:
    """`dvc push` (what dvc.lock and the .dvc files name; with ``stages``, stage names or
    dvc.yaml, their outputs alone) and the run-cache with all its files."""
    dvc("push", *_remote(remote), *(stages or []), cwd=root)
    try:
        entries, sent = push_run_cache(root, remote)
    except Exception as err:  # noqa: BLE001 - OSError, DvcException, asyncssh's own: any is one line
        raise SystemExit(f"error: `make push`: the run-cache did not reach the remote ({type(err).__name__}: {err}); "
                         "`dvc push` before it succeeded; run it again") from None
    print(f"run-cache: {entries} entries pushed, with {sent} files the remote lacked", flush=True)


def pull(root: Path, remote: str | None = None) -> None:
    """`dvc pull --run-cache`, then every object brought into the cache since the last pull that
    was checked re-hashed. DVC takes a remote's bytes on trust (an SSH or cloud remote without
    ``verify``, and any object it finds read-only, as it leaves every object it stores) and records
    them under the expected hash, so `dvc status` and `dvc repro` would not notice a corrupted
    object: here it is found, and removed with the workspace copy made from it."""
    from dvc.repo import Repo

    # objects a failed pull brought in are checked by the next one: the time stays until a check completes
    marker = root / ".dvc" / "tmp" / "pull-unverified-since"
    since = float(marker.read_text()) if marker.is_file() else time.time() - 1  # ctime: the rename into the cache
    with atomic_path(marker) as tmp:
        tmp.write_text(f"{since}\n")
    with Repo(str(root)) as repo:  # its index is read after the pull (dvc.lock and the .dvc files)
        try:
            dvc("pull", "--run-cache", *_remote(remote), cwd=root)
        finally:
            with contextlib.suppress(OSError):  # the pull's own error is the one to show
                if dropped := drop_dvc_temporaries(repo):
                    log.info("removed %d partial file(s) DVC left beside the outputs it could not check out", dropped)
        bad = corrupted_pulls(root, repo, since)
        odb = repo.cloud.get_remote_odb(remote)
        for path, expected, actual in bad:
            print(f"error: {path}: the object pulled for it has MD5 {actual}, not the recorded {expected}: the "
                  f"remote's object {odb.oid_to_path(expected)} is corrupted; removed here", file=sys.stderr,
                  flush=True)
    marker.unlink()
    if not bad:
        print("every object pulled matches its recorded MD5", flush=True)
        return
    raise SystemExit(f"error: {len(bad)} pulled file(s) were not the bytes the study recorded and are removed; "
                     "`dvc repro` remakes them from their inputs; to mend the remote, delete those objects there and "
                     "`make push` from a clone that has them whole (a push does not resend an object the remote has)")


def drop_dvc_temporaries(repo) -> int:
    """Remove the partial copies a failed `dvc checkout` leaves beside the outputs (DVC copies to
    ``.<22 random characters>.tmp`` and renames; on a full disk the copy stays). Returns how many."""
    pattern = re.compile(r"\.[A-Za-z0-9_-]{22}\.tmp")
    folders = {Path(out.fs_path).parent for out in repo.index.outs}  # a folder output lies under its parent
    dropped = 0
    for folder in folders - {f for f in folders if any(p in folders for p in f.parents)}:  # each tree once
        for path in (folder.rglob(".*.tmp") if folder.is_dir() else ()):
            if pattern.fullmatch(path.name) and path.is_file():
                path.unlink()
                dropped += 1
    return dropped


def corrupted_pulls(root: Path, repo, since: float) -> list[tuple[str, str, str]]:
    """(path, recorded MD5, actual MD5) of each output file (or folder, for a folder's listing)
    whose cache object arrived after ``since`` with other bytes; that object and the workspace
    files checked out from it are removed."""
    cache = repo.cache.local
    by_object = {}  # md5 -> workspace paths: one object may be several files (a view that keeps every position)
    bad = []

    def arrived_altered(md5: str) -> str | None:
        """The actual MD5 of the object named ``md5``, if it came after ``since`` with other bytes."""
        obj = Path(cache.oid_to_path(md5))
        if not obj.is_file() or obj.stat().st_ctime < since or (actual := md5_file(obj)) == md5.removesuffix(".dir"):
            return None
        obj.unlink()
        return actual

    for out in repo.index.outs:
        if not out.use_cache or not out.hash_info or not out.hash_info.value:
            continue  # git keeps a `cache: false` output (a metrics table): not DVC's to pull
        md5, path = out.hash_info.value, Path(out.fs_path)
        if not out.hash_info.isdir:
            by_object.setdefault(md5, []).append(path)
            continue
        if actual := arrived_altered(md5):  # a folder's listing (JSON): its files cannot be told
            bad.append((os.path.relpath(path, root), md5, actual))
            continue
        listing = Path(cache.oid_to_path(md5))
        if listing.is_file():
            for entry in json.loads(listing.read_text()):
                by_object.setdefault(entry["md5"], []).append(path / entry["relpath"])
    for md5, paths in by_object.items():
        if actual := arrived_altered(md5):
            for path in paths:
                if path.is_file() and md5_file(path) == actual:  # a copy made from it (not a change of one's own)
                    path.unlink()
                bad.append((os.path.relpath(path, root), md5, actual))
    return bad


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
    parser.add_argument("action", choices=("push", "pull", "share", "gather"))
    parser.add_argument("--dose", action="append", default=[], help="share: a dose label of design.doses "
                        "(repeatable)")
    parser.add_argument("--remote", help="push, pull, share: a DVC remote's name (default: core.remote, e.g. set in "
                        ".dvc/config.local)")
    args = parser.parse_args(argv)
    root = Path.cwd()
    if args.action == "share":
        share(root, args.dose, args.remote)
    elif args.dose:
        raise ParamsError(f"--dose: only for share, not {args.action}")
    elif args.action == "push":
        push(root, args.remote)
    elif args.action == "pull":
        pull(root, args.remote)
    elif args.remote:
        raise ParamsError("--remote: gather uses the default remote (`dvc repro --pull` has no remote option); "
                          "make it the default with `dvc remote default --local <name>`")
    else:
        gather(root)


if __name__ == "__main__":
    run(main)
