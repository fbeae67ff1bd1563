"""Evidence workflow: RED/GREEN targets, train-evidence + archive with SHA256 proof, and DVC remotes
(a local directory, and SSH against a real sshd on 127.0.0.1)."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import copy_project, project_env, sh
from fly64study.files import sha256_file

pytestmark = pytest.mark.pipeline

SAMPLE_TESTS = '''
import pytest

def test_passes():
    assert 1 + 1 == 2

def test_fails():
    assert 1 + 1 == 3

@pytest.mark.skip(reason="not yet")
def test_skipped():
    assert False

@pytest.fixture
def broken():
    raise RuntimeError("fixture setup fails before the test body runs")

def test_setup_error(broken):
    assert 1 + 1 == 3
'''


@pytest.fixture
def sample(tmp_path) -> Path:
    (tmp_path / "test_sample.py").write_text(SAMPLE_TESTS)
    (tmp_path / "test_broken.py").write_text("import a_module_that_does_not_exist\n\ndef test_x():\n    assert False\n")
    return tmp_path


def evidence(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["python", "-m", "fly64study.evidence", *args], cwd=cwd, env=project_env(Path(__file__).parents[1]),
                          capture_output=True, text=True)


def test_red_must_fail_and_green_must_pass(sample):
    hub = sample / "hub"
    red_ok = evidence(sample, "pytest", "--hub", str(hub), "--expect", "fail", "--selector", "test_sample.py::test_fails")
    assert red_ok.returncode == 0 and "RED as expected" in red_ok.stdout
    log = hub / "red" / "pytest_test_sample_test_fails.log"
    assert "1 failed" in log.read_text() and "exit code: 1" in log.read_text()

    red_wrong = evidence(sample, "pytest", "--hub", str(hub), "--expect", "fail", "--selector", "test_sample.py::test_passes")
    assert red_wrong.returncode == 1
    assert "RED expected: test_sample.py::test_passes must fail, but it passed" in red_wrong.stderr

    green_wrong = evidence(sample, "pytest", "--hub", str(hub), "--expect", "pass", "--selector", "test_sample.py::test_fails")
    assert green_wrong.returncode == 1
    assert "GREEN expected: test_sample.py::test_fails must pass, but 1 failed" in green_wrong.stderr

    green_ok = evidence(sample, "pytest", "--hub", str(hub), "--expect", "pass", "--selector", "test_sample.py::test_passes")
    assert green_ok.returncode == 0 and (hub / "green" / "pytest_test_sample_test_passes.log").is_file()
    assert "outcome: 1 passed, 0 failed, 0 errors, 0 skipped" in (hub / "green" / "pytest_test_sample_test_passes.log").read_text()

    # pytest exits 0 when every selected test is skipped: that proves nothing
    skipped = evidence(sample, "pytest", "--hub", str(hub), "--expect", "pass", "--selector", "test_sample.py::test_skipped")
    assert skipped.returncode == 1 and "must pass, but every selected test was skipped" in skipped.stderr

    # a selector that collects nothing is not a RED: no test ran and failed
    nothing = evidence(sample, "pytest", "--hub", str(hub), "--expect", "fail", "--selector", "test_sample.py -k nomatch")
    assert nothing.returncode == 1 and "must fail, but no test ran" in nothing.stderr

    # pytest exits 1 or 2 for errors before the test body (import, fixture): not the failure a RED is for
    for selector in ("test_broken.py", "test_sample.py::test_setup_error"):
        errored = evidence(sample, "pytest", "--hub", str(hub), "--expect", "fail", "--selector", selector)
        assert errored.returncode == 1 and "1 error(s) in collection, setup or teardown" in errored.stderr, selector

    collected = evidence(sample, "pytest", "--hub", str(hub), "--expect", "collect", "--selector", "test_sample.py")
    assert collected.returncode == 0
    assert "test_sample.py::test_passes" in (hub / "collect" / "pytest_test_sample.log").read_text()
    assert sorted(p.name for p in hub.iterdir()) == ["analysis", "cli", "collect", "data", "green", "prep", "red"]


# ---------------------------------------------------------------------------------- archive
def make(root: Path, *targets: str, check: bool = True) -> subprocess.CompletedProcess:
    # -o: the copy has no .venv; the test's interpreter (on PATH) stands in for it
    return sh(root, "make", "--no-print-directory", "-o", ".venv/.installed", "PY=python", *targets, check=check)


@pytest.fixture(scope="module")
def archived(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny-profile project after `make train-evidence archive`: (project, hub)."""
    root = copy_project(tmp_path_factory.mktemp("evidence") / "study")
    hub = "plans/active/TEST-INITIATIVE/reports/2026-01-01T000000Z/phase_e_evidence"
    make(root, "train-evidence", "archive", f"HUB={hub}")
    return root, root / hub


