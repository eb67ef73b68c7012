"""The one place that starts or connects Ray, and decides what of Ray's output reaches the user's terminal.

Embedded local Ray by default (`address="local"`, CPUs and object store from config); a cluster when the config's
`ray.address` or the `RAY_ADDRESS` environment variable names one. Inside a Ray job (`winnow submit`) the driver
runs on the cluster and `RAY_ADDRESS` is set by Ray, so the same code attaches to the cluster it was submitted to.

A run's terminal shows winnow's progress and summaries. With a run log (`start_run_log`), everything is written to
the log file, and Ray's own records below ERROR (Ray Data's per-operator progress lines and its memory advice, the
start-up notices) and the output of Ray's internal actors (Ray Train's controller and placement-group cleaner) go
only there.
"""

from __future__ import annotations

import logging
import os
import re

from pydantic import Field

from pipeline.core.config import StrictModel
from pipeline.core.errors import WinnowError
from pipeline.core.logs import RAY_NOISE_LINE

log = logging.getLogger(__name__)


class RayConfig(StrictModel):
    address: str | None = Field(None, description="Ray cluster address (ray://, host:port, 'auto'); None = embedded")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded Ray (default: all cores)")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of the embedded Ray (default: detected)")
    object_store_mb: int = Field(1024, ge=64, description="object store size of the embedded Ray, MiB")
    include_dashboard: bool = False
    namespace: str = "winnow"
    worker_niceness: int | None = Field(None, ge=0, le=19, description=(
        "nice value of the embedded Ray's worker processes; None keeps Ray's own, 15, at which any other busy "
        "process on the machine starves every read task and model actor (a score stage >= 11x slower beside three "
        "busy processes on 2 cores, against 2.4x at 0: bench/shared_machine.py). On a machine shared with other "
        "work, 0 shares the CPUs fairly. A cluster's nodes take theirs from `RAY_worker_niceness` at `ray start`"))


# Ray's loggers; their records below ERROR go only to the run log.
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "ray.util")
# Ray's internal actors and tasks: what they print is Ray's business (a log line), not the user's.
RAY_INTERNAL = re.compile(r"^(TrainController|PlacementGroupCleaner|_StatsActor|AutoscalingRequester|"
                          r"SplitCoordinator|_TrainSession|StateActor|SynchronizationActor)")
_run_log: dict = {"path": None, "handler": None, "relay": None}


def cluster_address(cfg: RayConfig) -> str | None:
    """The cluster to attach to, or None for an embedded local Ray."""
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def init_ray(cfg: RayConfig | None = None, runtime_env: dict | None = None) -> dict:
    """Start or attach to Ray once per process; return what was started, for the manifest and the summary."""
    import ray

    cfg = cfg or RayConfig()
    if ray.is_initialized():
        return describe_cluster()
    # Ray's own workers print through the driver; keep warnings about ourselves visible but quiet Ray's chatter.
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    address = cluster_address(cfg)
    if not address:
        runtime_env = {"worker_process_setup_hook": "pipeline.core.logs.quiet_worker_logs", **(runtime_env or {})}
    if address:
        use_ray_token_if_present()
        try:
            ray.init(address=address, namespace=cfg.namespace, log_to_driver=True, runtime_env=runtime_env,
                     configure_logging=not _run_log["path"])
        except (ConnectionError, RuntimeError) as err:  # Ray's AuthenticationError is a RuntimeError
            raise WinnowError(f"cannot attach to the Ray cluster at {address}: {_first_line(err)}. Is it running "
                              f"(`ray status --address {address}`)? If it uses token authentication, "
                              f"{TOKEN_HINT}") from None
    else:
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus,
            num_gpus=cfg.num_gpus,
            object_store_memory=cfg.object_store_mb * 1024 * 1024,
            include_dashboard=cfg.include_dashboard,
            namespace=cfg.namespace,
            logging_level=logging.WARNING,
            configure_logging=not _run_log["path"],  # with a run log, Ray's records go where ours go
            runtime_env=runtime_env,
            _system_config=None if cfg.worker_niceness is None else {"worker_niceness": cfg.worker_niceness},
        )
    info = describe_cluster()
    log.info("ray: %s", info)
    if _run_log["path"]:
        quiet_ray_loggers()
        _route_worker_output()
        _relay_native_stderr()
    return info


class TerminalFilter(logging.Filter):
    """Keeps Ray's records below ERROR off the terminal (they are in the run log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not record.name.split(".")[0] == "ray"


def start_run_log(path: str) -> str:
    """Send every log record to `path` (appended) and keep Ray's chatter off the terminal; return the path."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    for h in root.handlers:
        if h is not handler:
            h.addFilter(TerminalFilter())
    _run_log.update(path=path, handler=handler)
    quiet_ray_loggers()
    for name in RAY_LOGGERS:  # their INFO records reach the log file (DEBUG would flood it)
        logging.getLogger(name).setLevel(logging.INFO)
    return path


