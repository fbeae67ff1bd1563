"""Shared fixtures: the repository root, the tiny profile, and small synthetic datasets."""
from __future__ import annotations

import contextlib
import functools
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# `make test` runs two pytest-xdist workers on two cores: OpenMP threads that spin while they wait
# would take the other worker's core. Waiting policy only: it changes no result.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# the package pins the numerics when imported, which holds only before numpy and torch load: an
# unpinned numpy took its AVX-512 loops on an AVX-512 CPU, and scores computed here then differed
# in the last bits from a pinned worker process's (tune's side-by-side test, on a Xeon)
import fly64study  # noqa: E402,F401
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402

from fly64study.contract import Dataset  # noqa: E402
from fly64study.design import RECORD_ENV, Params, load_params  # noqa: E402
from fly64study.files import md5_file, sha256_file  # noqa: E402
from fly64study.numerics import PINNED_ENV, host_settings  # noqa: E402
from fly64study.profiles import compose  # noqa: E402

HOST_PINNED = host_settings()  # what the host had set before fly64study pinned this process

REPO = Path(__file__).resolve().parents[1]
# what a temporary copy of the project needs to run the pipeline (not data/, not .venv/)
COPY = ["dvc.yaml", "profiles", "stages", "src", "inputs", "Makefile", ".dvcignore", ".gitignore", ".dvc/config",
        ".dvc/.gitignore"]


# the longest test files, longest first (`pytest --durations`, 2 cores): a worker takes the next
# file when it is free, so the long ones start early and the short ones fill the end
LONGEST = ("test_evidence.py", "test_train_cli.py", "test_pipeline.py", "test_iterative.py", "test_faults.py",
           "test_disk_full.py", "test_reproducible.py", "test_design.py", "test_readme.py", "test_refine.py",
           "test_remote_faults.py", "test_fuzz.py")


def pytest_collection_modifyitems(config, items):
    """`make test` runs two pytest-xdist workers, a test file each at a time (``--dist loadfile``).
    The first file that reads the shared tiny run goes first (its worker builds the run while the
    other works through long files that do not need it); the rest go longest first, so both
    workers end together. A plain `pytest` run keeps the same order."""
    tiny_files = list(dict.fromkeys(item.path for item in items if "tiny_pipeline" in item.fixturenames))

    def rank(item) -> tuple[int, int]:
        if tiny_files and item.path == tiny_files[0]:
            return 0, 0
        if item.path.name in LONGEST:
            return 1, LONGEST.index(item.path.name)
        return 2, 0

    items.sort(key=rank)  # stable: each file's tests keep their order


def host_env() -> dict:
    """This process's environment as the host gave it: without the settings that importing
    fly64study pinned here, so a child process must pin them itself (and a test sees if it does not)."""
    env = dict(os.environ)
    for key in PINNED_ENV:
        if key in HOST_PINNED:
            env[key] = HOST_PINNED[key]
        else:
            env.pop(key, None)
    return env


def project_env(root: Path) -> dict:
    """Environment for commands in a project copy: its own package, offline DVC, a git identity."""
    env = host_env()
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(root / "src"),  # the copy's package, not the checkout's
        DVC_NO_ANALYTICS="1",
        DVC_STUDIO_OFFLINE="1",
        DVC_SITE_CACHE_DIR=str(root.parent / f".{root.name}.site_cache"),  # outside the repo: not in git
        GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.org",
        GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.org",
    )
    return env


def sh(root: Path, *cmd: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=root, env={**project_env(root), **(env or {})}, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@functools.cache
def profile_params(name: str) -> Path:
    """profiles/<name>.yaml as `make profile` writes it, in a file of its own (the stages read no profile)."""
    path = Path(tempfile.mkdtemp(prefix="fly64study-profile-")) / "params.yaml"
    path.write_text(compose(name, REPO / "profiles"))
    return path


def copy_project(root: Path, profile: str = "tiny") -> Path:
    """A copy of the project in a new git repository, with ``profile`` as params.yaml."""
    for rel in COPY:
        src, dst = REPO / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst)
    (root / "params.yaml").write_text(compose(profile, root / "profiles"))  # as `make profile` writes it
    sh(root, "git", "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "commit", "-qm", f"{profile} profile")
    return root


@dataclass(frozen=True)
class TinyRun:
    """The tiny study, fanned out as `make share` / `make gather` would over three machines and
    shared by every test that needs pipeline outputs: one clone per dose runs that dose's stages
    and pushes them with the run-cache to one remote; the collector (``root``) fetches the
    run-cache and runs `dvc repro --pull`, which restores every shared stage and runs the report."""

    root: Path  # the collector, committed after the run (metrics and plot tables in git)
    reads: Path  # per stage process: the params keys its code read (FLY64STUDY_PARAMS_RECORD)
    shares: dict  # dose -> the output of its share (`python -m fly64study.sharing share --dose <d>`)
    log: str  # the collector's output (`python -m fly64study.sharing gather`)
    remote: Path  # the team remote (a local directory)


def start_logged(cmd: list[str], log: Path, *, cwd: Path, env: dict) -> tuple[subprocess.Popen, Path]:
    """``cmd`` started in ``cwd``, its stdout and stderr going to ``<log>.out`` and ``<log>.err``:
    processes side by side must not wait on each other's pipe (a torchrun rank blocked on a full
    one would stall the other's collective)."""
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err), log