def test_train_evidence_and_archive_leave_a_complete_hub(archived):
    root, hub = archived
    assert sorted(p.name for p in hub.iterdir()) == ["analysis", "cli", "collect", "data", "green", "prep", "red"]
    prep = (hub / "prep" / "prep.log").read_text()  # a fresh copy: DVC produced phase C and D
    assert "$ dvc repro overlap@1e3-dense" in prep and "Running stage 'generate@1e3'" in prep
    for view, g in (("dense", 2), ("baseline", 1)):
        log = (hub / "cli" / f"train_1e3_{view}_gs{g}.log").read_text()
        assert f"{view} (dose=1e3) → SHA256: " in log
        assert (hub / "cli" / f"train_1e3_{view}_gs{g}.exit").read_text().strip() == "0"
        bundle = hub / "data" / f"wts_{view}_gs{g}.h5.zip"
        assert bundle.is_file() and (hub / "data" / f"wts_{view}_gs{g}.h5.zip.dvc").is_file()
        assert sha256_file(bundle) in log
    manifest = json.loads((hub / "data" / "training_manifest.json").read_text())
    assert {j["view"] for j in manifest["jobs"]} == {"dense", "baseline"}
    assert json.loads((hub / "data" / "skip_summary.json").read_text())["count"] == 0
    pretty = (hub / "analysis" / "training_manifest_pretty.json").read_text()
    assert json.loads(pretty) == manifest and "\n    " in pretty
    summary = (hub / "analysis" / "summary.md").read_text()
    assert "wts_dense_gs2.h5.zip" in summary and "wts_baseline_gs1.h5.zip" in summary and "| 0 |" in summary
    check = subprocess.run(["sha256sum", "-c", "analysis/bundle_checksums.txt"], cwd=hub, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == 2
    # bundles are DVC-tracked: git ignores their bytes, keeps their .dvc files
    ignored = sh(root, "git", "check-ignore", str(hub / "data" / "wts_dense_gs2.h5.zip"), check=False)
    assert ignored.returncode == 0
    assert sh(root, "git", "check-ignore", str(hub / "data" / "wts_dense_gs2.h5.zip.dvc"), check=False).returncode == 1
    assert "bundles match" in make(root, "archive-check", f"HUB={hub.relative_to(root)}").stdout


def test_archive_check_regenerates_bundles_a_clone_lacks_and_refuses_partial_lists(archived, tmp_path):
    """A clone with neither the bundles nor a DVC cache or remote: the check retrains them from the
    hub's archived params (pinned numerics: the same bytes) and says so; a checksum list that
    misses a job of the manifest, or is empty, fails naming it."""
    root, hub = archived
    clone = tmp_path / "clone"
    def leave_out(folder, names):  # the outputs, the DVC cache and remote, and the hub's bundle bytes
        d = Path(folder)
        return [n for n in names if (d == root and n in ("data", ".dvc_remote"))
                or (d == root / ".dvc" and n == "cache") or n.endswith(".h5.zip")]

    shutil.copytree(root, clone, symlinks=True, ignore=leave_out)
    chub = clone / hub.relative_to(root)
    assert not list((chub / "data").glob("*.zip")) and (chub / "analysis" / "params.yaml").is_file()
    proc = make(clone, "archive-check", f"HUB={chub.relative_to(clone)}")
    assert "2 bundles match" in proc.stdout and "(2 regenerated)" in proc.stdout
    assert "wts_dense_gs2.h5.zip: SHA256" in proc.stdout and "matches (regenerated)" in proc.stdout
    sums = chub / "analysis" / "bundle_checksums.txt"
    lines = sums.read_text().splitlines()
    left_out = lines[1].split()[1]
    sums.write_text(lines[0] + "\n")
    partial = make(clone, "archive-check", f"HUB={chub.relative_to(clone)}", check=False)
    assert partial.returncode != 0 and f"no checksum for ['{left_out}']" in partial.stderr
    sums.write_text("")
    empty = make(clone, "archive-check", f"HUB={chub.relative_to(clone)}", check=False)
    assert empty.returncode != 0 and "no checksum for" in empty.stderr and "wts_dense_gs2.h5.zip" in empty.stderr
    sums.write_text("not-a-checksum-line\n")
    garbled = make(clone, "archive-check", f"HUB={chub.relative_to(clone)}", check=False)
    assert garbled.returncode != 0 and "is not '<sha256>  <path>'" in garbled.stderr
    (chub / "data" / "training_manifest.json").unlink()
    no_manifest = make(clone, "archive-check", f"HUB={chub.relative_to(clone)}", check=False)
    assert no_manifest.returncode != 0 and "training_manifest.json: missing" in no_manifest.stderr
    for proc in (partial, empty, garbled, no_manifest):
        assert "Traceback" not in proc.stderr


def test_a_hub_stays_verifiable_after_the_code_adds_a_params_key(archived, tmp_path):
    """The hub records the commit that made it; after a commit that adds a params key (its archived
    params now lack it, so this checkout's stages refuse them), the check regenerates the bundles
    with the recorded commit's code in a git worktree and gets the archived bytes."""
    root, hub = archived
    code = json.loads((hub / "analysis" / "code.json").read_text())
    assert code["commit"] == sh(root, "git", "rev-parse", "HEAD").stdout.strip() and not code["uncommitted_changes"]
    assert code["trees"]["src"] == sh(root, "git", "rev-parse", "HEAD:src").stdout.strip()
    clone = tmp_path / "clone"
    def leave_out(folder, names):  # no outputs, DVC cache or remote, nor the hub's bundle bytes
        d = Path(folder)
        return [n for n in names if (d == root and n in ("data", ".dvc_remote"))
                or (d == root / ".dvc" and n == "cache") or n.endswith(".h5.zip")]

    shutil.copytree(root, clone, symlinks=True, ignore=leave_out)
    sh(clone, "git", "add", "-A")
    sh(clone, "git", "commit", "-qm", "the hub")
    design = clone / "src" / "fly64study" / "design.py"
    field = "    N: int  # patch and detector size, pixels\n"
    assert field in design.read_text()
    design.write_text(design.read_text().replace(field, field + "    new_key: int  # a key added after the hub\n", 1))
    for name in ("params.yaml", "profiles/default.yaml"):
        text = (clone / name).read_text()
        (clone / name).write_text(text.replace("\n  N: ", "\n  new_key: 1\n  N: ", 1))
    sh(clone, "git", "commit", "-qam", "a new params key")
    chub = clone / hub.relative_to(root)
    stale = sh(clone, "python", "stages/design.py", "--params", str(chub / "analysis" / "params.yaml"), "--check",
               check=False)
    assert stale.returncode == 2 and "design.new_key: missing" in stale.stderr  # what regenerating used to hit
    proc = make(clone, "archive-check", f"HUB={chub.relative_to(clone)}")
    assert "2 bundles match" in proc.stdout and "(2 regenerated)" in proc.stdout
    assert f"with the code of {code['commit'][:12]} (recorded in the hub)" in proc.stdout
    assert sh(clone, "git", "worktree", "list").stdout.count("\n") == 1  # the checkout of the old code is gone
    assert sh(clone, "git", "status", "--porcelain", "--untracked-files=no").stdout == ""


def test_archive_refuses_bundles_of_code_that_has_changed_since_they_were_trained(archived):
    """The hub's code record is taken when the bundles are trained; uncommitted code counts (by its
    git tree), and code changed between training and archiving is refused, naming the fix."""
    root, hub = archived
    from fly64study.evidence import code_record
    extra = root / "src" / "fly64study" / "_not_yet_committed.py"
    before = {p: sha256_file(p) for p in (hub / "analysis").iterdir()}
    extra.write_text("# a module the training did not have\n")
    try:
        record = code_record(root)
        assert record["uncommitted_changes"] and record["trees"]["src"] != sh(root, "git", "rev-parse", "HEAD:src").stdout.strip()
        proc = make(root, "archive", f"HUB={hub.relative_to(root)}", check=False)
        assert proc.returncode != 0 and "changed since `make train-evidence`" in proc.stderr and "Traceback" not in proc.stderr
    finally:
        extra.unlink()
    assert {p: sha256_file(p) for p in (hub / "analysis").iterdir()} == before  # the refused archive wrote nothing


def test_train_evidence_brings_stale_phase_d_inputs_up_to_date(archived, tmp_path):
    """Phase D files that no longer match params.yaml are rerun through DVC, never trained on."""
    root = tmp_path / "study"
    shutil.copytree(archived[0], root, symlinks=True)
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("dense: 0.7", "dense: 0.6", 1))
    hub = "plans/active/TEST-INITIATIVE/reports/2026-01-02T000000Z/phase_e_evidence"
    make(root, "train-evidence", "EVIDENCE_VIEWS=dense", f"HUB={hub}")
    prep = (root / hub / "prep" / "prep.log").read_text()
    assert "$ dvc repro overlap@1e3-dense" in prep and "Running stage 'overlap@1e3-dense'" in prep
    assert json.loads((root / "data/phase_d/dose_1e3/dense/metrics.json").read_text())["overlap_fraction"] == 0.6
    again = "plans/active/TEST-INITIATIVE/reports/2026-01-03T000000Z/phase_e_evidence"
    make(root, "train-evidence", "EVIDENCE_VIEWS=dense", f"HUB={again}")
    assert "Running stage" not in (root / again / "prep" / "prep.log").read_text()  # up to date: a no-op


