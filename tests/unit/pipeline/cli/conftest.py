from demo_models import demo_models  # noqa: F401  (session fixture: the demo's models, tiny, trained by their stages)
