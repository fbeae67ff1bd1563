"""A shared SSH remote (Debian's sshd on 127.0.0.1) that dies mid-push, and a remote object that
rots: the push fails clearly and the next one completes with whole objects only; a corrupted
object never reaches a computation unnoticed (`make pull` re-hashes what DVC hands over, the
study's loaders check their own checksums, a remote with `verify` makes DVC refuse it)."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import (clone_run, error_lines, file_digests, project_env, push_again_then_pull_fresh, sh,
                      sharing, whole_objects)
from fly64study.contract import ContractError, load_dataset
from fly64study.files import sha256_file

pytestmark = pytest.mark.pipeline

NPZ = "data/phase_c/dose_1e3/patched_train.npz"


def lock_md5(root: Path, path: str) -> str:
    for stage in yaml.safe_load((root / "dvc.lock").read_text())["stages"].values():
        for out in stage.get("outs", []):
            if out["path"] == path:
                return out["md5"]
    raise KeyError(path)


def test_a_remote_that_dies_mid_push_fails_clearly_and_the_next_push_completes(tiny_pipeline, sshd, tmp_path):
    root = clone_run(tiny_pipeline, tmp_path / "study")
    store = tmp_path / "store"
    store.mkdir()
    sshd.add_remote(root, "ssh", store)
    proc = subprocess.Popen([sys.executable, "-m", "fly64study.sharing", "push", "--remote", "ssh"], cwd=root,
                            env=project_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not any(p.is_file() for p in store.rglob("*")):
        time.sleep(0.002)
    sshd.stop()  # the first object is on its way: the host goes down, sessions and all
    out, err = proc.communicate(timeout=300)
    failed = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert proc.returncode != 0, "the push ended before sshd stopped: nothing was injected"
    lines = error_lines(failed)
    assert len(lines) == 1 and lines[0].startswith("error: `dvc push`"), err
    assert "connection to the remote" in lines[0] and "run the same command again" in lines[0], lines[0]
    sent = whole_objects(store)  # no half-written object under a final name

    sshd.start()  # the host is back: the push completes, a colleague's fresh clone pulls from it
    clone = push_again_then_pull_fresh(root, "ssh", store, sent, lambda c: sshd.add_remote(c, "ssh", store),
                                       tmp_path / "clone")
    assert file_digests(clone / "data") == file_digests(tiny_pipeline.root / "data")  # the undisturbed run's SHA256


def test_a_corrupted_remote_object_never_reaches_a_computation(tiny_pipeline, sshd, tmp_path):
    root = clone_run(tiny_pipeline, tmp_path / "study")
    store = tmp_path / "store"
    store.mkdir()
    sshd.add_remote(root, "ssh", store)
    sh(root, "dvc", "push", "-q", "-r", "ssh")
    md5 = lock_md5(root, NPZ)
    obj = store / "files" / "md5" / md5[:2] / md5[2:]
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit, deep in an array
    obj.write_bytes(bytes(data))
    bad_md5 = hashlib.md5(data).hexdigest()

    def fresh(name: str) -> Path:
        clone = tmp_path / name
        sh(tmp_path, "git", "clone", "-q", str(root), str(clone))
        sshd.add_remote(clone, "ssh", store)
        return clone

    # DVC alone takes an SSH remote's bytes on trust, and records them under the expected hash:
    # `dvc status` sees nothing wrong; the first stage that reads the file is refused by the loader
    plain = fresh("plain")
    sh(plain, "dvc", "pull", "-q", "-r", "ssh", "generate@1e3")
    assert hashlib.md5((plain / NPZ).read_bytes()).hexdigest() == bad_md5
    assert "up to date" in sh(plain, "dvc", "status", "generate@1e3").stdout
    with pytest.raises(ContractError, match=r"patched_train.npz: corrupted: member '\w+\.npy': CRC-32 [0-9a-f]{8} "
                                            r"differs from the recorded [0-9a-f]{8}"):
        load_dataset(plain / NPZ)

    # `make pull` re-hashes every pulled output: it names the file, the recorded and the actual
    # MD5 and the remote's object, and removes the bad copies (workspace and cache)
    study = fresh("study_pull")
    proc = sharing(study, "pull", "--remote", "ssh")
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert f"error: {NPZ}: the object pulled for it has MD5 {bad_md5}, not the recorded {md5}: the remote's object " \
           f"{obj} is corrupted; removed here" == lines[0], proc.stderr
    assert not (study / NPZ).exists()
    assert not any(line.startswith("error: data/") and NPZ not in line and "baseline/train.npz" not in line
                   for line in lines)  # (the baseline view of that split is the same file)
    assert file_digests(study / "data").items() <= file_digests(tiny_pipeline.root / "data").items()  # the rest is whole
    sh(study, "dvc", "repro", "generate@1e3")  # DVC now sees it missing and remakes it from its inputs
    assert sha256_file(study / NPZ) == sha256_file(tiny_pipeline.root / NPZ)

    # a remote with `verify` (as docs/scaling.md sets the team remote): DVC itself refuses it
    verified = fresh("verified")
    sh(verified, "dvc", "remote", "modify", "--local", "ssh", "verify", "true")
    proc = sharing(verified, "pull", "--remote", "ssh")
    assert proc.returncode != 0 and NPZ in proc.stderr, proc.stderr
    assert not (verified / NPZ).exists()


def test_a_corrupted_object_in_a_local_directory_remote_is_caught_by_make_pull(tiny_pipeline, tmp_path):
    """The study's preset kind of remote: DVC re-hashes none of its objects that kept their
    read-only mode (as bit rot leaves them) and hands the bytes over; `make pull` refuses them."""
    root = clone_run(tiny_pipeline, tmp_path / "study")
    store = tmp_path / "store"
    sh(root, "dvc", "remote", "add", "--local", "dir", str(store))
    sh(root, "dvc", "push", "-q", "-r", "dir")
    md5 = lock_md5(root, NPZ)
    obj = store / "files" / "md5" / md5[:2] / md5[2:]
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    obj.write_bytes(bytes(data))
    obj.chmod(0o444)
    clone = tmp_path / "clone"
    sh(tmp_path, "git", "clone", "-q", str(root), str(clone))
    sh(clone, "dvc", "remote", "add", "--local", "dir", str(store))
    proc = sharing(clone, "pull", "--remote", "dir")
    assert proc.returncode != 0
    lines = error_lines(proc)
    assert lines[0] == (f"error: {NPZ}: the object pulled for it has MD5 {hashlib.md5(data).hexdigest()}, not the "
                        f"recorded {md5}: the remote's object {obj} is corrupted; removed here"), proc.stderr
    assert not (clone / NPZ).exists()
    assert file_digests(clone / "data").items() <= file_digests(tiny_pipeline.root / "data").items()
