"""`winnow sample`: prompts -> PNGs from a trained generator, through the code its stage samples with.

    winnow sample configs/demo.yaml --stage generator --prompt "a red circle" --n 8 --out samples/
    winnow sample --checkpoint runs/demo/generator --prompts prompts.txt --sampler heun --steps 18 --guidance 2 \\
        --out samples/

Writes `<prompt>_seed<k>.png` per image (the prompt made a file name), `grid.png` (a row per prompt, a column per
seed) and `samples.json` (the settings, every file with its prompt and seed). Image k of a prompt uses seed
`--seed + k`, and every random number of an image comes from its own seed, so a prompt and a seed give the same
image whatever else is sampled with it, in any batch (the same PNG bytes on CPU; a GPU's batched kernels may round
differently at another batch size).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pipeline.core.config import ConfigError
from pipeline.core.layout import atomic_write, write_json_atomic


def read_prompts(prompts: list[str], prompts_file: str | None) -> list[str]:
    """`--prompt`s, then the lines of `--prompts FILE` (blank lines and `#` comments skipped), in order."""
    out = list(prompts or [])
    if prompts_file:
        try:
            lines = Path(prompts_file).read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise ConfigError(f"--prompts {prompts_file}: {err.strerror or err}") from None
        out += [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not out:
        raise ConfigError("no prompt: give --prompt TEXT (repeatable) or --prompts FILE (one per line)")
    return out


def file_stem(prompt: str, taken: set[str]) -> str:
    """A file name for a prompt: lower-case words joined by '-', at most 60 characters; distinct prompts that would
    share one get '-2', '-3', ..."""
    stem = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:60].rstrip("-") or "prompt"
    name, k = stem, 1
    while name in taken:
        k += 1
        name = f"{stem}-{k}"
    taken.add(name)
    return name


def sample_to_folder(gen, prompts: list[str], n: int, seed: int, out: str, batch_size: int = 16) -> dict:
    """Sample `n` images per prompt (seeds seed .. seed + n - 1) in batches; write PNGs, grid.png and samples.json
    into `out`; return what samples.json holds."""
    import torch

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    seeds = list(range(seed, seed + n))
    jobs = [(p, s) for p in prompts for s in seeds]  # row-major: the grid's order
    taken: set[str] = set()
    stems = {p: file_stem(p, taken) for p in dict.fromkeys(prompts)}
    files, batches, nfe = [], [], None
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i:i + batch_size]
        images = gen.sample([p for p, _ in chunk], [s for _, s in chunk])  # (B, 3, S, S) in [-1, 1]
        nfe = gen.nfe if gen.nfe is not None else nfe
        batches.append(images.cpu())
        for (prompt, s), picture in zip(chunk, gen.pictures(images), strict=True):
            name = f"{stems[prompt]}_seed{s}.png"
            with atomic_write(str(folder / name), "wb") as f:
                picture.save(f, format="PNG")
            files.append({"prompt": prompt, "seed": s, "file": name})
    gen.save_grid(torch.cat(batches), prompts, str(folder / "grid.png"))
    record = {**gen.settings(), "prompts": prompts, "seeds": seeds, "batch_size": batch_size,
              "network_evaluations_per_image": nfe, "grid": "grid.png", "images": files}
    write_json_atomic(str(folder / "samples.json"), record)
    return record


def sample_command(args, pipeline=None) -> int:
    """`winnow sample`: arguments -> the generator (`pipeline.stages.models`) -> files; prints where they are."""
    import torch

    from pipeline.stages.models import Source, generator_from

    prompts = read_prompts(args.prompt, args.prompts)
    if args.n < 1:
        raise ConfigError(f"--n {args.n}: sample at least one image per prompt")
    sampler = {k: v for k, v in (("method", args.sampler), ("steps", args.steps), ("guidance", args.guidance))
               if v is not None}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = generator_from(Source(pipeline, args.stage, args.checkpoint, args.config), encoder=args.encoder,
                         sampler=sampler, temperature=args.temperature, device=device)
    record = sample_to_folder(gen, prompts, args.n, args.seed, args.out, args.batch_size)
    how = json.dumps(record.get("sampler") or {"temperature": record.get("temperature")})
    print(f"{len(record['images'])} images ({len(prompts)} prompts x {args.n} seeds from {args.seed}) in {args.out}: "
          f"grid.png, samples.json; {how}")
    return 0
