"""Filter recipes: an ordered list of ops with parameters, read from YAML (`configs/filters/*.yaml`).

    description: what this recipe is for
    ops:
      - min_image_side: 64
      - max_aspect_ratio: 3.0
      - min_caption_words: 2
      - drop_generic_captions: true
      - dedup: {method: phash, max_hamming: 4}
      - dedup: {method: semantic, min_cosine: 0.95}
      - dfn_score: {top_fraction: 0.3}    # or {min: 0.25}; any numeric signal takes {min, max, top_fraction}

Problems are reported before any work with the recipe file, the op's position and name, and what is known: an
unknown op lists the ops and numeric signals; an op whose signal the score stage did not compute lists the
signals that were computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from pydantic import ValidationError

from filtering.ops import NAMED_OPS, SCALAR_PARAMS, Op, ScoreThreshold, ThresholdParams
from filtering.signals import signals_schema
from pipeline.core.config import ConfigError, format_validation_error, load_yaml
from pipeline.core.paths import RECIPES_DIR

RECIPE_DIR = RECIPES_DIR
# Numeric signals the score stage can compute: usable as `<signal>: {min|max|top_fraction}`.
NUMERIC_SIGNALS = sorted(f.name for f in signals_schema(with_model=True)
                         if pa.types.is_integer(f.type) or pa.types.is_floating(f.type))


class RecipeError(ConfigError):
    """A recipe problem, phrased for the user: file, op, what is known."""


@dataclass
class Recipe:
    name: str
    source: str
    ops: list[Op]
    description: str = ""
    raw: list = field(default_factory=list)

    def requires(self) -> set[str]:
        return set().union(*(op.requires() for op in self.ops)) if self.ops else set()

    def check(self, signals: set[str], hint: str = "") -> None:
        """Raise RecipeError when an op reads a signal that was not computed."""
        for i, op in enumerate(self.ops):
            missing = sorted(op.requires() - signals)
            if missing:
                what = "image embeddings (score with a model)" if missing == ["embedding"] else \
                    ", ".join(repr(m) for m in missing)
                raise RecipeError(
                    f"{self.source}: ops[{i}] {op.name}: needs {what}, which the score stage did not compute"
                    f"{hint}; computed signals: {', '.join(sorted(signals))}")


def known_ops_text(named: dict | None = None) -> str:
    """The ops a recipe may name, each once: the named ops, then the numeric signals no named op replaces."""
    named = NAMED_OPS if named is None else named
    signals = [s for s in NUMERIC_SIGNALS if s not in named]
    return (f"known ops: {', '.join(named)}; numeric signals as `<signal>: {{min|max|top_fraction}}`: "
            f"{', '.join(signals)}")


def _scalar(name: str, value, where: str):
    kind, low = SCALAR_PARAMS[name]
    if kind is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: expected true or false (got {value!r})")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and int(value) != value):
        raise RecipeError(f"{where}: expected {'an integer' if kind is int else 'a number'} (got {value!r})")
    if value < low:
        raise RecipeError(f"{where}: expected a value >= {low} (got {value!r})")
    return kind(value)


def parse_op(item, source: str, index: int) -> Op:
    where = f"{source}: ops[{index}]"
    if not isinstance(item, dict) or len(item) != 1:
        raise RecipeError(f"{where}: expected one `op: parameters` mapping such as `- min_image_side: 64` "
                          f"(got {item!r})")
    (name, params), = item.items()
    where = f"{where} {name}"
    cls = NAMED_OPS.get(name)
    if cls is not None and cls.params_model is None:
        return cls(_scalar(name, params, where))
    model = cls.params_model if cls is not None else ThresholdParams
    if cls is None and name not in NUMERIC_SIGNALS:
        raise RecipeError(f"{where}: unknown op; {known_ops_text()}")
    if not isinstance(params, dict):
        raise RecipeError(f"{where}: expected a mapping of parameters ({', '.join(model.model_fields)}), "
                          f"got {params!r}")
    try:
        # an op naming a file (uids) finds it beside the recipe too
        parsed = model.model_validate(params, context={"recipe_dir": Path(source).parent})
    except ValidationError as err:
        msg = format_validation_error(f"{source}: ops[{index}]", err, prefix=(name,))
        if any(e["type"] == "extra_forbidden" for e in err.errors()):
            msg += f" ({name} accepts: {', '.join(model.model_fields)})"
        raise RecipeError(msg) from None
    return cls(parsed) if cls is not None else ScoreThreshold(name, parsed)


def parse_recipe(data: dict, source: str, name: str) -> Recipe:
    unknown = sorted(set(data) - {"ops", "description"})
    if unknown:
        raise RecipeError(f"{source}: unknown key(s) {', '.join(unknown)}; a recipe has `ops:` (and `description:`)")
    ops = data.get("ops")
    # An explicit `ops: []` is the `none` recipe (keep every decodable sample: the raw-pool baseline); a missing
    # or null `ops` is more likely a typo than a wish to keep everything.
    if not isinstance(ops, list):
        raise RecipeError(f"{source}: ops: expected a list of ops, e.g. `- min_image_side: 64` (`ops: []` keeps "
                          "every sample)")
    return Recipe(name=name, source=source, ops=[parse_op(item, source, i) for i, item in enumerate(ops)],
                  description=str(data.get("description") or ""), raw=ops)


def resolve_recipe(recipe: str, base_dir: str | Path | None = None) -> Path:
    """A recipe name (`basic`) or path (`my/recipe.yaml`) -> its file; names are looked up in configs/filters/."""
    p = Path(recipe)
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, *([Path(base_dir) / p] if base_dir else [])]
    if p.suffix not in (".yaml", ".yml") and "/" not in recipe:
        candidates.append(RECIPE_DIR / f"{recipe}.yaml")
    for c in candidates:
        if c.is_file():
            return c
    known = sorted(q.stem for q in RECIPE_DIR.glob("*.yaml"))
    raise RecipeError(f"recipe {recipe!r}: no such file (looked in {', '.join(str(c) for c in candidates)}); "
                      f"recipes in configs/filters: {', '.join(known)}")


def load_recipe(recipe: str, base_dir: str | Path | None = None) -> Recipe:
    path = resolve_recipe(recipe, base_dir)
    return parse_recipe(load_yaml(path), str(path), path.stem)
