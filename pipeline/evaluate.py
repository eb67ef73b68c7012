"""`winnow eval CONFIG [--stage NAME]`: zero-shot and retrieval evaluation of the encoders a config trained.

Every train-clip stage of the config (or the one named) is evaluated from its final weights on its configured
sets, or on the synthetic web's held-out set; results go to `<model dir>/eval.json` and a table is printed.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import ConfigError
from pipeline.pipeline_config import PipelineConfig
from pipeline.stages.base import StageContext
from pipeline.summary import format_table


def evaluate_stage(cfg: PipelineConfig, only: str | None = None, config_path: str | None = None) -> dict[str, Any]:
    from pipeline.stages.train_clip import evaluate

    names = [n for n, st in cfg.stages.items() if st.kind == "train-clip"]
    if only is not None:
        if only not in names:
            raise ConfigError(f"{config_path or 'config'}: --stage {only!r} is not a train-clip stage of this config "
                              f"(train-clip stages: {', '.join(names) or 'none'})")
        names = [only]
    if not names:
        raise ConfigError(f"{config_path or 'config'}: no train-clip stage to evaluate")
    results, rows = {}, []
    for name in names:
        ctx = StageContext(pipeline=cfg, stage=name, config_path=config_path)
        res = results[name] = evaluate(ctx, cfg.stages[name])
        zs, rt = res.get("zeroshot") or {}, res.get("retrieval") or {}
        rows.append([name, cfg.stages[name].model.name,
                     f"{zs['top1']:.1%}" if zs else "-", f"{zs['top5']:.1%}" if zs else "-",
                     f"{zs['chance']:.1%}" if zs else "-",
                     f"{rt['image_to_text_R@1']:.1%}" if rt else "-", f"{rt['text_to_image_R@1']:.1%}" if rt else "-"])
    print(format_table(rows, header=["stage", "model", "top-1", "top-5", "chance", "i->t R@1", "t->i R@1"]))
    return results
