"""The ingest stage's config and planning: sources that cannot work fail before any stage runs, naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import ConfigError
from pipeline.pipeline_config import load_pipeline_config, parse_pipeline_config
from pipeline.stages import ingest
from pipeline.stages.context import StageContext

REPO = Path(__file__).resolve().parents[4]


def ctx_for(tmp_path: Path, source: dict, **stage):
    pc = parse_pipeline_config({"root": str(tmp_path / "root"),
                                "stages": {"ingest": {"output": "pool", "source": source, **stage}}}, "c.yaml")
    return StageContext(pipeline=pc, stage="ingest", config_path="c.yaml"), pc.stages["ingest"]


@pytest.mark.parametrize("stage, expect", [
    ({"source": {"kind": "folder", "path": "x"}, "copy": False}, "a folder source has no tars to read in place"),
    ({"source": {"kind": "webdataset", "shards": "x/*.tar"}, "input": "pool"}, "ingest reads `source:`"),
    ({"source": {"kind": "zip", "path": "x"}}, "stages.ingest.source: "),
    ({"source": {"kind": "webdataset", "shard": "x/*.tar"}}, "stages.ingest.source.webdataset.shard: unknown key"),
])
def test_bad_ingest_configs_name_the_key(tmp_path, stage, expect):
    with pytest.raises(ConfigError, match="c.yaml") as err:
        parse_pipeline_config({"root": str(tmp_path), "stages": {"ingest": stage}}, "c.yaml")
    assert expect in str(err.value)


def test_the_example_config_reads_a_datacomp_pool_in_place():
    st = load_pipeline_config(REPO / "configs" / "ingest_example.yaml").stages["ingest"]
    assert st.source.kind == "webdataset" and not st.copies and st.output_dataset("ingest") == "pool"


def test_sources_that_name_nothing_or_lack_a_column_fail_in_preflight(tmp_path):
    with pytest.raises(ConfigError, match=r"c.yaml: stages.ingest.source.shards: no file matches"):
        ingest.preflight(*ctx_for(tmp_path, {"kind": "webdataset", "shards": str(tmp_path / "{0..3}.tar")}))
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(b"\xff\xd8\xff")
    table = tmp_path / "caps.csv"
    table.write_text("name,text\na.jpg,a cat\n")
    with pytest.raises(ConfigError, match=r"caps.csv has no column 'file_name' \(its columns: name, text\)"):
        ingest.preflight(*ctx_for(tmp_path, {"kind": "folder", "path": str(tmp_path / "imgs"),
                                             "captions": str(table)}))
    coco = tmp_path / "caps.json"
    coco.write_text(json.dumps({"images": []}))
    with pytest.raises(ConfigError, match="without `images` and `annotations`"):
        ingest.preflight(*ctx_for(tmp_path, {"kind": "folder", "path": str(tmp_path / "imgs"), "captions": str(coco)}))
    pq.write_table(pa.table({"img": [b"x"], "caption": ["a"]}), tmp_path / "d.parquet")
    with pytest.raises(ConfigError, match=r"source.image_col: .*d.parquet has no column 'image' \(its columns: img"):
        ingest.preflight(*ctx_for(tmp_path, {"kind": "parquet", "files": str(tmp_path / "*.parquet")}))
