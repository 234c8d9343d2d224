"""alignkit: squeezing-aware preference training (extended SFT -> DPO/IPO) with probes of the learning dynamics.

What a user imports (docs/api.md has one example of each; each object's docstring shows its use):

    from alignkit import SqueezingCallback          # the squeezing monitor in any TRL script: callbacks=[...]
    from alignkit import RecipeConfig, parse_recipe_config, run_recipe   # extended SFT -> DPO/IPO, one call
    from alignkit import decompose                  # the A·K·G terms of one update step (learning dynamics)
    from alignkit import JudgeConfig, evaluate_win_rate   # judged win rate of one model against another
    from alignkit import run_preflight              # before DPO: which pairs are at risk of squeezing

Commands (installed with the package): `alignkit-recipe` (= `accelerate launch -m alignkit.recipe`),
`alignkit-preflight`, `alignkit-win-rate` (= `python -m alignkit.judge`), `alignkit-dynamics`.

Each name is imported on first use, so `import alignkit` (and every module of it, which imports this package first)
loads no torch, transformers or TRL, and no layer above the one a module is in.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> the module that defines it (imported on first access: PEP 562)
EXPORTS = {
    "SqueezingCallback": "alignkit.monitors.callback",
    "RecipeConfig": "alignkit.config",
    "parse_recipe_config": "alignkit.config",
    "run_recipe": "alignkit.recipe",
    "decompose": "alignkit.dynamics",
    "JudgeConfig": "alignkit.judge",
    "evaluate_win_rate": "alignkit.judge",
    "run_preflight": "alignkit.preflight.run",
}
__all__ = sorted(EXPORTS)


def __getattr__(name: str):
    if name not in EXPORTS:
        raise AttributeError(f"module 'alignkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(EXPORTS[name]), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *EXPORTS])
