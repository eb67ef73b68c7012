"""The `blip` backend: Hugging Face's BLIP captioning and image-text matching models, from local folders.

For users who have BLIP's weights (e.g. `Salesforce/blip-image-captioning-base` and `Salesforce/blip-itm-base-coco`,
saved with `save_pretrained`); winnow never downloads them. Needs `pip install 'winnow[blip]'` (transformers).

Pixels arrive as winnow's uint8 crops: `blip_preprocess_cfg(folder)` gives the read tasks BLIP's own resize (a
square squash, bicubic) and the actor normalises with the processor's mean/std, as `BlipImageProcessor` would.

Captions follow BLIP's `generate`: the prompt "a picture of " is fed and stripped; nucleus sampling uses top_p and
repetition penalty 1.1 (top_k off, so the nucleus alone decides); lengths count caption tokens after the prompt.
Seeded sampling here draws from torch's global generator seeded once per batch: the same batch gives the same
captions, but unlike the CoCa backend an image's captions depend on its batch-mates.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from filtering.captioner import CaptionerConfig, CaptionerError
from filtering.decoding import Sequence

BLIP_PROMPT = "a picture of "  # BLIP's captioning prompt (models/blip.py)
BLIP_DEFAULT_MAX_TOKENS = 16  # BLIP's max_length=20 less [DEC] and the prompt's three words


WHAT = {"blip_caption": ("BLIP captioning", "BlipForConditionalGeneration", "Salesforce/blip-image-captioning-base"),
        "blip_itm": ("BLIP ITM", "BlipForImageTextRetrieval", "Salesforce/blip-itm-base-coco")}


def check_blip(path: str, kind: str = "blip_caption", slot: str | None = None) -> None:
    """The folder is a BLIP folder of `kind` (`pipeline.core.model_files`: blip_caption or blip_itm) and transformers
    is installed; raises CaptionerError naming `slot` (the config key) and what the folder holds instead."""
    from pipeline.core.model_files import KINDS, folder_kind

    what, _, example = WHAT[kind]
    slot = slot or f"{what} weights"
    found_kind, found = folder_kind(path)
    if found_kind != kind:
        raise CaptionerError(f"{slot}: {path} is {found}, not {KINDS[kind]}. The blip backend loads a local copy "
                             f"of a Hugging Face BLIP model (save_pretrained of e.g. {example}); winnow downloads "
                             "nothing")
    if importlib.util.find_spec("transformers") is None:
        raise CaptionerError(f"{slot}: {path}: the blip backend needs transformers: pip install 'winnow[blip]'")


def blip_preprocess_cfg(path: str) -> dict:
    """winnow's preprocessing dict (see filtering.preprocess) for a BLIP folder's image processor, read without
    importing transformers (the stage's read tasks need only this)."""
    folder = Path(path)
    if (folder / "preprocessor_config.json").is_file():  # the hub's BLIP folders, transformers 4
        cfg = json.loads((folder / "preprocessor_config.json").read_text())
    elif (folder / "processor_config.json").is_file():  # transformers 5 nests it in the processor's config
        cfg = json.loads((folder / "processor_config.json").read_text())["image_processor"]
    else:
        raise CaptionerError(f"BLIP weights {path}: no preprocessor_config.json nor processor_config.json")
    size = cfg.get("size", {"height": 384, "width": 384})
    return {"size": [size["height"], size["width"]], "mode": "RGB", "mean": list(cfg["image_mean"]),
            "std": list(cfg["image_std"]), "interpolation": "bicubic", "resize_mode": "squash", "fill_color": 0}


class _BlipModel:
    def __init__(self, path: str, kind: str, device: str):
        check_blip(path, kind)  # before importing transformers: a missing folder is the likelier problem
        import torch
        import transformers

        what, model_class, _ = WHAT[kind]
        try:
            self.processor = transformers.BlipProcessor.from_pretrained(path, local_files_only=True)
            self.model = getattr(transformers, model_class).from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as err:
            raise CaptionerError(f"{what} weights {path}: cannot load a {model_class} from it: {err}") from None
        self.model = self.model.to(device).eval()
        pre = blip_preprocess_cfg(path)
        self.device, self.size = device, tuple(pre["size"])
        self.mean = torch.tensor(pre["mean"], device=device)
        self.std = torch.tensor(pre["std"], device=device)

    def pixel_values(self, images):
        import torch

        from filtering.preprocess import normalize_batch

        x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        if x.dtype != torch.uint8:
            return x.to(self.device)
        if tuple(x.shape[1:3]) != self.size:
            raise ValueError(f"BLIP expects {self.size} crops (blip_preprocess_cfg), got {tuple(x.shape[1:3])}")
        return normalize_batch(x.to(self.device), self.mean, self.std)


class BlipBackend(_BlipModel):
    """Captions from BlipForConditionalGeneration."""

    def __init__(self, path: str, cfg: CaptionerConfig, device: str):
        super().__init__(path, "blip_caption", device)
        self.cfg = cfg

    def _generate_kwargs(self) -> dict:
        cfg = self.cfg
        kw = {"max_new_tokens": cfg.max_length or BLIP_DEFAULT_MAX_TOKENS, "min_new_tokens": cfg.min_length,
              "repetition_penalty": cfg.penalty(), "num_return_sequences": cfg.num_captions}
        if cfg.strategy == "nucleus":
            kw.update(do_sample=True, top_p=cfg.top_p, top_k=0, temperature=cfg.temperature, num_beams=1)
        elif cfg.strategy == "beam":
            kw.update(do_sample=False, num_beams=cfg.num_beams, length_penalty=cfg.length_penalty)
        else:
            kw.update(do_sample=False, num_beams=1)
        return kw

    def generate(self, images, keys: list[str]) -> list[list[Sequence]]:
        import torch

        pixels = self.pixel_values(images)
        prompt = self.processor(text=[BLIP_PROMPT] * len(pixels), return_tensors="pt")
        with torch.inference_mode():
            torch.manual_seed(self.cfg.seed)
            out = self.model.generate(pixel_values=pixels, input_ids=prompt["input_ids"].to(self.device),
                                      attention_mask=prompt["attention_mask"].to(self.device),
                                      **self._generate_kwargs())
        start = prompt["input_ids"].shape[1] - 1  # generate drops the prompt's trailing [SEP]
        special = set(self.processor.tokenizer.all_special_ids)
        eos = self.model.config.text_config.sep_token_id
        n = self.cfg.num_captions
        seqs = []
        for row in out[:, start:].tolist():
            finished = eos in row
            toks = row[:row.index(eos)] if finished else row
            seqs.append(Sequence([t for t in toks if t not in special], float("nan"), finished))
        return [seqs[i * n:(i + 1) * n] for i in range(len(keys))]

    def decode(self, tokens: list[int]) -> str:
        return self.processor.decode(tokens, skip_special_tokens=True).strip()


class BlipITM:
    """BLIP's image-text matching head (CapFilt's filter): P(match) for (image, caption) pairs."""

    def __init__(self, path: str, device: str = "auto", max_text_tokens: int = 35):
        from filtering.dfn import pick_device

        self.blip = _BlipModel(path, "blip_itm", pick_device(device))
        self.max_text_tokens = max_text_tokens  # BLIP's text encoder was trained on 35 tokens

    def scores(self, images, captions: list[str]) -> np.ndarray:
        """(B,) float32 match probabilities for B crops and B captions."""
        import torch

        pixels = self.blip.pixel_values(images)
        text = self.blip.processor(text=list(captions), padding=True, truncation=True,
                                   max_length=self.max_text_tokens, return_tensors="pt")
        with torch.inference_mode():
            out = self.blip.model(pixel_values=pixels, input_ids=text["input_ids"].to(self.blip.device),
                                  attention_mask=text["attention_mask"].to(self.blip.device), use_itm_head=True)
        return out.itm_score.float().softmax(dim=-1)[:, 1].cpu().numpy()
