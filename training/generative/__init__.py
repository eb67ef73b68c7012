"""Image generators as engine tasks, and what they share.

    config.py       the frozen encoders a generator is conditioned on or judged by, the sampler, the evaluation
    encoders.py     frozen open_clip towers: text conditioning cached per caption, image-text judges
    ema.py          the EMA of the weights (EDM's half-life in samples, ramp-up) that grids, evaluation and export use
    evaluation.py   Frechet distance, zero-shot attribute accuracy, alignment, held-out bits/dim: one list of metrics
    diffusion/      one noise-level algebra (flow, vp, ve, edm), preconditioning, time samplers, samplers, the loss,
                    the MMDiT text-to-image task (`diffusion.task.DiffusionTask`)
    flows/          normalizing flows (NICE, RealNVP, Glow): layers, multi-scale model, `flows.task.FlowTask`
    likelihood.py   probability-flow ODE log-likelihoods and bits/dim (every preprocessing log-det counted)

Each generator is a `training.engine.task.Task` subclass, like `training.contrastive.task`: it builds its network,
owns its loss (the loss object calls the network, as in EDM's `loss.py`), keeps its EMA weights through
`after_update`, saves them with `extra_state` / `load_extra_state`, and evaluates and exports with them.
"""
