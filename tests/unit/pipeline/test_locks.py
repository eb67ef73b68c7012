"""One run at a time per dataset: the second waits or fails naming the holder; a dead holder's lock is recovered."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lock_holder import hold_in_another_process

from pipeline.core.locks import DatasetLocked, Holder, lock_dataset


def test_a_second_run_fails_naming_the_holder(tmp_path: Path) -> None:
    proc = hold_in_another_process(str(tmp_path / "pool"), 30)
    try:
        with pytest.raises(DatasetLocked) as err:
            lock_dataset(str(tmp_path / "pool"))
        assert f"pid {proc.pid} on {socket.gethostname()}" in str(err.value) and "-c" in str(err.value)
        assert "--wait" in str(err.value) and "--break-lock" in str(err.value)
    finally:
        proc.kill()
        proc.wait()


def test_a_second_run_can_wait_for_the_first(tmp_path: Path) -> None:
    proc = hold_in_another_process(str(tmp_path / "pool"), 1.0)
    t0 = time.monotonic()
    with lock_dataset(str(tmp_path / "pool"), wait_s=60, poll_s=0.1) as lock:
        assert time.monotonic() - t0 > 0.3 and lock.holder.pid == os.getpid()
    proc.wait()
    assert not (tmp_path / "pool" / "_lock").exists()


def _write_lock(path: Path, holder: Holder) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "_lock").write_text(json.dumps(holder.__dict__))


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path: Path, caplog) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _write_lock(tmp_path / "pool", Holder(socket.gethostname(), dead.pid, "winnow run old.yaml", time.time() - 60))
    with caplog.at_level(logging.WARNING), lock_dataset(str(tmp_path / "pool")) as lock:
        assert lock.holder.pid == os.getpid()
    assert f"process {dead.pid} is no longer running" in caplog.text


def test_a_lock_from_another_host_needs_an_age_or_the_users_word(tmp_path: Path) -> None:
    _write_lock(tmp_path / "pool", Holder("elsewhere", 1234, "winnow run x.yaml", time.time() - 7200))
    with pytest.raises(DatasetLocked, match="pid 1234 on elsewhere"):
        lock_dataset(str(tmp_path / "pool"), stale_after_s=3 * 3600)
    with lock_dataset(str(tmp_path / "pool"), stale_after_s=3600):
        pass
    _write_lock(tmp_path / "pool", Holder("elsewhere", 1234, "winnow run x.yaml", time.time()))
    with lock_dataset(str(tmp_path / "pool"), break_lock=True):
        pass


def test_on_an_object_store_the_lock_is_a_conditional_put(s3_bucket) -> None:
    from pipeline.core.layout import join

    first = lock_dataset(join(s3_bucket, "pool"))
    with pytest.raises(DatasetLocked, match=f"pid {os.getpid()}"):
        lock_dataset(join(s3_bucket, "pool"))  # same process, another run: still refused
    first.release()
    with lock_dataset(join(s3_bucket, "pool")):
        pass


def test_a_lock_on_a_dataset_not_yet_made_leaves_no_folder_behind(tmp_path: Path) -> None:
    with lock_dataset(str(tmp_path / "root" / "pool")):
        assert (tmp_path / "root" / "pool" / "_lock").exists()
    assert list(tmp_path.iterdir()) == []
