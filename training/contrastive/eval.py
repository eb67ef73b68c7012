"""Zero-shot classification and image-text retrieval of a trained encoder.

Zero-shot follows CLIP: for each class, the normalised text embeddings of every prompt template are averaged and
renormalised into one classifier row; an image's class is its most similar row. Retrieval ranks the held-out
captions for each image (image->text) and the images for each caption (text->image).

    python -m training.contrastive.eval tiny-sigmoid-vit runs/demo/encoder/model.pt \
        --shards 'runs/demo/web/test/*.tar' --classnames runs/demo/web/test/classnames.json
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from pipeline.core.images import open_rgb
from pipeline.core.layout import join, read_json
from pipeline.core.sample import image_member, pick_caption
from pipeline.core.storage import local_if_url
from training.contrastive.config import EvalConfig, RetrievalConfig, ZeroShotConfig
from training.data import ErrorCounter, expand_shards, tar_samples

DEFAULT_TEMPLATES = ["a photo of a {}."]


def read_classnames(path: str) -> tuple[list[str], list[str]]:
    """`{"classnames": [...], "templates": [...]}` (templates optional) or a plain JSON list of names."""
    data = read_json(path)
    if isinstance(data, list):
        return data, DEFAULT_TEMPLATES
    return list(data["classnames"]), list(data.get("templates") or DEFAULT_TEMPLATES)


def shard_batches(pattern: str, preprocess, batch_size: int, limit: int | None) -> Iterator[tuple]:
    """(images (B, 3, H, W), labels (B,) or None, captions) from held-out shards; undecodable samples skipped."""
    rng = random.Random(0)
    images, labels, captions = [], [], []
    n = 0
    for sample in tar_samples(expand_shards(pattern), ErrorCounter()):
        try:
            image = preprocess(open_rgb(image_member(sample)[1]))
        except Exception:
            continue
        images.append(image)
        labels.append(int(sample["cls"]) if "cls" in sample else -1)
        captions.append(pick_caption(sample, rng) or "")
        n += 1
        if len(images) == batch_size or n == limit:
            yield torch.stack(images), torch.tensor(labels), captions
            images, labels, captions = [], [], []
        if n == limit:
            return
    if images:
        yield torch.stack(images), torch.tensor(labels), captions


def folder_batches(root: str, preprocess, batch_size: int, limit: int | None) -> Iterator[tuple]:
    """(images, labels, empty captions) from a torchvision ImageFolder tree; images decode through the one decoder
    (accepted formats, pixel cap), never torchvision's loader (which opens any format PIL knows, EPS included),
    and one that does not decode is skipped, as in `shard_batches`."""
    from torchvision.datasets import ImageFolder

    items = ImageFolder(root).samples  # (path, class index); listing only, nothing is opened
    if limit is not None and limit < len(items):
        items = [items[i] for i in torch.randperm(len(items), generator=torch.Generator().manual_seed(0))[:limit]]
    images, labels = [], []
    for path, label in items:
        try:
            with open(path, "rb") as f:
                images.append(preprocess(open_rgb(f.read())))
        except Exception:
            continue
        labels.append(label)
        if len(images) == batch_size:
            yield torch.stack(images), torch.tensor(labels), [""] * len(labels)
            images, labels = [], []
    if images:
        yield torch.stack(images), torch.tensor(labels), [""] * len(labels)


@torch.no_grad()
def encode_texts(clip, tokenizer, texts: list[str], device, batch_size: int = 256) -> torch.Tensor:
    out = [clip.encode_text(tokenizer(texts[i:i + batch_size]).to(device), normalize=True).float()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out)  # (N, D)


@torch.no_grad()
def zeroshot_classifier(clip, tokenizer, classnames: list[str], templates: list[str], device) -> torch.Tensor:
    rows = []
    for name in classnames:
        emb = encode_texts(clip, tokenizer, [t.format(name) for t in templates], device)  # (T, D)
        rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)  # (C, D)


@torch.no_grad()
def pair_scores(clip, tokenizer, preprocess, images: list, captions: list[str], device,
                batch_size: int = 256) -> torch.Tensor:
    """(N,) cosine similarity of image i and caption i (PIL images, preprocessed here): a filter's match score."""
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.stack([preprocess(im) for im in images[i:i + batch_size]]).to(device)  # (B, 3, H, W)
        img = clip.encode_image(x, normalize=True).float()  # (B, D)
        txt = clip.encode_text(tokenizer(captions[i:i + batch_size]).to(device), normalize=True).float()  # (B, D)
        out.append((img * txt).sum(dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0)


def zeroshot_metrics(logits: torch.Tensor, labels: torch.Tensor, classnames: list[str]) -> dict:
    """logits (N, C), labels (N,): top-1, top-5 and each class's recall (top-1 accuracy within the class)."""
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices  # (N, k)
    hit1 = topk[:, 0] == labels
    hit5 = (topk == labels[:, None]).any(dim=1)
    recall = {}
    for c, name in enumerate(classnames):
        mask = labels == c
        if mask.any():
            recall[name] = round(float(hit1[mask].float().mean()), 4)
    return {"top1": float(hit1.float().mean()), "top5": float(hit5.float().mean()),
            "mean_per_class_recall": sum(recall.values()) / max(len(recall), 1), "per_class_recall": recall,
            "samples": int(labels.numel()), "chance": 1.0 / len(classnames)}


def retrieval_metrics(image_feats: torch.Tensor, text_feats: torch.Tensor, ks=(1, 5, 10)) -> dict:
    """Pair i is (image i, caption i); recall@k = fraction whose partner ranks in the top k."""
    sim = image_feats @ text_feats.T  # (N, N)
    target = torch.arange(sim.shape[0])
    out = {"samples": int(sim.shape[0])}
    for direction, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        rank = (s > s[target, target][:, None]).sum(dim=1)  # how many beat the true partner
        for k in ks:
            out[f"{direction}_R@{k}"] = float((rank < k).float().mean())
    return out


class Evaluator:
    """Evaluates a model on the configured held-out sets; `word_targets` switches zero-shot to CatLIP's words."""

    def __init__(self, cfg: EvalConfig, preprocess, tokenizer, word_targets=None):
        self.cfg, self.preprocess, self.tokenizer, self.word_targets = cfg, preprocess, tokenizer, word_targets

    def batches(self, source: ZeroShotConfig | RetrievalConfig) -> Iterator[tuple]:
        if getattr(source, "image_folder", None):
            return folder_batches(source.image_folder, self.preprocess, self.cfg.batch_size, self.cfg.max_samples)
        return shard_batches(source.shards, self.preprocess, self.cfg.batch_size, self.cfg.max_samples)

    @torch.no_grad()
    def __call__(self, model, clip, device) -> dict:
        was_training = model.training
        model.eval()
        try:
            out = {}
            if self.cfg.zeroshot is not None:
                out["zeroshot"] = self.zeroshot(model, clip, device)
            if self.cfg.retrieval is not None and self.word_targets is None:
                out["retrieval"] = self.retrieval(clip, device)
            return out
        finally:
            model.train(was_training)

    def zeroshot(self, model, clip, device) -> dict:
        zs = self.cfg.zeroshot
        if zs.classnames:
            classnames, templates = read_classnames(zs.classnames)
        else:
            from torchvision.datasets import ImageFolder

            classnames, templates = ImageFolder(zs.image_folder).classes, DEFAULT_TEMPLATES
        templates = zs.templates or templates
        if self.word_targets is None:
            classifier = zeroshot_classifier(clip, self.tokenizer, classnames, templates, device)  # (C, D)
        else:
            classifier = self.word_targets.class_matrix(classnames).to(device)  # (C, V)
        logits, labels = [], []
        for images, y, _ in self.batches(zs):
            images = images.to(device)
            if self.word_targets is None:
                feats = clip.encode_image(images, normalize=True).float()  # (B, D)
            else:
                feats = model(images)["logits"].float().sigmoid()  # (B, V) word probabilities
            logits.append(feats @ classifier.T)  # (B, C)
            labels.append(y)
        return zeroshot_metrics(torch.cat(logits).cpu(), torch.cat(labels), classnames)

    def retrieval(self, clip, device) -> dict:
        image_feats, captions = [], []
        for images, _, texts in self.batches(self.cfg.retrieval):
            image_feats.append(clip.encode_image(images.to(device), normalize=True).float())
            captions.extend(texts)
        text_feats = encode_texts(clip, self.tokenizer, captions, device, self.cfg.batch_size)
        return retrieval_metrics(torch.cat(image_feats).cpu(), text_feats.cpu())


def flat_metrics(result: dict) -> dict:
    """`{"zeroshot": {"top1": ..}}` -> `{"zeroshot_top1": ..}` (numbers only), for the CSV and TensorBoard."""
    return {f"{group}_{k}": v for group, d in result.items() for k, v in d.items()
            if isinstance(v, float) and k != "chance"}


def run_eval(cfg: EvalConfig | dict, model: str, weights: str | None = None, device: str | None = None,
             out: str | None = None, catlip_dir: str | None = None) -> dict:
    """Evaluate open_clip model `model` with `weights` (a model.pt, an open_clip tag, or None for random init).

    This is what `winnow eval CONFIG` calls; returns (and with `out`, writes as JSON) the metrics. For a CatLIP
    run pass its output directory as `catlip_dir`: zero-shot then uses the word head and vocabulary saved there.
    """
    import open_clip

    from training.contrastive.models import CatLIPModel, check_model_name, embed_dim

    cfg = cfg if isinstance(cfg, EvalConfig) else EvalConfig.model_validate(cfg)
    name = check_model_name(model)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # open_clip reads weight files from the local disk: a remote model.pt is downloaded first
    with local_if_url(weights) as local_weights:
        clip, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=local_weights, device=device)
    net, words = clip, None
    if catlip_dir:
        from training.contrastive.vocab import WordTargets
        from training.engine.checkpoint import load_weights

        words = WordTargets(read_json(join(catlip_dir, "catlip_vocab.json"))["words"])
        net = CatLIPModel(clip, len(words.vocab), embed_dim(clip)).to(device)
        net.head.load_state_dict(load_weights(join(catlip_dir, "catlip_head.safetensors")))
    result = Evaluator(cfg, preprocess, open_clip.get_tokenizer(name), words)(net, clip, device)
    result = {"model": model, "weights": weights, **result}
    if out:
        from pipeline.core.layout import write_json_atomic

        write_json_atomic(out, result)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("weights", nargs="?")
    p.add_argument("--shards", help="held-out .tar pattern (with .cls labels for zero-shot)")
    p.add_argument("--classnames", help="classnames.json")
    p.add_argument("--image-folder", help="an ImageFolder root instead of shards")
    p.add_argument("--out")
    a = p.parse_args(argv)
    cfg = EvalConfig(
        zeroshot=ZeroShotConfig(shards=a.shards if not a.image_folder else None, image_folder=a.image_folder,
                                classnames=a.classnames) if (a.classnames or a.image_folder) else None,
        retrieval=RetrievalConfig(shards=a.shards) if a.shards else None)
    print(json.dumps(run_eval(cfg, a.model, a.weights, out=a.out), indent=1))


if __name__ == "__main__":
    main()
