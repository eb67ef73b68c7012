"""The ingest stage's sources: data a user already holds, read into a winnow dataset (`pipeline.stages.ingest`).

    config.py       the source kinds' settings (webdataset, folder, parquet)
    samples.py      what every sample gets whatever its source: uid and its rule, verdict, a metadata row
    webdataset.py   img2dataset / DataComp tar shards (+ the parquet beside each), read in place or copied
    folder.py       an image folder captioned by `.txt` files or a table (CSV, JSONL, COCO captions JSON)
    parquet.py      parquet / arrow files with image bytes (a `datasets` export)
    shard.py        one source shard -> one dataset shard (the runner's work function)

Everything here reads through the base layer's one capped tar reader and one image decoder; nothing imports Ray.
"""
