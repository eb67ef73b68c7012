"""JPEG decoders side by side: PIL (today's path, and with `draft`), simplejpeg and PyTurboJPEG, full and reduced.

    python bench/jpeg_decoders.py

Per image size (256, 512, 1024 px; 4:2:0, quality 90; smooth colour fields with mild noise), milliseconds per decode
to RGB (the best of 7 repeats of 30) at full scale and for a reader that needs >= 224 px and >= 64 px on the short
side (the largest 1/2^k reduction that keeps it). PyTurboJPEG is measured only where it imports and finds a
libjpeg-turbo it supports (PyTurboJPEG 1.x with Debian's libturbojpeg0, say); winnow needs neither: simplejpeg
bundles its libjpeg-turbo. Every decoder's pixels are compared with PIL's at the same scale. Last line:
RESULT jpeg_reduced_224_vs_pil_full_512=... (PIL's full decode time over winnow's reduced one, 512 px image).
"""

from __future__ import annotations

import io
import os
import sys
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import machine, result_line  # noqa: E402


def image(side: int, seed: int = 0) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    grid = Image.fromarray((rng.random((12, 12, 3)) * 255).astype("uint8")).resize((side, side), Image.BICUBIC)
    pix = np.asarray(grid, dtype=np.float32) + rng.normal(0, 4, (side, side, 3))
    buf = io.BytesIO()
    Image.fromarray(pix.clip(0, 255).astype("uint8")).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def decoders() -> dict:
    """name -> fn(data, need) -> RGB array (need None: full scale)."""
    import numpy as np
    from PIL import Image

    from pipeline.core.images import decode_image, decode_with_pil, jpeg_reduction

    def pil_draft(data, need):
        im = Image.open(io.BytesIO(data))
        if need:
            s = jpeg_reduction(*im.size, need)
            im.draft("RGB", (-(-im.width // s), -(-im.height // s)))
        return np.asarray(im.convert("RGB"))

    out = {"PIL (full, today's path)": lambda d, need: np.asarray(decode_with_pil(d)[1]),
           "PIL + draft": pil_draft,
           "winnow decode_image (simplejpeg)": lambda d, need: np.asarray(decode_image(d, min_size=need)[1])}
    try:
        from turbojpeg import TJPF_RGB, TurboJPEG

        tj = TurboJPEG()

        def turbo(data, need):
            w, h, _, _ = tj.decode_header(data)
            return tj.decode(data, pixel_format=TJPF_RGB, scaling_factor=(1, jpeg_reduction(w, h, need)))

        out["PyTurboJPEG"] = turbo
    except Exception as err:  # noqa: BLE001 - not installed, or no libjpeg-turbo it supports
        print(f"(PyTurboJPEG not measured: {type(err).__name__}: {str(err).splitlines()[0][:100]})")
    return out


def best_ms(fn, data: bytes, need: int | None) -> float:
    return min(timeit.repeat(lambda: fn(data, need), number=30, repeat=7)) / 30 * 1e3


def main() -> None:
    import numpy as np

    decs = decoders()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'image':>8} {'needs':>6}  " + "  ".join(f"{n[:24]:>24}" for n in decs) + "   (ms per decode)")
    ratio = None
    for side in (256, 512, 1024):
        data = image(side)
        for need in (None, 224, 64):
            ref = decs["PIL + draft"](data, need)
            cells = []
            for name, fn in decs.items():
                if name.startswith("PIL (full") and need:
                    cells.append("-")
                    continue
                got = fn(data, need)
                same = got.shape == ref.shape and np.array_equal(got, ref)
                ms = best_ms(fn, data, need)
                cells.append(f"{ms:.2f}{'' if same else ' (differs)'}")
                if side == 512 and need == 224 and name.startswith("winnow"):
                    ratio = best_ms(decs["PIL (full, today's path)"], data, None) / ms
            print(f"{side:>6}px {need or 'full':>6}  " + "  ".join(f"{c:>24}" for c in cells))
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print(result_line("jpeg_reduced_224_vs_pil_full_512", ratio, ">=", 1.0))


if __name__ == "__main__":
    main()
