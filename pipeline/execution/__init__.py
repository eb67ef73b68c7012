"""How stages run their shard work, one way each, and one record of what they did.

- `shard_tasks`: a shard is one Ray task (`run_shards`: bounded tasks in flight, retries, done markers written by the
  task, checksum verification of done shards); `map_bounded` for other per-item Ray work (reshard's indexing).
- `actor_pool`: a model over shards with Ray Data (read tasks -> actor pool -> the driver writes a shard at a time).
- `record`: `StageRecord`, shared by both: pending shards, progress, counts per reason, retries, failures,
  checksums, the manifest section and the printed end-of-stage summary.
"""
