"""The training command line: evidence lines, manifests, determinism, skip and strict modes."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import socket
import subprocess
import tempfile
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, finish_logged, host_env, profile_params, start_logged
from fly64study.bundle import load_inference_model
from fly64study.profiles import compose
from fly64study.contract import load_dataset, save_dataset
from fly64study.files import sha256_file
from fly64study.overlap import build_view
from fly64study.simulate import generate_dose

LINE = re.compile(r"^(?P<view>\S+) \(dose=(?P<dose>[^)]+)\)(?:, seed (?P<seed>\d+))? → (?P<key>Bundle|SHA256|Size): "
                  r"(?P<value>.+)$")


@pytest.fixture(scope="module")
def phase_d(tiny, tmp_path_factory) -> Path:
    """Phase D views of dose 1e3 on the tiny profile, written as the pipeline would."""
    root = tmp_path_factory.mktemp("data") / "phase_d"
    design = tiny.design
    for part, split in zip(("train", "test"), generate_dose(design, tiny.generate, "1e3")):
        for view, fraction in design.views.items():
            ds, _ = build_view(split, view=view, fraction=fraction, neighbor_count=design.neighbor_count,
                               subsampling_seed=design.seeds.subsampling, grouping_seed=design.seeds.grouping,
                               min_positions=tiny.overlap.min_positions)
            save_dataset(root / "dose_1e3" / view / f"{part}.npz", ds)
    return root


def train_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(host_env(), PYTHONPATH=str(REPO / "src"), **(env or {}))
    cmd = [sys.executable, str(REPO / "stages" / "train.py"), "--params", str(profile_params("tiny")), *args]
    # a scratch working directory: the run records (data/timing/) must not land in the checkout
    with tempfile.TemporaryDirectory(prefix="train-cli-") as scratch:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=scratch)


def test_cli_prints_bundle_sha_and_size_per_job_as_in_the_manifest(phase_d, tmp_path):
    root = tmp_path / "artifacts"
    proc = train_cli("--phase-d", str(phase_d), "--artifact-root", str(root), "--dose", "1e3",
                     "--accelerator", "cpu", "--deterministic", "--num-workers", "0")
    assert proc.returncode == 0, proc.stderr
    lines = {}
    for line in proc.stdout.splitlines():
        m = LINE.match(line)
        if m:
            lines[(m["view"], m["dose"], m["seed"], m["key"])] = m["value"]
    manifest = json.loads((root / "training_manifest.json").read_text())
    assert [(j["view"], j["gridsize"], j["seed"]) for j in manifest["jobs"]] == [
        ("baseline", 1, 7), ("dense", 2, 7)]
    assert len(lines) == 3 * len(manifest["jobs"])
    for job in manifest["jobs"]:
        key = (job["view"], job["dose"], None)  # one seed: the study's line, no seed named
        bundle = root / job["bundle_path"]
        assert lines[(*key, "Bundle")] == job["bundle_path"] == f"dose_1e3/{job['view']}/gs{job['gridsize']}/wts.h5.zip"
        assert lines[(*key, "SHA256")] == job["sha256"] == sha256_file(bundle)
        assert re.fullmatch(r"[0-9a-f]{64}", job["sha256"])
        assert lines[(*key, "Size")] == f"{job['size']} bytes" == f"{bundle.stat().st_size} bytes"
        assert job["status"] == "completed" and job["epochs"] >= 1 and job["final_loss"] == job["final_loss"]
        assert load_inference_model(bundle, expected_sha256=job["sha256"]).cfg.gridsize == job["gridsize"]
        assert (root / f"eval_1e3_{job['view']}.json").exists()
        assert (root / f"losses_1e3_{job['view']}.csv").read_text().startswith(
            "epoch,train_loss,val_loss,learning_rate\n1,")
        assert (root / f"losses_1e3_{job['view']}.png").stat().st_size > 5_000
        assert job["network"] == "bp_unet" and job["settings"]["width"] == 8  # the default network
        # validation groups as tight as training's (a compact held-out block), recorded beside them
        groups = job["groups"]
        if job["gridsize"] == 2:
            ratio = groups["validation"]["mean_member_distance_px"] / groups["train"]["mean_member_distance_px"]
            assert abs(ratio - 1) < 0.2, groups
        # the likelihood gap on the training split, in the manifest and the metrics file
        gap = job["likelihood_gap"]
        assert gap["status"] == "completed" and gap["split_positions"] > 0
        for kind in ("full_counts", "thinned"):
            g = gap[kind]
            assert g["nll_truth"] < g["nll_flat"] and g["closed"] == pytest.approx(
                (g["nll_flat"] - g["nll_network"]) / (g["nll_flat"] - g["nll_truth"]))
        metrics = json.loads((root / f"eval_1e3_{job['view']}.json").read_text())["seed_7"]
        assert metrics["likelihood_gap_closed"] == gap["full_counts"]["closed"]
        assert metrics["likelihood_gap_closed_thinned"] == gap["thinned"]["closed"]
    assert json.loads((root / "skip_summary.json").read_text()) == {"count": 0, "skipped": []}
    assert manifest["options"]["deterministic"] is True and manifest["network"] == "bp_unet"


def test_the_published_network_trains_through_the_same_cli_under_its_own_name(phase_d, tmp_path):
    root = tmp_path / "ptychopinn"
    proc = train_cli("--network", "ptychopinn", "--phase-d", str(phase_d), "--artifact-root", str(root), "--dose",
                     "1e3", "--view", "dense", "--deterministic")
    assert proc.returncode == 0, proc.stderr
    (job,) = json.loads((root / "training_manifest.json").read_text())["jobs"]
    assert job["network"] == "ptychopinn" and job["settings"]["n_filters_scale"] == 0.25 and "width" not in job["settings"]
    assert f"dense (dose=1e3, ptychopinn) → SHA256: {job['sha256']}" in proc.stdout
    net = load_inference_model(root / job["bundle_path"], job["sha256"])
    assert type(net).__name__ == "PtychoPINNNetwork" and net.cfg.network == "ptychopinn"
    assert job["likelihood_gap"]["status"] == "completed"


@pytest.mark.parametrize("network", ["bp_unet", "ptychopinn"])
def test_the_likelihood_gap_reads_the_training_split_only(phase_d, tmp_path, network):
    """The same job on a test split whose truth (objectGuess, Y) is noise: the bundle and the likelihood
    gap are the same bytes and numbers, for either network; only the test-split evaluation moves."""
    poisoned = tmp_path / "phase_d"
    shutil.copytree(phase_d, poisoned)
    test = load_dataset(poisoned / "dose_1e3" / "dense" / "test.npz")
    rng = np.random.default_rng(0)
    save_dataset(poisoned / "dose_1e3" / "dense" / "test.npz", dataclasses.replace(
        test, objectGuess=np.exp(1j * rng.uniform(-3, 3, test.objectGuess.shape)).astype(np.complex64),
        Y=np.exp(1j * rng.uniform(-3, 3, test.Y.shape)).astype(np.complex64)))
    jobs = []
    for name, data in (("true", phase_d), ("poisoned", poisoned)):
        proc = train_cli("--network", network, "--phase-d", str(data), "--artifact-root", str(tmp_path / name),
                         "--dose", "1e3", "--view", "dense", "--deterministic")
        assert proc.returncode == 0, proc.stderr
        (job,) = json.loads((tmp_path / name / "training_manifest.json").read_text())["jobs"]
        jobs.append(job)
    assert jobs[0]["sha256"] == jobs[1]["sha256"] and jobs[0]["likelihood_gap"] == jobs[1]["likelihood_gap"]
    assert jobs[0]["evaluation"]["phase_rmse_rad"] != jobs[1]["evaluation"]["phase_rmse_rad"]


def test_each_training_seed_is_its_own_bundle_manifest_line_and_metrics(phase_d, tmp_path):
    """Seeds [7, 8]: the first keeps the study's path and line, the second gets its own; pausing
    the second seed keeps the first one's finished checkpoint, so the rerun does not train it again."""
    params = tmp_path / "params.yaml"
    params.write_text(compose("tiny", REPO / "profiles").replace("seeds: [7] ", "seeds: [7, 8] ")
                      .replace("patience: 2 ", "patience: 4 "))  # two epochs, no early stop
    root = tmp_path / "artifacts"
    common = ["--params", str(params), "--phase-d", str(phase_d), "--artifact-root", str(root),
              "--dose", "1e3", "--view", "baseline", "--deterministic"]
    paused = train_cli(*common, "--stop-after-epoch", "1")
    assert paused.returncode == 0, paused.stderr
    assert "baseline (dose=1e3): paused after epoch 1 of 2" in paused.stdout  # the first seed
    first = train_cli(*common, "--stop-after-epoch", "1")  # seed 7 finishes, seed 8 pauses
    assert "baseline (dose=1e3), seed 8: paused after epoch 1 of 2" in first.stdout
    assert (root / ".checkpoints" / "1e3-baseline-gs1.h5").is_file()  # finished, kept until seed 8 is done
    proc = train_cli(*common)
    assert proc.returncode == 0, proc.stderr
    assert "baseline (dose=1e3): resuming after epoch 2" in proc.stderr
    assert "baseline (dose=1e3), seed 8: resuming after epoch 1" in proc.stderr
    assert not list((root / ".checkpoints").iterdir())
    jobs = json.loads((root / "training_manifest.json").read_text())["jobs"]
    assert [(j["view"], j["seed"]) for j in jobs] == [("baseline", 7), ("baseline", 8)]
    assert [j["bundle_path"] for j in jobs] == ["dose_1e3/baseline/gs1/wts.h5.zip",
                                                "dose_1e3/baseline/gs1/seed_8/wts.h5.zip"]
    assert jobs[0]["sha256"] != jobs[1]["sha256"]  # another initialisation, validation split and batch order
    for job in jobs:
        assert sha256_file(root / job["bundle_path"]) == job["sha256"]
    assert f"baseline (dose=1e3) → SHA256: {jobs[0]['sha256']}" in proc.stdout
    assert f"baseline (dose=1e3), seed 8 → SHA256: {jobs[1]['sha256']}" in proc.stdout
    evaluation = json.loads((root / "eval_1e3_baseline.json").read_text())
    assert set(evaluation) == {"seed_7", "seed_8"} and evaluation["seed_7"] != evaluation["seed_8"]
    assert evaluation["seed_8"]["phase_rmse_rad"] == jobs[1]["evaluation"]["phase_rmse_rad"]
    losses = (root / "losses_1e3_baseline.csv").read_text().splitlines()
    assert losses[0] == ("epoch,train_loss,val_loss,learning_rate,"
                         "train_loss_seed8,val_loss_seed8,learning_rate_seed8")
    assert [line.split(",")[0] for line in losses[1:]] == ["1", "2"] and "" not in losses[2].split(",")


