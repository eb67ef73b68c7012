"""Log levels for processes winnow starts (Ray workers, Ray Train workers): winnow's progress stays readable."""

from __future__ import annotations

import logging


def quiet_worker_logs() -> None:
    """Worker start-up hook: keep workers' INFO chatter (open_clip's model loading, Ray Train's resource requests,
    and the placement-group cleaner that cannot reach the State API without a dashboard) out of the user's terminal.
    Warnings and errors still come through."""
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
