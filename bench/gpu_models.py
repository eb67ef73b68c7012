"""bench/gpu.py's model parts: the captioner, diffusion training and sampling, the ODE bits/dim; and what the parts
share (the steady-state rate of an engine run, a device sync). Run through `python bench/gpu.py`."""

from __future__ import annotations

import csv
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from bench.gpu import Run


def steady_rate(metrics_csv: str) -> float:
    """Mean samples/s of the engine's log windows after the first (start-up and warm-up)."""
    with open(metrics_csv) as f:
        rates = [float(r["samples_per_s"]) for r in csv.DictReader(f) if r.get("samples_per_s")]
    return sum(rates[1:]) / len(rates[1:]) if len(rates) > 1 else rates[0]


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()



# --- caption -------------------------------------------------------------------------------------------------------


def coca_weights(name: str, path: Path) -> str:
    import open_clip
    import torch
    from safetensors.torch import save_file

    from pipeline.core.model_configs import register_model_configs

    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    torch.nn.init.normal_(model.text_decoder.text_projection, std=model.text_decoder.width ** -0.5)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


def prefix_greedy(model, images, length: int, sot: int = 49406):
    """What `CoCa.generate` does, without its transformers dependency: the whole prefix through the model at every
    step (no cache), greedy, EOS never chosen (fixed length)."""
    import torch

    latent, embs = model._encode_image(images)
    seq = torch.full((len(images), 1), sot, dtype=torch.long, device=images.device)
    for _ in range(length):
        logits = model(images, seq, image_latent=latent, image_embs=embs, output_labels=False)["logits"][:, -1]
        logits[:, 49407] = float("-inf")
        seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    return seq


def caption(run: Run) -> dict:
    import open_clip
    import torch
    from safetensors.torch import load_file

    from filtering.captioner import Captioner

    name = run.size("coca_ViT-B-32", "tiny-coca")
    weights = coca_weights(name, run.work / "coca.safetensors")
    n, batch, length = run.size(256, 4), run.size(64, 2), run.size(30, 6)
    size = run.size(224, 32)
    images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0)).to(run.device)
    cap = Captioner({"name": name, "weights": weights}, {"strategy": "greedy", "min_length": length,
                                                         "max_length": length, "batch_size": batch,
                                                         "device": run.device})
    cap.generate(images[:batch])  # warm-up (kernels, allocator)
    sync(run.device)
    t0 = time.perf_counter()
    ours_tokens = [s[0].tokens for s in cap.generate(images)]
    sync(run.device)
    ours = n / (time.perf_counter() - t0)

    model = open_clip.create_model(name)
    model.load_state_dict(load_file(weights))
    model = model.to(run.device).eval()
    kw = dict(generation_type="top_k", top_k=1, seq_len=length + 2, min_seq_len=length + 1,
              fixed_output_length=True)
    with torch.no_grad():
        try:
            model.generate(images[:batch], **kw)
            peer_name, peer = "open_clip CoCa.generate", lambda x: model.generate(x, **kw)
        except Exception as err:  # noqa: BLE001  (open_clip disables generate beside a newer transformers)
            print(f"  open_clip generate unavailable ({type(err).__name__}: {str(err)[:80]}); the peer is its loop")
            peer_name, peer = "full-prefix greedy loop", lambda x: prefix_greedy(model, x, length)
        peer(images[:batch])
        sync(run.device)
        t0 = time.perf_counter()
        for i in range(0, n, batch):
            peer(images[i:i + batch])
        sync(run.device)
        theirs = n / (time.perf_counter() - t0)
        check = prefix_greedy(model, images[:2], length)[:, 1:].tolist()  # the cache must not change a token
    return {"winnow captions/s": ours, f"{peer_name} captions/s": theirs, "ratio": ours / theirs,
            "first tokens agree": check == ours_tokens[:2], "caption tokens": length}


# --- diffusion and likelihood ---------------------------------------------------------------------------------------


def encoder_ref(run: Run):
    """A random-weight CLIP text tower as a train-clip stage leaves it (the conditioning's cost, not its quality)."""
    import open_clip
    import torch

    from pipeline.core.model_configs import register_model_configs
    from training.engine.checkpoint import save_weights
    from training.generative.config import EncoderRef

    register_model_configs()
    name = run.size("ViT-B-32", "tiny-clip-rn")
    torch.manual_seed(0)
    path = str(run.work / "encoder.pt")
    save_weights(path, open_clip.create_model(name))
    return EncoderRef(name=name, weights=path, source="random weights (bench)")


