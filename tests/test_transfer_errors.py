"""`make push` / `make pull` turn DVC's messages of a failed transfer into one line
(`fly64study.sharing.transfer_failure`): DVC's stderr as DVC 3.67 printed it in the faults of
test_disk_full.py and test_remote_faults.py (paths shortened), and lines it must not misread."""
from __future__ import annotations

import pytest

from fly64study.sharing import transfer_failure

PUSH_FULL = """\
ERROR: failed to transfer '803adc143cd364748240d6db509d549f' - [Errno 28] No space left on device: '{root}/.dvc/cache/files/md5/80/3adc143cd364748240d6db509d549f' -> '{remote}/files/md5/80/.YWpNny8NOx3CMRv9eOgMaw.tmp'
ERROR: failed to push data to the cloud - 76 files failed to upload
"""
PULL_FULL = """\
ERROR: failed to transfer '729a43c8c4bca173765e1c8f24d022a1' - [Errno 28] No space left on device: '{remote}/files/md5/72/9a43c8c4bca173765e1c8f24d022a1' -> '{root}/.dvc/cache/files/md5/72/._HrtcDHwLD-3wZRQcJTvVg.tmp'
ERROR: failed to pull data from the cloud - 64 files failed to download
"""
SSH_DROPPED = """\
ERROR: failed to transfer '2047a1435e35c10ea03911032d63b40c' - Connection not open
ERROR: failed to push data to the cloud - 1 files failed to upload
"""
CHECKOUT_FULL = """\
ERROR: failed to pull data from the cloud - No possible cache link types for '{root}/data/phase_c/dose_1e3/patched_test.npz, {root}/data/phase_c/dose_1e3/overview.png'. See <https://dvc.org/doc/user-guide/troubleshooting#cache-types> for more information.
"""


def test_a_full_remote_names_the_remote_folder_and_what_was_not_sent(tmp_path):
    (tmp_path / "remote").mkdir()
    line = transfer_failure(["dvc", "push"], 1, PUSH_FULL.format(root=tmp_path / "study", remote=tmp_path / "remote"))
    assert line.startswith(f"`dvc push`: disk full at {tmp_path / 'remote'} (")
    assert "76 files were not uploaded; no object is half-written under its name" in line


def test_a_full_cache_names_the_cache_folder(tmp_path):
    line = transfer_failure(["dvc", "pull"], 1, PULL_FULL.format(root=tmp_path, remote="/srv/remote"))
    assert line.startswith(f"`dvc pull`: disk full at {tmp_path / '.dvc' / 'cache'} (")  # its folder need not exist
    assert "64 files were not downloaded" in line


def test_a_dropped_connection_and_a_silent_broken_pipe():
    line = transfer_failure(["dvc", "push", "-r", "ssh"], 1, SSH_DROPPED)
    assert line.startswith("`dvc push`: the connection to the remote failed (Connection not open); 1 files were not "
                           "uploaded; objects that reached it are whole")
    assert "status 141 and no message: a broken pipe" in transfer_failure(["dvc", "push"], 141, "")


def test_a_checkout_that_could_not_write_names_the_first_file(tmp_path):
    line = transfer_failure(["dvc", "pull"], 1, CHECKOUT_FULL.format(root=tmp_path))
    assert line.startswith(f"`dvc pull`: could not put {tmp_path}/data/phase_c/dose_1e3/patched_test.npz in place")
    assert "there: DVC could neither link nor copy it there" in line  # this disk has room: not called full


@pytest.mark.parametrize("stderr", [
    "train: epoch 3 timed out waiting for a batch\nPermission denied: /scratch/x\nERROR: failed to reproduce 'x': "
    "failed to run: python stages/train.py, exited with 1\n",
])
def test_a_stage_s_own_words_are_not_taken_for_a_broken_connection(stderr):
    line = transfer_failure(["dvc", "repro"], 1, stderr)
    assert line == "`dvc repro` failed (exit 1): failed to reproduce 'x': failed to run: python stages/train.py, " \
                   "exited with 1"


def test_a_checkout_that_failed_for_want_of_space_or_of_objects(tmp_path):
    (tmp_path / "data").mkdir()
    stderr = ("ERROR: failed to pull data from the cloud - Checkout failed for following targets:\ndata/design.json\n"
              "data/report/index.html\nIs your cache up to date?\n<https://error.dvc.org/missing-files>\n")
    line = transfer_failure(["dvc", "pull"], 1, stderr, tmp_path)
    assert line.startswith("`dvc pull`: could not check out data/design.json and 1 more (")
    assert "DVC says no more (`dvc checkout -v` shows why)" in line  # this disk has room
    missing = "WARNING: Some of the cache files do not exist neither locally nor on remote. Missing cache files:\n" \
              "md5: 4c6f4cf88a0ab98996b71ee4e1e723dd\n" + stderr
    assert "objects are neither in the cache nor on the remote" in transfer_failure(["dvc", "pull"], 1, missing, tmp_path)