@pytest.mark.parametrize("target", ["train-evidence", "archive", "archive-check"])
def test_a_hub_outside_the_repository_is_refused_before_anything_is_written(archived, tmp_path, target):
    root, _ = archived
    outside = tmp_path / "elsewhere" / "2031-01-01T000000Z" / "phase_e_evidence"
    proc = make(root, target, f"HUB={outside}", check=False)
    assert proc.returncode != 0 and f"HUB={outside}: outside the repository" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "elsewhere").exists() and not (root / "data/evidence/2031-01-01T000000Z").exists()


def test_a_corrupted_archived_bundle_fails_the_check_naming_it(archived, tmp_path):
    root, hub = archived
    bundle = hub / "data" / "wts_dense_gs2.h5.zip"
    keep = tmp_path / "keep.zip"
    shutil.copyfile(bundle, keep)
    try:
        data = bytearray(bundle.read_bytes())
        data[len(data) // 2] ^= 0xFF
        bundle.write_bytes(bytes(data))
        proc = make(root, "archive-check", f"HUB={hub.relative_to(root)}", check=False)
        assert proc.returncode != 0 and "wts_dense_gs2.h5.zip: SHA256" in proc.stderr
        assert subprocess.run(["sha256sum", "-c", "analysis/bundle_checksums.txt"], cwd=hub,
                              capture_output=True).returncode != 0
    finally:
        shutil.copyfile(keep, bundle)


def test_archive_refuses_a_bundle_that_differs_from_its_manifest(archived, tmp_path):
    root, hub = archived
    artifacts = root / (hub / "cli" / "artifact_root.txt").read_text().strip()
    source = artifacts / "dose_1e3" / "baseline" / "gs1" / "wts.h5.zip"
    keep = tmp_path / "keep.zip"
    shutil.copyfile(source, keep)
    try:
        source.write_bytes(source.read_bytes() + b"\0")
        proc = make(root, "archive", f"HUB={hub.relative_to(root)}", check=False)
        assert proc.returncode != 0
        assert f"{source.relative_to(root)}: SHA256" in proc.stderr and "differs from its training manifest" in proc.stderr
    finally:
        shutil.copyfile(keep, source)


# ---------------------------------------------------------------------------------- remotes
def _bundles(hub: Path) -> dict[str, str]:
    return {line.split()[1]: line.split()[0] for line in (hub / "analysis" / "bundle_checksums.txt").read_text().splitlines()}


def _round_trip(root: Path, hub: Path, remote: str) -> None:
    """Push the hub's bundles, delete them and the cache, pull, and check every SHA256."""
    expected = _bundles(hub)
    targets = [str((hub / rel).relative_to(root)) + ".dvc" for rel in expected]
    sh(root, "dvc", "push", "-r", remote, *targets)
    shutil.rmtree(root / ".dvc" / "cache")
    for rel in expected:
        (hub / rel).unlink()
    sh(root, "dvc", "pull", "-r", remote, *targets)
    assert {rel: sha256_file(hub / rel) for rel in expected} == expected


def test_local_directory_remote_is_the_default(archived):
    root, hub = archived
    assert sh(root, "dvc", "remote", "default").stdout.strip() == "local"
    _round_trip(root, hub, "local")
    assert (root / ".dvc_remote").is_dir()


def test_ssh_remote_push_pull_restores_identical_bundles(archived, sshd, tmp_path):
    root, hub = archived
    store = tmp_path / "ssh-store"
    store.mkdir()
    sshd.add_remote(root, "ssh", store)
    try:
        _round_trip(root, hub, "ssh")
    except AssertionError:
        print(sshd.log.read_text())
        raise
    assert any(store.rglob("*")), "nothing reached the SSH remote"
    assert "ssh" not in (root / ".dvc" / "config").read_text()  # the key and URL stay in config.local


def test_a_corrupted_remote_bundle_is_refused_by_archive_check(archived, sshd, tmp_path):
    """DVC hands over an SSH remote's bytes without re-hashing them (no `verify`); archive-check's
    own SHA256 refuses them, naming the file and both digests."""
    root, hub = archived
    rel = "data/wts_dense_gs2.h5.zip"
    target = str((hub / rel).relative_to(root))
    expected = _bundles(hub)[rel]
    store = tmp_path / "ssh-store"
    store.mkdir()
    md5 = (hub / (rel + ".dvc")).read_text().split("md5: ")[1].split()[0]
    cached = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    try:
        sshd.add_remote(root, "ssh", store)
        sh(root, "dvc", "push", "-q", "-r", "ssh", target + ".dvc")
        obj = store / "files" / "md5" / md5[:2] / md5[2:]
        data = bytearray(obj.read_bytes())
        data[len(data) // 2] ^= 0x01
        obj.write_bytes(bytes(data))
        actual = hashlib.sha256(bytes(data)).hexdigest()
        cached.unlink()
        (hub / rel).unlink()  # a clone without the bundle: archive-check pulls it from the default remote
        sh(root, "dvc", "remote", "default", "--local", "ssh")
        proc = make(root, "archive-check", f"HUB={hub.relative_to(root)}", check=False)
    finally:  # the module's shared hub as it was: its bundle from the local remote, no SSH remote
        sh(root, "dvc", "remote", "remove", "--local", "ssh")
        (hub / rel).unlink(missing_ok=True)
        cached.unlink(missing_ok=True)
        sh(root, "dvc", "pull", "-q", "-r", "local", target + ".dvc")
    assert proc.returncode != 0
    assert f"{hub.relative_to(root) / rel}: SHA256 {actual} differs from bundle_checksums.txt ({expected})" in proc.stderr
    assert "regenerat" not in proc.stdout  # refused as pulled, not silently remade
    assert sha256_file(hub / rel) == expected


@pytest.mark.parametrize("mode", [0o644, 0o444])
def test_an_altered_dvc_cache_object_is_refused_before_it_is_used(archived, tmp_path, mode):
    """A cache object altered in place: DVC re-hashes a writable one and drops it; one that kept
    the read-only mode DVC gives every object (bit rot keeps it) DVC trusts, and hands over on
    checkout: then the study's own checks refuse it, naming both SHA256."""
    root, hub = archived
    rel = "data/wts_dense_gs2.h5.zip"
    target = str((hub / rel).relative_to(root))
    expected = _bundles(hub)[rel]
    sh(root, "dvc", "push", "-r", "local", target + ".dvc")
    md5 = (hub / (rel + ".dvc")).read_text().split("md5: ")[1].split()[0]
    obj = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    obj.chmod(0o644)
    data = bytearray(obj.read_bytes())
    data[len(data) // 3] ^= 0x55
    obj.write_bytes(bytes(data))
    obj.chmod(mode)
    actual = hashlib.sha256(bytes(data)).hexdigest()
    try:
        status = sh(root, "dvc", "status", target + ".dvc").stdout
        (hub / rel).unlink()
        checkout = sh(root, "dvc", "checkout", target + ".dvc", check=False)
        if mode == 0o644:
            assert "not in cache" in status and not obj.exists()  # re-hashed and dropped ...
            assert checkout.returncode != 0 and not (hub / rel).exists()  # ... never checked out
        else:
            assert "up to date" in status  # DVC sees nothing wrong ...
            assert checkout.returncode == 0 and sha256_file(hub / rel) == actual  # ... and hands it over
            from fly64study.bundle import BundleError, read_bundle
            with pytest.raises(BundleError, match=f"SHA256 {actual} differs from the expected {expected}"):
                read_bundle(hub / rel, expected)  # the loader, against the digest the archive recorded
            proc = make(root, "archive-check", f"HUB={hub.relative_to(root)}", check=False)
            assert proc.returncode != 0
            assert f"{target}: SHA256 {actual} differs from bundle_checksums.txt ({expected})" in proc.stderr
    finally:  # the module's shared hub whole again, from the remote's copy
        (hub / rel).unlink(missing_ok=True)
        obj.unlink(missing_ok=True)
        sh(root, "dvc", "pull", "-r", "local", target + ".dvc")
    assert sha256_file(hub / rel) == expected


def test_a_killed_archive_leaves_whole_files_and_a_rerun_completes(archived):
    import os
    import signal

    root, hub = archived
    expected = _bundles(hub)
    for name in expected:
        (hub / name).unlink()  # archive copies them again
    for delay in (0.05, 0.3, 0.8, 1.5):
        proc = subprocess.Popen(["python", "-m", "fly64study.evidence", "archive", "--hub", str(hub.relative_to(root))],
                                cwd=root, env=project_env(root), start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        for name, digest in expected.items():
            if (hub / name).exists():
                assert sha256_file(hub / name) == digest, f"{name} is half-written"
        for name in ("analysis/bundle_checksums.txt", "analysis/summary.md", "data/training_manifest.json"):
            if (hub / name).exists():
                text = (hub / name).read_text()
                assert text.endswith("\n") and (not name.endswith(".json") or json.loads(text))
    assert "archived 2 bundles" in make(root, "archive", f"HUB={hub.relative_to(root)}").stdout
    assert "bundles match" in make(root, "archive-check", f"HUB={hub.relative_to(root)}").stdout