def test_missing_view_is_an_error_unless_allowed(phase_d, tmp_path):
    partial = tmp_path / "phase_d"
    shutil.copytree(phase_d, partial)
    shutil.rmtree(partial / "dose_1e3" / "dense")
    strict = train_cli("--phase-d", str(partial), "--artifact-root", str(tmp_path / "strict"), "--dose", "1e3",
                       "--view", "dense")
    assert strict.returncode == 2
    assert "dense (dose=1e3): phase D view missing" in strict.stderr and "--allow-missing" in strict.stderr
    assert "Traceback" not in strict.stderr
    root = tmp_path / "lenient"
    lenient = train_cli("--phase-d", str(partial), "--artifact-root", str(root), "--dose", "1e3",
                        "--view", "dense", "--view", "baseline", "--allow-missing")
    assert lenient.returncode == 0, lenient.stderr
    skipped = json.loads((root / "skip_summary.json").read_text())
    assert skipped["count"] == 1
    assert skipped["skipped"][0]["view"] == "dense" and "dense/train.npz" in skipped["skipped"][0]["reason"]
    jobs = json.loads((root / "training_manifest.json").read_text())["jobs"]
    assert [j["view"] for j in jobs] == ["baseline"]


def test_dry_run_lists_jobs_and_writes_nothing(phase_d, tmp_path):
    proc = train_cli("--phase-d", str(phase_d), "--artifact-root", str(tmp_path / "dry"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 4  # 2 doses x 2 jobs
    assert "dense (dose=1e5) gs2" in proc.stdout
    assert not (tmp_path / "dry").exists()


def test_unknown_filter_names_the_choices(phase_d, tmp_path):
    proc = train_cli("--phase-d", str(phase_d), "--artifact-root", str(tmp_path), "--view", "medium")
    assert proc.returncode == 2 and "--view medium: unknown; choose from ['baseline', 'dense']" in proc.stderr


def test_an_interrupted_job_resumes_from_its_checkpoint_to_the_same_bundle(phase_d, tmp_path):
    """Paused after epoch 2 and resumed, a gridsize-2 job ends with the bytes of an uninterrupted
    run, which also shows two runs give one bundle. Gridsize 1 goes through the same checkpoint
    code; the next test pauses a baseline job."""
    view = "dense"
    params = tmp_path / "params.yaml"  # four epochs, no early stop: the pause falls mid-run
    params.write_text(compose("tiny", REPO / "profiles")
                      .replace("epochs: 2 ", "epochs: 4 ").replace("patience: 2 ", "patience: 4 "))
    common = ["--params", str(params), "--phase-d", str(phase_d), "--dose", "1e3", "--view", view, "--deterministic"]
    whole = train_cli(*common, "--artifact-root", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    root = tmp_path / "paused"
    first = train_cli(*common, "--artifact-root", str(root), "--stop-after-epoch", "2")
    assert first.returncode == 0, first.stderr
    assert "paused after epoch 2 of 4" in first.stdout
    g = 1 if view == "baseline" else 2
    checkpoint = root / ".checkpoints" / f"1e3-{view}-gs{g}.h5"
    assert checkpoint.is_file() and not (root / f"dose_1e3/{view}/gs{g}/wts.h5.zip").exists()
    assert json.loads((root / "skip_summary.json").read_text())["count"] == 1
    second = train_cli(*common, "--artifact-root", str(root))
    assert second.returncode == 0, second.stderr
    assert "resuming after epoch 2" in second.stderr
    bundle = f"dose_1e3/{view}/gs{g}/wts.h5.zip"
    assert (root / bundle).read_bytes() == (tmp_path / "whole" / bundle).read_bytes()
    assert not checkpoint.exists()
    epochs = [json.loads((d / "training_manifest.json").read_text())["jobs"][0]["epochs"] for d in (root, tmp_path / "whole")]
    assert epochs == [4, 4]


def test_a_checkpoint_of_other_settings_is_not_resumed(phase_d, tmp_path):
    root = tmp_path / "a"
    common = ["--phase-d", str(phase_d), "--dose", "1e3", "--view", "baseline", "--deterministic",
              "--artifact-root", str(root)]
    assert train_cli(*common, "--stop-after-epoch", "1").returncode == 0
    other = tmp_path / "params.yaml"
    other.write_text(compose("tiny", REPO / "profiles").replace("learning_rate: 0.001", "learning_rate: 0.002"))
    proc = train_cli(*common[:-2], "--artifact-root", str(root), "--params", str(other))
    assert proc.returncode == 0, proc.stderr
    assert "other data or settings; starting afresh" in proc.stderr and "resuming" not in proc.stderr


def _torchrun(phase_d: Path, out: Path, *layout: str, name: str = "run") -> tuple[subprocess.Popen, Path]:
    """torchrun with ``layout`` started, its output going to files (see start_logged)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *layout,
           str(REPO / "stages" / "train.py"), "--params", str(profile_params("tiny")),
           "--phase-d", str(phase_d), "--artifact-root", str(out), "--timing-dir", str(out / "timing"),
           "--dose", "1e3", "--view", "dense", "--deterministic"]
    return start_logged(cmd, out.parent / f"{out.name}.{name}", cwd=out.parent,
                        env=dict(host_env(), PYTHONPATH=str(REPO / "src")))


def test_torchrun_trains_on_two_processes_reproducibly_and_rank0_writes(phase_d, tmp_path):
    """`torchrun --nproc_per_node=2 stages/train.py` (gloo, DistributedDataParallel): both ranks
    train and log, rank 0 writes one bundle and a manifest with the world size; the bundle loads
    and evaluates to finite errors. A second run at world size 2, as two nodes of one process
    each (`--nnodes=2 --node_rank=0|1`, a rendezvous on 127.0.0.1), gives the same SHA256."""
    (standalone,) = finish_logged(_torchrun(phase_d, tmp_path / "a", "--standalone", "--nproc_per_node=2"))
    with socket.socket() as s:  # a free port for the two nodes' rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = finish_logged(*[_torchrun(phase_d, tmp_path / "b", "--nnodes=2", "--nproc_per_node=1",
                                      f"--node_rank={r}", "--master_addr=127.0.0.1", f"--master_port={port}",
                                      name=f"node{r}") for r in (0, 1)])
    for proc, ranks, lines in ((standalone, (0, 1), 3), (nodes[0], (0,), 3), (nodes[1], (1,), 0)):
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert all(f"[rank {r}/2]" in proc.stderr for r in ranks)  # every rank logs
        assert sum(1 for line in proc.stdout.splitlines() if LINE.match(line)) == lines  # rank 0 alone prints
    manifests = [json.loads((tmp_path / n / "training_manifest.json").read_text()) for n in ("a", "b")]
    (job,) = manifests[0]["jobs"]
    assert manifests[0]["options"]["world_size"] == 2
    assert manifests[0]["numerics"]["torch_threads"] == 2  # every rank its own pinned threads (oneDNN's sums)
    assert manifests[1]["options"]["world_size"] == 2 and manifests[1]["numerics"]["torch_threads"] == 2
    assert job["sha256"] == manifests[1]["jobs"][0]["sha256"] == sha256_file(tmp_path / "a" / job["bundle_path"])
    assert [p.name for p in (tmp_path / "a").rglob("*.zip")] == ["wts.h5.zip"] == \
        [p.name for p in (tmp_path / "b").rglob("*.zip")]
    model = load_inference_model(tmp_path / "a" / job["bundle_path"])
    assert model.cfg.gridsize == 2
    ev = job["evaluation"]
    assert all(np.isfinite(ev[k]) for k in ("phase_rmse_rad", "flat_phase_rmse_rad"))
    # a paused distributed run could not resume (it keeps no checkpoint): refused before the
    # process group is joined (torchrun's variables alone show it)
    paused = train_cli("--phase-d", str(phase_d), "--artifact-root", str(tmp_path / "c"), "--dose", "1e3",
                       "--view", "dense", "--stop-after-epoch", "1", env={"WORLD_SIZE": "2", "RANK": "0"})
    assert paused.returncode == 2 and "--stop-after-epoch" in paused.stderr and not (tmp_path / "c").exists()
