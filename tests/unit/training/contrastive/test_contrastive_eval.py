"""Zero-shot and retrieval metrics on embeddings whose answers are known; CatLIP's vocabulary."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.contrastive.eval import retrieval_metrics, zeroshot_metrics
from training.contrastive.vocab import WordTargets, build_vocab


def test_zeroshot_top1_top5_and_per_class_recall():
    classnames = ["cat", "dog", "bird"]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.tensor([
        [3.0, 1, 0], [1, 3.0, 0],  # cat: right, wrong
        [0, 3.0, 1], [0, 3.0, 1],  # dog: right, right
        [3.0, 0, 1], [1, 3.0, 0],  # bird: wrong, wrong (second in neither)
    ])
    m = zeroshot_metrics(logits, labels, classnames)
    assert m["top1"] == 3 / 6
    assert m["top5"] == 1.0  # only 3 classes: top-5 covers all
    assert m["per_class_recall"] == {"cat": 0.5, "dog": 1.0, "bird": 0.0}
    assert m["mean_per_class_recall"] == 0.5
    assert m["chance"] == 1 / 3


def test_retrieval_recall_at_k_counts_the_true_partner_rank():
    torch.manual_seed(0)
    emb = F.normalize(torch.randn(20, 16), dim=-1)
    perfect = retrieval_metrics(emb, emb)
    assert perfect["image_to_text_R@1"] == perfect["text_to_image_R@1"] == 1.0
    # captions shifted by one: image i's caption is text i+1, so only its rank among others decides
    shifted = retrieval_metrics(emb, emb.roll(1, dims=0))
    assert shifted["image_to_text_R@1"] <= 0.1
    sim = emb @ emb.roll(1, dims=0).T
    rank = (sim > sim.diag()[:, None]).sum(1)
    assert shifted["image_to_text_R@5"] == float((rank < 5).float().mean())


def test_catlip_vocabulary_keeps_frequent_content_words():
    captions = ["a red circle", "a photo of a red square", "the blue circle", "a green triangle", "red"]
    vocab = build_vocab(captions, size=3, min_count=2)
    assert vocab == ["red", "circle"]  # by frequency (3, 2); 'a', 'photo', 'the' are stop words; others appear once
    targets = WordTargets(build_vocab(captions, size=10))
    t = targets("A photo of a RED circle")
    assert {targets.vocab[i] for i in t.nonzero().flatten().tolist()} == {"red", "circle"}
    rows = targets.class_matrix(["red circle", "unknown thing"])
    assert rows[0].sum() == 1.0 and rows[1].sum() == 0.0
