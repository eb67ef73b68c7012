"""The commands behind `winnow` (`pipeline/__main__.py` parses the arguments): run, status, eval, jobs."""