def finish_logged(*started: tuple[subprocess.Popen, Path],
                  timeout: float = 1800) -> list[subprocess.CompletedProcess]:
    """Wait for every process :func:`start_logged` started; on a timeout or an error stop those
    still running (SIGTERM first: torchrun then stops its ranks, which run in sessions of their
    own), then give each one's output."""
    try:
        for proc, _ in started:
            proc.wait(timeout=timeout)
    finally:
        for proc, _ in started:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
    return [subprocess.CompletedProcess(proc.args, proc.returncode, Path(f"{log}.out").read_text(),
                                        Path(f"{log}.err").read_text()) for proc, log in started]


def _sharing(root: Path, *args: str, env: dict) -> tuple[subprocess.Popen, Path]:
    """``python -m fly64study.sharing <args>`` started in ``root``, its output going to files."""
    return start_logged([sys.executable, "-m", "fly64study.sharing", *args],
                        root.parent / f"{root.name}.{args[0]}", cwd=root, env={**project_env(root), **env})


def _output(proc: subprocess.CompletedProcess, what: str) -> str:
    out = proc.stdout + proc.stderr
    if proc.returncode:
        raise AssertionError(f"{what} exited {proc.returncode}\n{out}")
    return out


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> TinyRun:
    """The whole tiny pipeline, run once per test session (stage processes import torch afresh,
    so every rerun costs minutes on 2 cores). Tests that change it work on :func:`clone_run`.
    The two shares run side by side, one per core. Under pytest-xdist the workers share one run:
    the first to ask builds it in the session's common temporary folder, holding a file lock;
    the others wait for the lock and read it."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the folder above every worker's own
    base, done = shared / "tiny_pipeline", shared / "tiny_pipeline.json"
    with FileLock(str(shared / "tiny_pipeline.lock")):
        if not done.is_file():
            shutil.rmtree(base, ignore_errors=True)  # a run that failed half-way in another worker
            base.mkdir()
            root = copy_project(base / "study")
            remote, record = base / "remote", {RECORD_ENV: str(base / "reads")}
            clones = {}
            for dose in load_params(root / "params.yaml").design.doses:
                clones[dose] = base / f"share_{dose}"
                sh(base, "git", "clone", "-q", str(root), str(clones[dose]))
            for project in (root, *clones.values()):
                sh(project, "dvc", "remote", "add", "--local", "-d", "team", str(remote))
            running = {d: _sharing(c, "share", "--dose", d, env=record) for d, c in clones.items()}
            shares = {d: _output(proc, f"share --dose {d}")
                      for d, proc in zip(running, finish_logged(*running.values()))}
            log = _output(*finish_logged(_sharing(root, "gather", env=record)), "gather")
            sh(root, "git", "add", "-A")
            sh(root, "git", "commit", "-qm", "tiny run")
            done.write_text(json.dumps({"shares": shares, "log": log}))
        run = json.loads(done.read_text())
    return TinyRun(root=base / "study", reads=base / "reads", shares=run["shares"], log=run["log"],
                   remote=base / "remote")


def clone_run(run: TinyRun, dest: Path) -> Path:
    """A working copy of the shared run (git history, DVC cache and outputs) to change freely."""
    shutil.copytree(run.root, dest, symlinks=True)
    return dest


@pytest.fixture
def one_thread():
    """torch on one thread, as the LSQML stages run it (bitwise reproducible there only)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny() -> Params:
    return load_params(profile_params("tiny"))


def small_dataset(n: int = 6, N: int = 16, M: int = 40, seed: int = 0) -> Dataset:
    """A contract-valid dataset of random arrays (no physics), for contract and I/O tests."""
    rng = np.random.default_rng(seed)
    meta = {"nphotons": 1000.0, "N": N, "intensity_scale": 2.0, "seeds": {"simulation": seed},
            "source": {"source": "test"}, "transformations": []}
    return Dataset(
        diffraction=rng.random((n, N, N)).astype(np.float32),
        probeGuess=(rng.random((N, N)) + 1j * rng.random((N, N))).astype(np.complex64),
        objectGuess=np.exp(1j * rng.random((M, M))).astype(np.complex64),
        xcoords=rng.uniform(N / 2, M - N / 2, n),
        ycoords=rng.uniform(N / 2, M - N / 2, n),
        metadata=json.loads(json.dumps(meta)),
        Y=np.ones((n, N, N), dtype=np.complex64),
    )


