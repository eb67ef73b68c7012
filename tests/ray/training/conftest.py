from training_shapes import shapes  # noqa: F401  (session fixture: tiny shapes shards + held-out set)
