"""Do the generator's samples show the class, not just the colour? The train-diffusion stage's generator, trained as a
config builds it, on every world, judged by a classifier trained on the world's real images.

    python bench/generator_quality.py                                # diffusion_demo.yaml: 3 worlds x 3 seeds
    python bench/generator_quality.py --worlds fashion --seeds 1     # one quick run (needs `make fashion-data`)
    python bench/generator_quality.py --worlds fashion --set steps=1200 --set optim.lr=2e-3   # any key of the stage
    python bench/generator_quality.py --config configs/demo.yaml     # the demo's shorter generator block
    python bench/generator_quality.py --workdir W --reuse --guidance 1 3 5   # W's generators at other guidances

Per world (`shapes`, `objects`: "<colour> <shape>" classes, 30; `fashion`: Fashion-MNIST's ten classes of real grey
photos), the data of `bench/likelihood.py`: 3,000 labelled training images (fashion: photos of its train split)
written straight to shards, 600 held-out test images (fashion: its test split), and a tiny CLIP trained on the
training images (100 steps) whose frozen text tower conditions the generator. The generator is the config's
`generator` stage (`--set` overrides its keys) built by the stage's `make_task` and trained in-process on one torch
thread, once per seed (`seed` and `data.seed`). It then samples `--per-class` images per class prompt ("a {class}",
the stage's `eval.prompt`) with the stage's sampler and guidance; the j-th image of every class starts from the same
noise (seed 10,000 + j).

The judge is a small CNN trained (in torch, 1 thread) on `--judge-images` other real images of the world (fashion:
train-split photos in another seed's order, ~5 % of them also among the generator's; rendered worlds: another seed),
never on the test images: printed with its own accuracy on the
600 real test images (what a perfect generator would score) and chance. Samples take the real images' path to it
(8 bits, the generator's resolution). Scores per seed: class accuracy (fashion) or colour, shape and both (rendered
worlds), the Frechet distance in the judge's penultimate features (samples vs the test images, with two real halves
as the floor), and the prompt spread: pixel variance between prompts at one noise seed over the variance between
noise seeds at one prompt (0: the prompt does not reach the picture).
Last line: RESULT generator_class_accuracy_fashion=<mean over seeds> target>=0.5 (5x chance; without fashion, the
shape accuracy of the last world against 2x chance).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the CLIP helper lives with the tests

from bench.common import machine, require_world, result_line  # noqa: E402
from bench.likelihood import write_world  # noqa: E402

CONFIG = REPO / "configs" / "diffusion_demo.yaml"
STAGE_KEYS = {"kind", "input", "output", "encoder_from", "eval"}
FASHION_TARGET = 0.5


def generator_config(config: Path, stage: str, sets: list[str], encoder, classnames: str, seed: int):
    """The stage's training config as `resolve` builds it, in-process on one thread, trained on `seed`, with no
    evaluation of its own (this bench judges), its grid rows the classes."""
    from pipeline.pipeline_config import load_pipeline_config
    from training.generative.diffusion.config import DiffusionTrainConfig

    cfg = load_pipeline_config(config, [f"stages.{stage}.{s}" for s in sets]).stages[stage]
    body = cfg.model_dump(exclude=STAGE_KEYS)
    body |= {"seed": seed, "encoder": encoder.model_dump(), "checkpoint_every": cfg.steps,
             "log_every": max(1, min(50, cfg.steps // 4)),
             "scaling": {**body["scaling"], "num_workers": 0, "torch_threads": 1},
             "eval": {"classnames": classnames, "prompt": cfg.eval.prompt, "synthetic_test": False,
                      "likelihood": {"samples": 0}}}
    body["data"] |= {"seed": seed, "loader_workers": 1}
    body["sample"] |= {"grid_prompts": 10, "seeds_per_prompt": 4}
    return DiffusionTrainConfig.model_validate(body)


# --- the judge ----------------------------------------------------------------------------------------------------
def judge_net(classes: int):
    """A small CNN: 3 conv blocks (32, 64, 128 channels, BN, ReLU, stride 2 after the first), global pooling."""
    from torch import nn

    def block(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    return nn.Sequential(block(3, 32, 1), block(32, 32, 1), block(32, 64, 2), block(64, 64, 1), block(64, 128, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, classes))


def pixels(images: list, resolution: int):
    """PIL images -> (N, 3, S, S) in [-1, 1], the generator's crop."""
    import torch

    from training.generative.diffusion.codec import PixelTransform

    crop = PixelTransform(resolution)
    return torch.stack([crop(im) for im in images])