def diffusion_config(run: Run, encoder, heldout: str):
    from training.generative.diffusion.config import DiffusionTrainConfig

    model = run.size({"layers": 12, "heads": 6, "head_dim": 64, "patch_size": 2},
                     {"layers": 1, "heads": 2, "head_dim": 16, "patch_size": 2})
    return DiffusionTrainConfig.model_validate({
        "steps": run.steps, "log_every": max(2, run.steps // 5), "checkpoint_every": run.steps, "model": model,
        "precision": "bf16", "optim": {"lr": 1e-4, "warmup_steps": 10}, "encoder": encoder.model_dump(),
        "data": {"resolution": run.size(32, 8), "batch_size": run.size(256, 8), "loader_workers": run.size(8, 1),
                 "shuffle_buffer": run.size(2000, 64)},
        "sample": {"sampler": {"method": "euler", "steps": 4, "guidance": 1.0}, "prompts": ["a red circle"],
                   "seeds_per_prompt": 1},
        "eval": {"heldout": heldout, "synthetic_test": False, "likelihood": {"samples": 0}},
        "scaling": {"num_workers": 0}})


def bare_training_rate(task, steps: int, device: str) -> float:
    """The same network, loss and optimizer in a plain loop over batches already on the device."""
    import torch

    net, objective = task.net.to(device).train(), task.objective
    sc = task.cfg.scaling
    threads = torch.get_num_threads()
    torch.set_num_threads(sc.torch_threads or max(1, int(sc.cpus_per_worker)))  # the engine's count: like for like
    batches, stream = [], task.batches(0, 1, seed=1)
    for i, b in enumerate(stream):
        batches.append({k: v.to(device) for k, v in b.items() if torch.is_tensor(v) and k != "skipped"})
        if i == 3:
            break
    stream.close()  # its loader process would go on decoding beside the timed loop
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.99))
    amp = torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    t0 = None
    for step in range(steps):
        if step == 2:  # warm-up left out
            sync(device)
            t0 = time.perf_counter()
        b = batches[step % len(batches)]
        null = torch.rand(len(b["x0"]), device=device) < 0.1
        with amp:
            loss = objective(net, b["x0"], (b["tokens"], b["pooled"], null))[0].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    sync(device)
    rate = (steps - 2) * len(batches[0]["x0"]) / (time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return rate


def sampling_rates(task, device: str, images: int, steps: int) -> tuple[float, float]:
    """(winnow's generator, a bare Euler loop) in network evaluations x images per second, CFG off."""
    import torch

    from training.generative.config import SamplerConfig

    gen, prompts = task.generator, ["a red circle"] * images
    cfg = SamplerConfig(method="euler", steps=steps, guidance=1.0)
    amp = torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    with amp:
        gen(prompts[:2], [0, 1], cfg)
        sync(device)
        t0 = time.perf_counter()
        _, nfe = gen(prompts, list(range(images)), cfg)
        sync(device)
        ours = nfe * images / (time.perf_counter() - t0)
    tokens, pooled = (t.to(device) for t in gen.conditioner(prompts))
    cond = (tokens, pooled, torch.zeros(images, device=device))
    gen.net.eval()
    den = gen.denoiser  # the network with its preconditioning, nothing else
    sigmas = torch.linspace(den.family.sigma_max, den.family.sigma_min, steps).tolist() + [0.0]
    with torch.no_grad(), amp:
        x = torch.randn(images, gen.codec.channels, gen.codec.size, gen.codec.size, device=device) * sigmas[0]
        sync(device)
        t0 = time.perf_counter()
        for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
            d = den(x, torch.full((images,), s, device=device), cond)
            x = x + (s_next - s) * (x - d) / s
        sync(device)
        bare = steps * images / (time.perf_counter() - t0)
    return ours, bare


def diffusion_task(run: Run):
    from training_shapes import make_pool

    from training.engine import fit
    from training.generative.diffusion.task import DiffusionTask

    if getattr(run, "_diffusion", None) is None:
        shards = make_pool(str(run.work), "diffusion_pool", shards=run.size(8, 2), per_shard=run.size(1024, 64))
        heldout = make_pool(str(run.work), "diffusion_test", shards=1, per_shard=64, seed=1)[0]
        cfg = diffusion_config(run, encoder_ref(run), heldout)
        task = DiffusionTask(cfg, shards)
        fit(task, cfg, str(run.work / "diffusion"))
        run._diffusion = (task, cfg)
    return run._diffusion


def diffusion(run: Run) -> dict:
    task, cfg = diffusion_task(run)
    ours = steady_rate(str(run.work / "diffusion" / "metrics.csv"))
    bare = bare_training_rate(task, run.steps, run.device)
    sample_ours, sample_bare = sampling_rates(task, run.device, images=run.size(256, 4), steps=run.size(32, 3))
    return {"winnow train samples/s": ours, "bare loop train samples/s": bare, "train ratio": ours / bare,
            "winnow sampling NFE x images/s": sample_ours, "bare Euler NFE x images/s": sample_bare,
            "sampling ratio": sample_ours / sample_bare}


def likelihood(run: Run) -> dict:
    from training.generative.config import LikelihoodConfig
    from training.generative.evaluation import EvalInputs
    from training.generative.evaluation import likelihood as heldout_likelihood

    task, cfg = diffusion_task(run)
    n = run.size(32, 2)
    out = {}
    for device in dict.fromkeys([run.device, "cpu"]):  # the run's device, then the CPU on the first images
        images = n if device == run.device else min(n, 4)
        lk = LikelihoodConfig(samples=images, batch_size=images, seed=0)
        ev = cfg.eval.model_copy(update={"likelihood": lk})
        gen = task.generator
        gen.net.to(device)
        gen.conditioner.clip.to(device)
        gen.device = gen.conditioner.device = device
        res = heldout_likelihood(EvalInputs(generate=None, cfg=ev, resolution=cfg.data.resolution, device=device,
                                            density=gen.density(lk)))
        out[f"{device} bits/dim ({images} images)"] = res["bits_per_dim"]
        out[f"{device} seconds per image"] = res["seconds"] / images
    return out
