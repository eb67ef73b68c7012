"""Log levels for processes winnow starts (Ray workers, Ray Train workers), and the relay that keeps Ray's native
notices on a driver's stderr off the user's terminal: winnow's progress stays readable.

    python -m pipeline.core.logs RUN_LOG     # the relay: stdin -> the terminal (stdout), Ray's notices -> RUN_LOG
"""

from __future__ import annotations

import logging
import re
import signal
import sys

# Lines Ray prints that are notices, not the user's business, wherever they come from (a worker's output forwarded to
# the driver, or the driver's own C++ core writing to its stderr): abseil's mutex tracing from gRPC, and the core
# worker's ERROR that an actor "has constructor arguments in the object store and max_restarts > 0", which Ray Data
# causes for every actor of every pool (it passes its map function by reference and lets actors restart;
# ray-project/ray#53727). They go to the run log.
RAY_NOISE_LINE = re.compile(r"^\[mutex\.cc : \d+\] RAW: |core_worker\.cc:\d+: Actor with class name: .* has "
                            r"constructor arguments in the object store and max_restarts > 0")


def quiet_worker_logs() -> None:
    """Worker start-up hook: keep workers' INFO chatter (open_clip's model loading, Ray Train's resource requests,
    and the placement-group cleaner that cannot reach the State API without a dashboard) out of the user's terminal.
    Warnings and errors still come through."""
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def relay(run_log: str) -> None:
    """Copy stdin to stdout a line at a time, appending the lines RAY_NOISE_LINE matches to `run_log` instead. It
    runs until stdin closes (the driver exited, even by a crash: what it wrote last is still relayed), ignoring the
    terminal's Ctrl-C, which the driver handles."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout.buffer
    with open(run_log, "ab") as log:
        for line in sys.stdin.buffer:
            if RAY_NOISE_LINE.search(line.decode("utf-8", "replace")):
                log.write(b"(driver stderr) " + line)
                log.flush()
            else:
                out.write(line)
                out.flush()


if __name__ == "__main__":
    relay(sys.argv[1])
