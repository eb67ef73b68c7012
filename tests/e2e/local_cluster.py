"""A real Ray cluster on this machine, started with `ray start` (head + worker nodes, each with its own temp dir),
on loopback, and the helpers the end-to-end tests share: drive `winnow run` against it, find its processes, kill one
process or a whole worker node.

Stopping never runs `ray stop` (which would stop every Ray on the machine): it ends only the processes whose
command line names this cluster's own temp dir or ports.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
# A loopback address Ray keeps as given: it swaps "127.0.0.1" for the host's own IP, but not the rest of 127/8.
NODE_IP = "127.0.0.2"


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this process: the OS may give a just-released port again, and
    two of one cluster's ports the same makes `ray start` fail."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def _node_ports() -> list[str]:
    return ["--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]


class LocalCluster:
    def __init__(self, cpus_per_node: int = 1, object_store_mb: int = 300, ray_defaults: bool = False,
                 node_death_s: float | None = None, env: dict[str, str] | None = None, head_cpus: int | None = None):
        self.temp_dir = tempfile.mkdtemp(prefix="winnow-cluster-", dir="/tmp")
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.cpus = cpus_per_node
        # (0: no work on the head, as on large clusters, so that every task and actor runs on a worker node)
        self.head_cpus = cpus_per_node if head_cpus is None else head_cpus
        self.store = object_store_mb * 1024 * 1024
        self.started_nodes = 0  # worker nodes started so far (their indices are 1..started_nodes)
        self.live_nodes: list[int] = []  # those not killed
        # (the single-node test Ray pins itself to loopback with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which would
        # refuse a second node: this cluster uses NODE_IP instead)
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
        # Token authentication, with this cluster's own token: every process started here and every client
        # (the `winnow submit` subprocesses) gets it through `self.env`. With `ray_defaults`, nothing is set: a
        # home of its own holds the token where Ray writes it (`ray get-auth-token --generate`, as a local
        # `ray.init()` does), and `ray start` turns token authentication on because it finds it there.
        if ray_defaults:
            for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
                self.env.pop(var, None)
            self.env["HOME"] = os.path.join(self.temp_dir, "home")
        else:
            token_path = Path(self.temp_dir) / "auth_token"
            token_path.write_text(secrets.token_hex(32))
            self.env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)})
        self.env.update({"RAY_USAGE_STATS_ENABLED": "0", "NO_ALBUMENTATIONS_UPDATE": "1",
                         "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1",
                         # as with an activated virtualenv: a job's `python` is this interpreter
                         "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
        self.env.update(env or {})  # every node's processes (its workers, Ray Train's controller) inherit these
        if node_death_s:
            # The GCS declares a node dead after this many seconds of failed health checks (Ray's default: about
            # 15 s): node-loss tests need not wait that long for Ray to notice a node they killed.
            period = max(500, int(node_death_s * 1000 / 4))
            self.env.update({"RAY_health_check_period_ms": str(period), "RAY_health_check_timeout_ms": str(period),
                             "RAY_health_check_failure_threshold": "4"})

    @property
    def gcs_address(self) -> str:
        return f"{NODE_IP}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def node_dir(self, i: int) -> str:
        """Worker node `i`'s own temp dir (`i` from 1; the head's is `temp_dir`)."""
        return os.path.join(self.temp_dir, "worker" if i == 1 else f"worker{i}")

    def _ray(self, *args: str) -> None:
        out = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=180)
        if out.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")

    def start(self, nodes: int = 2) -> LocalCluster:
        if "HOME" in self.env and self.env["HOME"].startswith(self.temp_dir):
            os.makedirs(self.env["HOME"], exist_ok=True)
            self._ray("get-auth-token", "--generate")
        common = ["--node-ip-address", NODE_IP, "--num-gpus", "0",
                  "--object-store-memory", str(self.store), "--disable-usage-stats"]
        self._ray("start", "--head", "--port", str(self.gcs_port), "--temp-dir", self.temp_dir,
                  "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                  "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port", str(free_port()),
                  "--num-cpus", str(self.head_cpus), *common, *_node_ports())
        self.common = [*common, "--num-cpus", str(self.cpus)]
        for _ in range(1, nodes):
            self.add_node(wait=False)
        self._wait_for_nodes(nodes)
        return self

    def add_node(self, wait: bool = True) -> int:
        """Start one more worker node (a replacement for a killed one); its index."""
        self.started_nodes += 1
        i = self.started_nodes
        # Its own temp dir, as on a real second machine: two nodes sharing one session dir would also share the
        # runtime-env cache, and one node's cleanup would delete the other's job working dir.
        self._ray("start", "--address", self.gcs_address, "--temp-dir", self.node_dir(i), *self.common,
                  *_node_ports())
        self.live_nodes.append(i)
        if wait:
            self._wait_for_nodes(len(self.live_nodes) + 1)
        return i

    def ensure_nodes(self, workers: int) -> None:
        """Top the cluster up to `workers` live worker nodes (after a test killed some)."""
        while len(self.live_nodes) < workers:
            self.add_node(wait=False)
        self._wait_for_nodes(workers + 1)

    def python(self, code: str, timeout: float = 120) -> str:
        """Run a Python snippet as a driver attached to this cluster; return its stdout."""
        # (a driver given an address never looks for Ray's token on its own: say token mode explicitly)
        out = subprocess.run([sys.executable, "-c", code], env={"RAY_AUTH_MODE": "token", **self.env,
                                                                "RAY_ADDRESS": self.gcs_address},
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        return out.stdout

    def alive_nodes(self) -> int:
        code = "import ray; ray.init(); print(sum(1 for x in ray.nodes() if x['Alive']))"
        return int(self.python(code).strip().splitlines()[-1])

    def wait_for_alive(self, n: int, timeout: float = 90) -> None:
        """Until Ray counts exactly `n` live nodes (a killed node is declared dead after its health checks fail)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.alive_nodes() == n:
                return
            time.sleep(1)
        raise RuntimeError(f"cluster did not come to {n} alive nodes in {timeout}s")

    def _wait_for_nodes(self, n: int, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.alive_nodes() >= n:
                return
            time.sleep(1)
        raise RuntimeError(f"cluster did not reach {n} alive nodes in {timeout}s")

    def pids(self) -> list[int]:
        marks = (self.temp_dir, f"{NODE_IP}:{self.gcs_port}", f"--gcs-address={NODE_IP}:{self.gcs_port}",
                 f"gcs_server_port={self.gcs_port}", f"--port={self.gcs_port}")
        out = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["pid"] != os.getpid() and any(m in cmd for m in marks):
                out.append(p.info["pid"])
        return out

    def node_pids(self, i: int) -> list[int]:
        """Every process of worker node `i`: what `ray start` left running for it (its raylet, its log monitor: their
        command lines name the node's temp dir) and everything under its raylet (its dashboard and runtime-env
        agents, its task and actor workers: their titles are rewritten to `ray::...`, so only the tree finds them)."""
        mark = self.node_dir(i) + os.sep
        found: set[int] = set()
        for p in psutil.process_iter(["pid", "cmdline"]):
            if any(mark in arg for arg in p.info["cmdline"] or []):
                found.add(p.info["pid"])
                try:
                    found.update(c.pid for c in p.children(recursive=True))
                except psutil.NoSuchProcess:
                    pass
        return sorted(found)

    def kill_node(self, i: int, timeout: float = 30) -> list[int]:
        """SIGKILL worker node `i` whole, as a machine that vanished: the raylet first (so it restarts nothing), then
        every process under it and beside it, all at once; wait until they are gone. Returns the pids killed."""
        pids = self.node_pids(i)
        assert pids, f"worker node {i} has no processes"
        procs = []
        for pid in pids:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                continue
        procs.sort(key=lambda p: p.name() != "raylet")
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout)
        assert not alive, f"still alive after SIGKILL: {alive}"
        left = self.node_pids(i)  # a worker forked between the listing and the kill
        if left:
            return pids + self.kill_node(i, timeout)
        self.live_nodes.remove(i)
        return pids

    def processes(self, name: str, node: int | None = None) -> list[psutil.Process]:
        """Processes under this cluster's raylets (or worker node `node`'s) whose title starts with `name`, e.g.
        ray::RayTrainWorker."""
        found = []
        for pid in self.pids() if node is None else self.node_pids(node):
            try:
                proc = psutil.Process(pid)
                if proc.name() != "raylet":
                    continue
                found += [p for p in proc.children(recursive=True) if p.name().startswith(name)]
            except psutil.NoSuchProcess:
                continue
        return found

    def worker_node_running(self, name: str) -> int | None:
        """A live worker node (not the head) with a process titled `name`, if any."""
        return next((i for i in self.live_nodes if self.processes(name, i)), None)

    def stop(self) -> None:
        # SIGKILL, not SIGTERM first: the GCS and the raylets sit out a SIGTERM for more than 15 s, and a test
        # cluster has nothing to flush (its temp dir goes next).
        deadline = time.time() + 10
        while (pids := self.pids()) and time.time() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.3)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    """`predicate()`'s first truthy value, polled; fails after `timeout` s, or early if `proc` ended."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.stdout.read()[-3000:] if proc.stdout else ''}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def kill_one(cluster: LocalCluster, name: str) -> int:
    procs = wait_for(lambda: cluster.processes(name), 60, f"a {name} process")
    os.kill(procs[0].pid, signal.SIGKILL)
    return procs[0].pid


def start_driver(cluster: LocalCluster, cfg: Path, *args: str) -> subprocess.Popen:
    """`winnow run cfg args` as a driver of this cluster, its output piped."""
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(cfg), *args], cwd=REPO,
                            env={**cluster.env, "RAY_ADDRESS": cluster.gcs_address}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out
