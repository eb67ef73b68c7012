"""`winnow eval CONFIG [--stage NAME]`: evaluate what a config's stages trained.

Every stage whose kind can be evaluated (its module has `evaluate`; train-clip: zero-shot and retrieval of the
encoder) is evaluated from its final weights on its configured sets, or on the synthetic web's held-out set;
results go to the stage's output directory (`eval.json`) and a table is printed, one row per stage. A caption stage
is evaluated on what it wrote: distinct captions per images captioned and, on a synthetic web, per attribute how
often a caption names what its image shows against chance (`<input dataset>/captions_eval.json`).
"""

from __future__ import annotations

from typing import Any

from pipeline.core.config import ConfigError
from pipeline.core.tables import format_table
from pipeline.pipeline_config import PipelineConfig
from pipeline.stages import evaluable_kinds, stage_module
from pipeline.stages.context import StageContext


def evaluate_stage(cfg: PipelineConfig, only: str | None = None, config_path: str | None = None) -> dict[str, Any]:
    kinds = set(evaluable_kinds())
    names = [n for n, st in cfg.stages.items() if st.kind in kinds]
    if only is not None:
        if only not in names:
            raise ConfigError(f"{config_path or 'config'}: --stage {only!r} is not a stage of this config that can be "
                              f"evaluated (such stages: {', '.join(names) or 'none'})")
        names = [only]
    if not names:
        raise ConfigError(f"{config_path or 'config'}: no stage to evaluate (kinds that can be: "
                          f"{', '.join(sorted(kinds))})")
    results, rows = {}, []
    for name in names:
        module = stage_module(cfg.stages[name].kind)
        ctx = StageContext(pipeline=cfg, stage=name, config_path=config_path)
        res = results[name] = module.evaluate(ctx, cfg.stages[name])
        rows.append({"stage": name, **module.eval_row(cfg.stages[name], res)})
    header = list(dict.fromkeys(k for r in rows for k in r))
    print(format_table([[r.get(k, "-") for k in header] for r in rows], header=header))
    return results
