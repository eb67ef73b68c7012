"""The base layer every part of winnow imports: config base and errors, storage and the dataset layout, sample ids,
and the sample format (one capped tar reader, one image decoder, one caption rule, one model-config registry).

Nothing here imports from the rest of `pipeline` (stages, runners, CLI, report), nor Ray: `filtering/` and
`training/` import this package and nothing else of `pipeline`.
"""
