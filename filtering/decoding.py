"""Decoding strategies over a step function: greedy, nucleus sampling, beam search.

A stepper (`filtering.coca_kv.CocaKVDecoder`) has `start(image_tokens, max_positions) -> state`,
`step(state, tokens (R,)) -> logits (R, V)` and `state.select(rows)`. Rows of a batch advance together one token per
step; a row that emits EOS leaves the batch (its cache rows are dropped), so a batch costs what its captions need.

Lengths count caption tokens: what lies between the start token and EOS. `min_length` blocks EOS until that many
tokens are out; a caption that reaches `max_length` stops there without EOS (`finished=False`).

Logit processing follows Hugging Face's `generate` (what BLIP uses): repetition penalty over every token already
in the sequence, start token included (a logit is divided by the penalty when positive, multiplied when negative);
for nucleus sampling then temperature, then the top-p filter; beam search applies the processors to log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.core.ids import derived_seed


@dataclass(frozen=True)
class DecodeSettings:
    strategy: str  # greedy | nucleus | beam
    sot_id: int
    eos_id: int
    max_length: int
    min_length: int = 0
    top_p: float = 0.9
    temperature: float = 1.0
    repetition_penalty: float = 1.0
    num_beams: int = 3
    length_penalty: float = 1.0


@dataclass
class Sequence:
    tokens: list[int]  # caption tokens, without the start token and EOS
    logprob: float  # sum of the model's (unprocessed) log-probs of the tokens, EOS included when finished
    finished: bool  # ended with EOS (False: stopped at max_length)
    score: float | None = None  # beam search's ranking score: processed log-probs / length ** length_penalty


def row_generators(seed: int, keys: list[str]) -> list[torch.Generator]:
    """One CPU generator per row, seeded from (seed, key): a row's draws do not depend on its batch-mates."""
    return [torch.Generator().manual_seed(derived_seed(seed, key)) for key in keys]


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most probable tokens whose probability reaches `top_p` (at least one); others -inf.

    A token is kept when the probability of the tokens ranked above it is still below `top_p`. (R, V) -> (R, V).
    """
    if top_p >= 1.0:
        return logits
    probs = logits.softmax(dim=-1)
    vocab, k = probs.shape[-1], 256
    while True:
        # a trained model's nucleus is a few hundred tokens at most: sorting the top k is far cheaper than the
        # whole vocabulary; widen k until every row's top k holds top_p of its mass
        k = min(k, vocab)
        top, order = probs.topk(k, dim=-1) if k < vocab else probs.sort(dim=-1, descending=True)
        cum = top.cumsum(dim=-1)
        if k == vocab or bool((cum[:, -1] >= top_p).all()):
            break
        k *= 8
    keep_sorted = (cum - top) < top_p  # mass ranked above each token is still short of top_p
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


def repetition_penalty(scores: torch.Tensor, history: torch.Tensor, penalty: float) -> torch.Tensor:
    """Hugging Face's RepetitionPenaltyLogitsProcessor: (R, V) scores, (R, t) tokens so far."""
    if penalty == 1.0:
        return scores
    seen = scores.gather(1, history)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, history, seen)


def process(scores: torch.Tensor, history: torch.Tensor, generated: int, s: DecodeSettings) -> torch.Tensor:
    """Min-length EOS block and repetition penalty, on a copy."""
    scores = scores.clone()
    if generated < s.min_length:
        scores[:, s.eos_id] = float("-inf")
    return repetition_penalty(scores, history, s.repetition_penalty)