def quiet_ray_loggers() -> None:
    """Ray and Ray Data install their own terminal handlers: remove them, so Ray's records go through the root
    logger's (the run log, and the terminal filtered). Ray Data installs its handlers when imported: import it.
    Ray Data's per-operator progress bars become progress records, which go to the run log."""
    import ray.data  # its logging is configured at import, and must be in place to be changed

    ray.data.DataContext.get_current().enable_progress_bars = False
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                logger.removeHandler(h)
        logger.propagate = True


def _route_worker_output() -> None:
    """Lines that Ray forwards from workers go to the run log; those of Ray's internal actors stop there."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:  # another Ray layout: its output stays on the terminal
        return
    with dispatcher._lock:
        handlers = dict(dispatcher.handlers)
        show = handlers.get("ray_print_logs")
        if show is None or getattr(show, "winnow_routed", False):
            return

        def route(data: dict) -> None:
            who = data.get("actor_name") or data.get("task_name") or ""
            file = _run_log["handler"]
            if file is not None and data.get("pid") != "autoscaler":  # (its status dumps; Ray shows only events)
                with file.lock:  # the handler's own lock: records from other threads do not interleave
                    file.stream.write("".join(f"({who or 'worker'} pid={data.get('pid')}) {line}\n"
                                              for line in data.get("lines", [])))
                    file.flush()
            if not RAY_INTERNAL.match(who):
                lines = [line for line in data.get("lines", []) if not RAY_NOISE_LINE.search(line)]
                if lines:
                    show({**data, "lines": lines})

        route.winnow_routed = True
        dispatcher.handlers = [(n, route if n == "ray_print_logs" else h) for n, h in dispatcher.handlers]


def _relay_native_stderr() -> None:
    """Ray's C++ core writes to the driver's stderr itself (fd 2, below Python's logging), and prints some notices as
    errors (`RAY_NOISE_LINE`). From here on fd 2 feeds a relay process (`pipeline.core.logs`) that appends those to
    the run log and passes every other line to the terminal; Python's own stderr (winnow's messages, progress bars,
    tracebacks) writes to the terminal directly. A separate process, so a native crash's last lines still arrive."""
    if _run_log["relay"] is not None:
        return
    import atexit
    import faulthandler
    import subprocess
    import sys
    from pathlib import Path

    try:
        sys.stderr.flush()
        terminal = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr (e.g. a test capturing it): nothing to relay
        return
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
    relay = subprocess.Popen([sys.executable, "-m", "pipeline.core.logs", _run_log["path"]], stdin=subprocess.PIPE,
                             stdout=terminal, stderr=terminal, env=env)
    old = sys.stderr
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding=getattr(old, "encoding", None) or "utf-8",
                           errors="backslashreplace")
    for handler in logging.getLogger().handlers:  # the terminal handler keeps writing to the terminal
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is old:
            handler.setStream(sys.stderr)
    os.dup2(relay.stdin.fileno(), 2)
    if faulthandler.is_enabled():
        faulthandler.enable(file=sys.stderr)  # a crash's Python traceback: straight to the terminal
    _run_log["relay"] = relay

    def close() -> None:  # at exit, after Ray's own shutdown lines: end the relay's input, let it write what it holds
        import ray

        if ray.is_initialized():
            ray.shutdown()
        os.dup2(sys.stderr.fileno(), 2)
        relay.stdin.close()
        try:
            relay.wait(timeout=10)
        except subprocess.TimeoutExpired:
            relay.kill()

    atexit.register(close)


TOKEN_HINT = ("set RAY_AUTH_TOKEN to the cluster's token (or RAY_AUTH_TOKEN_PATH to a file holding it); on the head, "
              "`ray get-auth-token` prints it")


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:300]


def use_ray_token_if_present() -> None:
    """Send Ray's token when one is where Ray's own clients look (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
    ~/.ray/auth_token), as `ray` commands on the head do. Given an address, Ray's client stays in auth mode
    'disabled' unless RAY_AUTH_MODE says otherwise, and a head started by `ray start` with a token refuses it."""
    if os.environ.get("RAY_AUTH_MODE"):
        return  # set explicitly: respected as is
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth
        from ray._raylet import AuthenticationTokenLoader

        if AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
            _enable_token_auth()
    except ImportError:  # a Ray without token authentication
        pass


def describe_cluster() -> dict:
    import ray

    res = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    return {
        "address": ray.get_runtime_context().gcs_address,
        "nodes": len(nodes),
        "cpus": res.get("CPU", 0.0),
        "gpus": res.get("GPU", 0.0),
        "multi_node": len(nodes) > 1,
    }
