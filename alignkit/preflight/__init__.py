"""Pre-flight: before DPO starts, score every training pair for squeezing risk, and report or act on it.

    python -m alignkit.preflight --config recipes/configs/default.yaml

Modules, one job each: `config` (the recipe fields), `scores` (pure formulas), `passes` (batched forward passes),
`onestep` (one-step prediction with alignkit.dynamics), `table` and `plot` (outputs), `run` (orchestration),
`recipe` (integration with recipes/extended_dpo.py), `cli`. docs/preflight.md explains the scores.

Nothing is imported here: `alignkit.config` imports `alignkit.preflight.config`, and importing the rest (which needs
`alignkit.config`) from this package's __init__ would make that a cycle.
"""
