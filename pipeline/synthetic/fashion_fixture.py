"""Write the test suite's small Fashion-MNIST extract: a few hundred photos, balanced over the classes, as a .npz.

    python -m pipeline.synthetic.fashion_fixture tests/data/fashion_small.npz      # needs `make fashion-data`
    python -m pipeline.synthetic.fashion_fixture OUT.npz --train-per-class 30 --test-per-class 10 --source DIR

The suite runs where the package is not installed (CI's clean clone), so the fashion world's tests read this file
(`synthetic.fashion_data: tests/data/fashion_small.npz`). Train photos come from the package's train split, test
photos from its test split; a test photo whose pixels equal a chosen train photo's is skipped, so the extract's
splits share no image.
"""

from __future__ import annotations

import argparse

import numpy as np

from pipeline.synthetic.fashion import CLASSES, load, resolve_source


def extract(source: str, train_per_class: int, test_per_class: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Balanced picks from each split, in a seeded order; arrays named as `fashion.load` reads them."""
    data = load(source)
    rng = np.random.default_rng(seed)
    out = {}
    chosen_train: set[bytes] = set()
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        images, labels = data.images(split), data.labels(split)
        picked = []
        for label in range(len(CLASSES)):
            taken = 0
            for index in rng.permutation(np.flatnonzero(labels == label)):
                key = images[index].tobytes()
                if split == "test" and key in chosen_train:
                    continue  # Fashion-MNIST has a few photos in both splits
                if split == "train":
                    chosen_train.add(key)
                picked.append(int(index))
                taken += 1
                if taken == per_class:
                    break
        picked = np.asarray(picked)
        out[f"{split}_images"], out[f"{split}_labels"] = images[picked], labels[picked]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the .npz to write")
    ap.add_argument("--source", default=None, help="the IDX folder (default: $WINNOW_FASHION_DIR or the package's)")
    ap.add_argument("--train-per-class", type=int, default=30)
    ap.add_argument("--test-per-class", type=int, default=10)
    args = ap.parse_args()
    arrays = extract(resolve_source(args.source), args.train_per_class, args.test_per_class)
    np.savez_compressed(args.out, **arrays)
    print(f"{args.out}: {len(arrays['train_labels'])} train + {len(arrays['test_labels'])} test photos")


if __name__ == "__main__":
    main()
