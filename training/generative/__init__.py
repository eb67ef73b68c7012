"""Image generators as engine tasks (to come): diffusion families (rectified flow, EDM) and normalizing flows.

Each is a `training.engine.task.Task` subclass in its own module, like `training.contrastive.task`: it builds its
network, owns its loss (the loss object calls the network, as in EDM's `loss.py`), keeps its EMA weights through
`after_update`, saves them with `extra_state` / `load_extra_state`, and evaluates and exports with them.
"""
