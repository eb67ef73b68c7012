"""The one place that starts or connects Ray.

Embedded local Ray by default (`address="local"`, CPUs and object store from config); a cluster when the config's
`ray.address` or the `RAY_ADDRESS` environment variable names one. Inside a Ray job (`winnow submit`) the driver
runs on the cluster and `RAY_ADDRESS` is set by Ray, so the same code attaches to the cluster it was submitted to.
"""

from __future__ import annotations

import logging
import os

from pydantic import Field

from pipeline.core.config import StrictModel

log = logging.getLogger(__name__)


class RayConfig(StrictModel):
    address: str | None = Field(None, description="Ray cluster address (ray://, host:port, 'auto'); None = embedded")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded Ray (default: all cores)")
    num_gpus: int | None = Field(None, ge=0, description="GPUs of the embedded Ray (default: detected)")
    object_store_mb: int = Field(1024, ge=64, description="object store size of the embedded Ray, MiB")
    include_dashboard: bool = False
    namespace: str = "winnow"


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
        ray.init(address=address, namespace=cfg.namespace, log_to_driver=True, runtime_env=runtime_env)
    else:
        ray.init(
            address="local",
            num_cpus=cfg.num_cpus,
            num_gpus=cfg.num_gpus,
            object_store_memory=cfg.object_store_mb * 1024 * 1024,
            include_dashboard=cfg.include_dashboard,
            namespace=cfg.namespace,
            logging_level=logging.WARNING,
            runtime_env=runtime_env,
        )
    info = describe_cluster()
    log.info("ray: %s", info)
    return info


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