def train_judge(x, y, classes: int, epochs: int, seed: int = 0):
    """The judge trained on (x, y): AdamW 2e-3, cosine, batch 64, horizontal flips only where a flip keeps the class
    (fashion; a rendered world's shapes and positions flip freely too, so always)."""
    import torch

    torch.manual_seed(seed)
    net = judge_net(classes)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * ((len(x) + 63) // 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            xb = x[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            loss = torch.nn.functional.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


def judge_outputs(net, x) -> tuple:
    """(predicted class (N,), penultimate features (N, 128)) of images in [-1, 1]."""
    import torch

    with torch.no_grad():
        feats = torch.cat([net[:-1](x[i:i + 256]) for i in range(0, len(x), 256)])
        return net[-1](feats).argmax(1), feats


def eight_bit(x, resolution: int):
    """Generated (N, 3, S, S) in [-1, 1] through 8 bits and the crop, as the real images went."""
    from training.generative.diffusion.codec import to_pil

    return pixels(to_pil(x), resolution)


def prompt_spread(x, classes: int, per_class: int) -> float:
    """Variance between prompts at a fixed noise seed over the variance between seeds at a fixed prompt."""
    grid = x.view(classes, per_class, -1)  # (class, seed, pixels): the j-th of every class shares noise seed j
    between_prompts = grid.var(0).mean()
    between_seeds = grid.var(1).mean()
    return float(between_prompts / between_seeds)


# --- one world ----------------------------------------------------------------------------------------------------
def prepare_world(world: str, work: str, args) -> dict:
    """Shards, the conditioning CLIP and the judge of `world` (shared by its seeds)."""
    import torch
    from training_diffusion import ENCODER, train_clip

    from pipeline.synthetic.testset import labelled_samples, write_test_set
    from pipeline.synthetic.worlds import get_world
    from training.contrastive.eval import read_classnames
    from training.generative.config import EncoderRef
    from training.generative.evaluation import read_heldout

    t0 = time.perf_counter()
    root = os.path.join(work, world)
    shards, heldout, classnames = write_world(world, root, args.train_images, args.test_images)
    names = read_classnames(classnames)[0]
    w = get_world(world)
    judge_dir = os.path.join(root, "judge")  # other real images: fashion's train split, a rendered world's seed 2
    write_test_set(labelled_samples(2, args.judge_images, 48, 128, w, "train"), judge_dir, names, w.class_templates)
    res = args.resolution
    judge_real, test_real = (read_heldout(pattern, res, n) for pattern, n in
                             ((os.path.join(judge_dir, "*.tar"), args.judge_images), (heldout, args.test_images)))
    x_test, y_test = pixels(test_real.images, res), torch.tensor(test_real.labels)
    saved = os.path.join(judge_dir, f"judge-{res}px-{args.judge_images}-{args.judge_epochs}.pt")
    if os.path.exists(saved):  # a kept --workdir: the same judge, trained once
        judge = judge_net(len(names))
        judge.load_state_dict(torch.load(saved))
        judge.eval()
    else:
        judge = train_judge(pixels(judge_real.images, res), torch.tensor(judge_real.labels), len(names),
                            args.judge_epochs)
        torch.save(judge.state_dict(), saved)
    pred, feats = judge_outputs(judge, x_test)
    clip_dir = os.path.join(root, f"clip-{args.clip_steps}")
    weights = os.path.join(clip_dir, "model.pt")
    if not os.path.exists(weights):  # a kept --workdir: the same CLIP, trained once
        weights = train_clip(shards, clip_dir, args.clip_steps, seed=1)
    clip = EncoderRef(name=ENCODER, weights=weights, source="a tiny CLIP trained on the training images")
    from training.generative.evaluation import attribute_scores

    real = attribute_scores(pred, y_test, names)
    print(f"  {world}: judge on {len(y_test)} real test images: class {real['both']:.1%} (chance "
          f"{real['both_chance']:.1%}), colour {real['colour']:.1%}, shape {real['shape']:.1%}; "
          f"data + judge + CLIP {time.perf_counter() - t0:.0f} s", flush=True)
    return {"shards": shards, "classnames": classnames, "names": names, "clip": clip, "judge": judge,
            "real": real, "real_feats": feats, "root": root}


def run_seed(world: str, data: dict, seed: int, args) -> list[dict]:
    """Train the generator with `seed` (or, with --reuse, take the one a kept --workdir holds) and score its samples
    at each guidance scale: one dict per scale."""
    import torch

    from pipeline.core.config import config_hash
    from pipeline.stages.train_diffusion import make_task
    from training.engine import fit
    from training.generative.diffusion.generate import WEIGHTS, load_generator
    from training.generative.evaluation import attribute_scores, frechet_distance, gaussian_of

    torch.set_num_threads(1)
    cfg = generator_config(args.config, args.stage, args.sets, data["clip"], data["classnames"], seed)
    if cfg.data.resolution != args.resolution:
        raise SystemExit(f"the generator trains at {cfg.data.resolution} px; run with --resolution "
                         f"{cfg.data.resolution} so that the judge sees what it generates")
    trained_as = config_hash(cfg.model_dump(mode="json", exclude={"sample", "eval", "encoder"}))[:8]
    out = os.path.join(data["root"], f"generator-{trained_as}")  # --reuse: sampling keys may change, not training
    train_s, loss = float("nan"), float("nan")
    if not (args.reuse and os.path.exists(os.path.join(out, WEIGHTS))):
        shutil.rmtree(out, ignore_errors=True)  # a fresh run, never a resumed one
        t0 = time.perf_counter()
        loss = fit(make_task(cfg, data["shards"], "bench"), cfg, out)["metrics"].get("loss")
        train_s = time.perf_counter() - t0
    gen = load_generator(out, data["clip"])
    names, per = data["names"], args.per_class
    truth = torch.arange(len(names)).repeat_interleave(per)
    prompts = [cfg.eval.prompt.format(names[c]) for c in truth.tolist()]
    seeds = [10_000 + j for _ in names for j in range(per)]
    real = data["real_feats"]
    half = len(real) // 2
    floor = frechet_distance(*gaussian_of(real[:half]), *gaussian_of(real[half:2 * half]))
    rows = []
    for guidance in args.guidance or [cfg.sample.sampler.guidance]:
        sampler = cfg.sample.sampler.model_copy(update={"guidance": guidance})
        t0 = time.perf_counter()
        x = torch.cat([gen.images(prompts[i:i + 64], seeds[i:i + 64], sampler) for i in range(0, len(prompts), 64)])
        sample_s = time.perf_counter() - t0
        x = eight_bit(x, args.resolution)
        pred, feats = judge_outputs(data["judge"], x)
        rows.append({**attribute_scores(pred, truth, names), "guidance": guidance,
                     "fd": frechet_distance(*gaussian_of(feats), *gaussian_of(real)), "fd_floor": floor,
                     "spread": prompt_spread(x, len(names), per), "train_s": train_s, "sample_s": sample_s,
                     "loss": loss, "steps": cfg.steps, "out": out})
    return rows


def fmt(values: list[float], pct: bool = True) -> str:
    scale = 100 if pct else 1
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.1f}" if pct else f"{mean:.3f}"
    sd = statistics.stdev(values) * scale
    return f"{mean:.1f} ± {sd:.1f}" if pct else f"{mean:.3f} ± {sd:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=CONFIG, help="a pipeline config with a train-diffusion stage")
    ap.add_argument("--stage", default="generator", help="its train-diffusion stage")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of the stage (e.g. steps=1200, model.patch_size=2)")
    ap.add_argument("--worlds", nargs="+", default=["shapes", "objects", "fashion"],
                    choices=["shapes", "objects", "fashion"])
    ap.add_argument("--seeds", type=int, default=3, help="generator seeds 0..N-1 per world")
    ap.add_argument("--per-class", type=int, default=None, help="samples per class prompt (default: fashion 10, "
                                                                "rendered worlds 4)")
    ap.add_argument("--train-images", type=int, default=3000)
    ap.add_argument("--test-images", type=int, default=600)
    ap.add_argument("--judge-images", type=int, default=3000)
    ap.add_argument("--judge-epochs", type=int, default=8)
    ap.add_argument("--clip-steps", type=int, default=100)
    ap.add_argument("--resolution", type=int, default=None, help="default: the stage's data.resolution")
    ap.add_argument("--guidance", type=float, nargs="+", default=None,
                    help="classifier-free guidance scales to sample at (default: the stage's sampler's)")
    ap.add_argument("--reuse", action="store_true", help="with --workdir: score the generators it already holds "
                                                          "instead of training them again")
    ap.add_argument("--workdir", default=None, help="keep outputs here (default: a temp dir, removed)")
    args = ap.parse_args()
    args.sets = ["sample.grid_every=0", *args.sets]  # one grid, at the end
    for world in args.worlds:
        require_world(world)
    if args.resolution is None:
        from pipeline.pipeline_config import load_pipeline_config

        stage = load_pipeline_config(args.config, [f"stages.{args.stage}.{s}" for s in args.sets]).stages[args.stage]
        args.resolution = stage.data.resolution

    import torch

    torch.set_num_threads(1)
    work = args.workdir or tempfile.mkdtemp(prefix="bench-generator-")
    print(f"machine: {machine()}")
    print(f"{args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config} stage "
          f"{args.stage} {' '.join(args.sets) or '(as shipped)'}; {args.resolution} px; seeds 0..{args.seeds - 1}",
          flush=True)
    rows: dict[tuple[str, float], list[dict]] = {}
    try:
        for world in args.worlds:
            data = prepare_world(world, work, args)
            per = args.per_class or (10 if world == "fashion" else 4)
            args_w = argparse.Namespace(**{**vars(args), "per_class": per})
            for seed in range(args.seeds):
                for r in run_seed(world, data, seed, args_w):
                    rows.setdefault((world, r["guidance"]), []).append(r | {"real": data["real"]})
                    print(f"  {world:8s} seed {seed} guidance {r['guidance']:g}: class {r['both']:.1%} (chance "
                          f"{r['both_chance']:.1%}) colour {r['colour']:.1%} ({r['colour_chance']:.1%}) shape "
                          f"{r['shape']:.1%} ({r['shape_chance']:.1%})  FD {r['fd']:.3f} (real halves "
                          f"{r['fd_floor']:.3f})  prompt spread {r['spread']:.2f}  loss {r['loss']:.4f}  train "
                          f"{r['train_s']:.0f} s, sampling {r['sample_s']:.0f} s  grid in {r['out']}/samples",
                          flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print("\n| world | guidance | judge on real: class / colour / shape | class acc. (chance) | colour acc. (chance) "
          "| shape acc. (chance) | FD (real halves) | prompt spread | train s (0: reused) |")
    print("|---|---:|---|---|---|---|---|---|---:|")
    for (world, guidance), rs in rows.items():
        real, r0 = rs[0]["real"], rs[0]
        print(f"| {world} | {guidance:g} | {real['both']:.1%} / {real['colour']:.1%} / {real['shape']:.1%} | "
              f"{fmt([r['both'] for r in rs])} % ({r0['both_chance']:.1%}) | {fmt([r['colour'] for r in rs])} % "
              f"({r0['colour_chance']:.1%}) | {fmt([r['shape'] for r in rs])} % ({r0['shape_chance']:.1%}) | "
              f"{fmt([r['fd'] for r in rs], False)} ({r0['fd_floor']:.3f}) | {fmt([r['spread'] for r in rs], False)} "
              f"| {statistics.fmean([r['train_s'] for r in rs if r['train_s'] == r['train_s']] or [0]):.0f} |")
    # the RESULT: the config's own guidance (the first scale asked for)
    first = {world: rs for (world, guidance), rs in rows.items() if guidance == (args.guidance or [guidance])[0]}
    if "fashion" in first:
        print(result_line("generator_class_accuracy_fashion", statistics.fmean(r["both"] for r in first["fashion"]),
                          ">=", FASHION_TARGET))
    else:
        world = list(first)[-1]
        rs = first[world]
        print(result_line(f"generator_shape_accuracy_{world}", statistics.fmean(r["shape"] for r in rs), ">=",
                          round(2 * rs[0]["shape_chance"], 3)))

if __name__ == "__main__":
    main()
