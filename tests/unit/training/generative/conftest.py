from training_diffusion import encoders, untrained  # noqa: F401  (session fixtures: frozen encoders as model.pt files)
