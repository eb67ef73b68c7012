"""Where rank 0 writes a training run's files: the output directory itself when it is local, else a local staging
folder that mirrors a remote one (`s3://...`, `gs://...`).

TensorBoard, matplotlib, torch.save and the CSV writer need a local folder. For a remote output, rank 0 writes into a
temporary folder, pulls the files a resumed run continues (`metrics.csv`, `resumes.json`) at the start, and pushes
what changed at every checkpoint and at the end, so the remote directory is never further behind than the newest
checkpoint. Step checkpoints are not staged here: the backend (Ray Train, or the in-process one) stores them under
`<output>/checkpoints/` directly.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from pipeline.core.layout import fs_and_path, join
from pipeline.core.storage import is_remote, local_path, upload

RESUME_FILES = ("metrics.csv", "resumes.json")


class RunDir:
    def __init__(self, url: str):
        self.url = url
        self.remote = is_remote(url)
        self.local = tempfile.mkdtemp(prefix="winnow-run-") if self.remote else local_path(url)
        os.makedirs(self.local, exist_ok=True)
        self._pushed: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime) when last uploaded

    def path(self, *parts: str) -> str:
        """A local path to write (or read) the run's file `parts`."""
        return os.path.join(self.local, *parts)

    def pull(self, names: tuple[str, ...] = RESUME_FILES) -> list[str]:
        """Download the named files that exist remotely; return their names."""
        if not self.remote:
            return []
        got = []
        for name in names:
            fs, path = fs_and_path(join(self.url, name))
            if fs.exists(path):
                fs.get_file(path, self.path(name))
                self._pushed[name] = self._stamp(name)  # unchanged since: nothing to upload again
                got.append(name)
        return got

    def push(self) -> list[str]:
        """Upload the files created or changed since the last push; return their relative paths."""
        if not self.remote:
            return []
        sent = []
        for folder, _, files in os.walk(self.local):
            for name in sorted(files):
                rel = os.path.relpath(os.path.join(folder, name), self.local).replace(os.sep, "/")
                stamp = self._stamp(rel)
                if self._pushed.get(rel) != stamp:
                    upload(self.path(rel), join(self.url, rel))
                    self._pushed[rel] = stamp
                    sent.append(rel)
        return sent

    def close(self) -> None:
        """Remove the staging folder (a local output directory is left alone)."""
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)

    def _stamp(self, rel: str) -> tuple[int, int]:
        st = os.stat(self.path(rel))
        return st.st_size, st.st_mtime_ns
