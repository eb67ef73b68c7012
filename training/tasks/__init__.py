"""Tasks that are neither contrastive (`training.contrastive`) nor generative (`training.generative`): a regressor, a
classifier, a probe. One module per task, `training/tasks/<name>.py` (a sub-package of its own once it needs more
than one file), each a `training.engine.task.Task` subclass that the stage training it builds.

`tests/training_mean_colour.py` is the pattern, a whole task in one file (regress an image's mean colour, with EMA
weights): it reads shards through the one shard loader (`training.data`) and decodes images with the one decoder
(`pipeline.core.images`), as every task here must. It lives in tests/ only because its tests prove that nothing in
`training/` knows it exists.
"""
