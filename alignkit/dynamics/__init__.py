"""Learning-dynamics decomposition Δ log π ≈ −η A·K·G for one update step, checked against a real step.

See docs/dynamics.md for the derivations, the kernel-norm estimator and measured costs.
"""

from alignkit.dynamics.decompose import (
    Adaptation,
    Decomposition,
    DistributionChange,
    ExplicitFactors,
    Residual,
    actual_change,
    decompose,
    distribution_change,
)

__all__ = [
    "Adaptation",
    "Decomposition",
    "DistributionChange",
    "ExplicitFactors",
    "Residual",
    "actual_change",
    "decompose",
    "distribution_change",
]