# ------------------------------------------------------------------ faults (disk, remote, memory)
def sharing(root: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m fly64study.sharing <args>`` (make push / pull) in ``root``, run to its end."""
    return subprocess.run([sys.executable, "-m", "fly64study.sharing", *args], cwd=root, env=project_env(root),
                          capture_output=True, text=True)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """The ``error:`` lines a failed command printed; a traceback instead is a failure."""
    assert "Traceback" not in proc.stderr, proc.stderr
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


def file_digests(folder: Path) -> dict[str, str]:
    """SHA256 of every file under ``folder`` (a study's data/, a DVC cache) by its path there, but
    DVC's .gitignore files, the untracked run timings (data/timing/) and a test's filler."""
    return {rel: sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in (
        ".filler", ".gitignore") and not (rel := p.relative_to(folder).as_posix()).startswith("timing/")}


def whole_objects(store: Path) -> int:
    """Every object under a content-hash name in a DVC cache or remote holds those bytes (DVC's
    temporary files, ``.<random>.tmp``, excepted); returns how many there are."""
    count = 0
    for p in (store / "files" / "md5").rglob("*"):
        if p.is_file() and not p.name.startswith("."):
            assert md5_file(p) == p.parent.name + p.name.removesuffix(".dir"), f"{p} is not whole under its final name"
            count += 1
    return count



def push_again_then_pull_fresh(root: Path, remote: str, store: Path, sent: int, add_remote, clone: Path) -> Path:
    """After a push to ``remote`` (its objects in ``store``) failed with ``sent`` whole objects
    there: the same `make push` completes, adding whole objects only, and a fresh ``clone``
    (``add_remote(clone)`` names the remote there) pulls with `make pull`, each object checked."""
    again = sharing(root, "push", "--remote", remote)
    assert again.returncode == 0, again.stderr
    assert whole_objects(store) > sent
    sh(clone.parent, "git", "clone", "-q", str(root), str(clone))
    add_remote(clone)
    pulled = sharing(clone, "pull", "--remote", remote)
    assert pulled.returncode == 0 and "every object pulled matches" in pulled.stdout, pulled.stderr
    return clone

class SSHServer:
    """Debian's openssh-server on 127.0.0.1, key auth only, keys and config in a temp folder; it can
    be stopped (the listener and every session it serves, as a crashed or rebooted host would) and
    started again on the same port."""

    def __init__(self, folder: Path):
        self.dir, self.log = folder, folder / "sshd.log"
        folder.mkdir()
        for name in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
        self.key = folder / "client"
        (folder / "authorized_keys").write_text((folder / "client.pub").read_text())
        (folder / "authorized_keys").chmod(0o600)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        (folder / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host'}\nPidFile {folder / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {folder / 'authorized_keys'}\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
            "UsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n")
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
        subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(folder / "sshd_config")], check=True)
        self.start()

    def start(self) -> None:
        subprocess.run(["/usr/sbin/sshd", "-f", str(self.dir / "sshd_config"), "-E", str(self.log)], check=True)
        for _ in range(50):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"sshd did not start: {self.log.read_text()}")

    def stop(self) -> None:
        """SIGKILL the listener and every process under it (each session: its children, or their
        children where OpenSSH forks again after login)."""
        root, killed = int((self.dir / "sshd.pid").read_text()), set()
        while True:  # again until no process is left under it (a session may fork while it is read)
            parents = {}
            for stat in Path("/proc").glob("[0-9]*/stat"):
                with contextlib.suppress(OSError, ValueError):
                    parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # field 4
            tree = [root]
            for pid in tree:
                tree += [child for child, parent in parents.items() if parent == pid]
            alive = [p for p in tree if p in parents and p not in killed]
            if not alive:
                break
            for p in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
                killed.add(p)
        (self.dir / "sshd.pid").unlink(missing_ok=True)

    def url(self, store: Path) -> str:
        return f"ssh://{getpass.getuser()}@127.0.0.1:{self.port}{store}"

    def add_remote(self, root: Path, name: str, store: Path) -> None:
        """A DVC remote ``name`` of ``root`` on this server (in .dvc/config.local: the key stays local)."""
        sh(root, "dvc", "remote", "add", "--local", "-f", name, self.url(store))
        sh(root, "dvc", "remote", "modify", "--local", name, "keyfile", str(self.key))


@pytest.fixture
def sshd(tmp_path):
    """A running :class:`SSHServer`, stopped after the test."""
    if not Path("/usr/sbin/sshd").is_file() or shutil.which("ssh-keygen") is None:
        pytest.skip("openssh-server is not installed (.ci/run installs it: apt-get install openssh-server)")
    server = SSHServer(tmp_path / "ssh")
    yield server
    if (server.dir / "sshd.pid").is_file():
        server.stop()