def sample_rows(probs: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row from (R, V) probabilities, row i drawn with generators[i] (inverse CDF of one uniform)."""
    u = torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in generators]).to(probs.device)
    cdf = probs.double().cumsum(dim=-1)  # (R, V)
    # right=True: the first token whose cdf exceeds the draw, so a zero-probability token is never picked
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)
    return idx[:, 0].clamp_max(probs.shape[-1] - 1)


def sample_sequences(stepper, image_tokens: torch.Tensor, s: DecodeSettings,
                     generators: list[torch.Generator] | None = None) -> list[Sequence]:
    """Greedy (s.strategy == "greedy") or nucleus sampling, one sequence per row of `image_tokens`."""
    if s.strategy == "nucleus" and (generators is None or len(generators) != image_tokens.shape[0]):
        raise ValueError("nucleus sampling needs one generator per row")
    rows, dev = image_tokens.shape[0], image_tokens.device
    state = stepper.start(image_tokens, s.max_length)
    tokens = torch.full((rows,), s.sot_id, dtype=torch.long, device=dev)
    history = tokens[:, None]  # (Ra, t+1) tokens fed so far, for the repetition penalty
    active = list(range(rows))  # original row of each state row
    out: list[list[int]] = [[] for _ in range(rows)]
    logprob = [0.0] * rows
    finished = [False] * rows
    for n in range(s.max_length):
        logits = stepper.step(state, tokens).float()  # (Ra, V)
        scores = process(logits, history, n, s)
        if s.strategy == "greedy":
            nxt = scores.argmax(dim=-1)
        else:
            probs = top_p_filter(scores / s.temperature, s.top_p).softmax(dim=-1)
            nxt = sample_rows(probs, [generators[r] for r in active])
        lp = logits.log_softmax(dim=-1).gather(1, nxt[:, None])[:, 0].tolist()
        eos = (nxt == s.eos_id).tolist()
        for i, (r, tok) in enumerate(zip(active, nxt.tolist(), strict=True)):
            logprob[r] += lp[i]
            if eos[i]:
                finished[r] = True
            else:
                out[r].append(tok)
        if n + 1 == s.max_length:
            break
        if any(eos):
            keep = [i for i, e in enumerate(eos) if not e]
            if not keep:
                break
            idx = torch.tensor(keep, device=dev)
            state, nxt, history = state.select(idx), nxt[idx], history[idx]
            active = [active[i] for i in keep]
        history = torch.cat([history, nxt[:, None]], dim=1)
        tokens = nxt
    return [Sequence(out[r], logprob[r], finished[r]) for r in range(rows)]


class _Hypotheses:
    """The best `k` finished captions of one image, by score."""

    def __init__(self, k: int, length_penalty: float):
        self.k, self.length_penalty, self.items = k, length_penalty, []

    def add(self, seq: Sequence, sum_score: float, length: int) -> None:
        seq.score = sum_score / (max(length, 1) ** self.length_penalty)
        self.items.append(seq)
        self.items.sort(key=lambda q: q.score, reverse=True)
        del self.items[self.k:]

    def done(self, best_running: float, length: int) -> bool:
        """Hugging Face's heuristic (early_stopping=False): the worst kept caption beats the best running beam."""
        if len(self.items) < self.k:
            return False
        return self.items[-1].score >= best_running / (max(length, 1) ** self.length_penalty)


def beam_search(stepper, image_tokens: torch.Tensor, s: DecodeSettings, num_return: int = 1) -> list[list[Sequence]]:
    """The `num_return` best of `s.num_beams` beams per image, best first."""
    n_img, k, dev = image_tokens.shape[0], s.num_beams, image_tokens.device
    state = stepper.start(image_tokens.repeat_interleave(k, dim=0), s.max_length)
    tokens = torch.full((n_img * k,), s.sot_id, dtype=torch.long, device=dev)
    history = tokens[:, None]  # (Ra*K, t+1)
    score = torch.full((n_img, k), -1e9, dtype=torch.float64, device=dev)
    score[:, 0] = 0.0  # one live beam per image at first, so the K beams do not start as copies
    raw = torch.zeros(n_img * k, dtype=torch.float64, device=dev)
    hyps = [_Hypotheses(k, s.length_penalty) for _ in range(n_img)]
    active = list(range(n_img))
    for n in range(s.max_length):
        logits = stepper.step(state, tokens).float()  # (Ra*K, V)
        logp = logits.log_softmax(dim=-1)
        vocab = logp.shape[-1]
        cand = process(logp, history, n, s).double() + score.view(-1, 1)
        top, idx = cand.view(len(active), k * vocab).topk(2 * k, dim=1)  # (Ra, 2K)
        rows = (idx // vocab + torch.arange(len(active), device=dev)[:, None] * k)  # state row of each parent
        toks = idx % vocab
        cand_raw = (raw[rows] + logp[rows, toks].double()).tolist()
        top, rows, toks = top.tolist(), rows.tolist(), toks.tolist()
        keep_rows, keep_toks, keep_score, keep_raw, still = [], [], [], [], []
        hist = history.tolist()
        for a, img in enumerate(active):
            beams = []
            for rank in range(2 * k):
                row, tok, sc = rows[a][rank], toks[a][rank], top[a][rank]
                if tok == s.eos_id:
                    if rank < k:  # an EOS ranked below the K best would not have been a beam
                        hyps[img].add(Sequence(hist[row][1:], cand_raw[a][rank], True), sc, n + 1)
                    continue
                beams.append((row, tok, sc, cand_raw[a][rank]))
                if len(beams) == k:
                    break
            if n + 1 == s.max_length:  # out of length: the running beams are candidates too
                for row, tok, sc, rw in beams:
                    hyps[img].add(Sequence([*hist[row][1:], tok], rw, False), sc, n + 1)
                continue
            if hyps[img].done(beams[0][2], n + 1):
                continue
            still.append(img)
            for row, tok, sc, rw in beams:
                keep_rows.append(row)
                keep_toks.append(tok)
                keep_score.append(sc)
                keep_raw.append(rw)
        if not still:
            break
        idx_rows = torch.tensor(keep_rows, device=dev)
        state = state.select(idx_rows)
        tokens = torch.tensor(keep_toks, device=dev)
        history = torch.cat([history[idx_rows], tokens[:, None]], dim=1)
        score = torch.tensor(keep_score, dtype=torch.float64, device=dev).view(len(still), k)
        raw = torch.tensor(keep_raw, dtype=torch.float64, device=dev)
        active = still
    return [h.items[:num_return] for h in hyps]
