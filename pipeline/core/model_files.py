"""What a model folder holds, named from its files, for every slot that takes a user's own weights: the scorer, the
caption judge and the conditioning encoder (an open_clip folder, `local-dir:/path`), the captioner (a Hugging Face
BLIP `save_pretrained` folder), the latent space (a diffusers `AutoencoderKL` `save_pretrained` folder), and the
command line's checkpoints (a generator, a flow, a train-clip output). One function looks (`folder_kind`), one
refuses (`expect_folder`), so a folder of the wrong kind is always one error naming the slot and what was found:

    stages.generator.latent.vae: /models/blip is a Hugging Face BLIP captioning folder (config.json:
    BlipForConditionalGeneration, ...), not a diffusers AutoencoderKL folder (config.json with _class_name ...)

Only names and small JSON files are read: no model library is imported.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.core.config import ConfigError

LOCAL_DIR = "local-dir:"  # open_clip's scheme for a folder holding open_clip_config.json and its weights

# kind -> how an error names a folder of that kind
KINDS = {
    "open_clip": "an open_clip folder (open_clip_config.json and its weights, as open_clip writes them)",
    "blip_caption": "a Hugging Face BLIP captioning folder (config.json: BlipForConditionalGeneration, from "
                    "save_pretrained, with its processor)",
    "blip_itm": "a Hugging Face BLIP image-text matching folder (config.json: BlipForImageTextRetrieval, from "
                "save_pretrained, with its processor)",
    "autoencoder_kl": "a diffusers AutoencoderKL folder (config.json with _class_name AutoencoderKL, from "
                      "save_pretrained)",
    "generator": "a winnow generator (generator.json + generator.safetensors, from a train-diffusion stage)",
    "flow": "a winnow normalizing flow (flow.json + flow.safetensors, from a train-diffusion stage)",
    "encoder": "a winnow encoder (model_config.json + model.pt, from a train-clip stage)",
}


def _config(path: Path) -> dict:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def folder_kind(path: str) -> tuple[str | None, str]:
    """(kind, what an error calls it): a `KINDS` key, or None with a description of what is there instead."""
    folder = Path(path)
    if not folder.exists():
        return None, "missing (no such folder)"
    if not folder.is_dir():
        return None, "a file"
    names = {p.name for p in folder.iterdir()}
    for kind, marker in (("generator", "generator.json"), ("flow", "flow.json")):
        if marker in names:
            return kind, KINDS[kind]
    if "open_clip_config.json" in names:
        if not any(n.endswith((".safetensors", ".bin", ".pth")) for n in names):  # open_clip's own search
            return None, "an open_clip folder without weights (open_clip_config.json, no .safetensors/.bin/.pth)"
        return "open_clip", KINDS["open_clip"]
    if "model_config.json" in names and "model.pt" in names:
        return "encoder", KINDS["encoder"]
    if "config.json" in names:
        cfg = _config(folder / "config.json")
        architectures = [str(a) for a in cfg.get("architectures") or []]
        if cfg.get("_class_name") == "AutoencoderKL":
            return "autoencoder_kl", KINDS["autoencoder_kl"]
        if "BlipForConditionalGeneration" in architectures:
            return "blip_caption", KINDS["blip_caption"]
        if "BlipForImageTextRetrieval" in architectures:
            return "blip_itm", KINDS["blip_itm"]
        if cfg.get("_class_name"):
            return None, f"a diffusers folder (config.json: {cfg['_class_name']})"
        what = ", ".join(architectures) or f"model_type {cfg.get('model_type')!r}"
        return None, f"a Hugging Face folder (config.json: {what})"
    shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
    return None, f"no known model files ({shown or 'empty'})"


def expect_folder(path: str, want: str | tuple[str, ...], slot: str) -> str:
    """The kind of folder `path`, one of `want`; else a ConfigError naming `slot` (the config key or option that gave
    the path), what was found and what the slot takes."""
    wants = (want,) if isinstance(want, str) else want
    kind, found = folder_kind(path)
    if kind not in wants:
        expected = " or ".join(KINDS[w] for w in wants)
        raise ConfigError(f"{slot}: {path} is {found}, not {expected}")
    return kind


def local_dir(name: str | None) -> str | None:
    """The folder of an open_clip `local-dir:/path` model name (None for any other name)."""
    return name[len(LOCAL_DIR):] if name and name.startswith(LOCAL_DIR) else None


def check_open_clip_source(name: str, weights: str | None, slot: str, weights_key: str = "weights") -> None:
    """An open_clip model is a name with a weights file, or `local-dir:/folder` alone (an open_clip folder holds its
    own weights). A ConfigError names `slot`: a local-dir folder of another kind, weights given twice, or a folder
    given as the weights file."""
    folder = local_dir(name)
    if folder is not None:
        expect_folder(folder, "open_clip", f"{slot}.name")
        if weights:
            raise ConfigError(f"{slot}.{weights_key}: {name} holds its own weights; drop {weights_key} ({weights})")
        return
    if weights and "://" not in weights and Path(weights).is_dir():
        kind, found = folder_kind(weights)
        hint = f"name it as `name: {LOCAL_DIR}{weights}`, without {weights_key}" if kind == "open_clip" else \
            f"give a weights file, or `name: {LOCAL_DIR}<folder>` for {KINDS['open_clip']}"
        raise ConfigError(f"{slot}.{weights_key}: {weights} is {found}, not a weights file: {hint}")


def weights_digest(path: str) -> str:
    """sha256 hex of a weights file, or of a folder's files (each relative name and its digest, in name order)."""
    from pipeline.core.layout import fs_and_path, sha256_file

    if "://" not in path and Path(path).is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in Path(path).rglob("*") if q.is_file()):
            h.update(p.relative_to(path).as_posix().encode())
            h.update(sha256_file(*fs_and_path(str(p))).encode())
        return h.hexdigest()
    return sha256_file(*fs_and_path(path))
