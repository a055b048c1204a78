"""Population inference with detection as truncation (paper 001): a point-source
simulator, ratio estimators r1 (detection), r2 (sensitivity), r3 (sub-threshold
information on targeted simulations) and r4 (detected sources), their combination and
coverage checks."""

from probcat.population.chain import PopulationConfig, run_chain
from probcat.population.inference import Grid, Posterior, combine, expected_coverage
from probcat.population.simulator import sample_prior, simulate

__all__ = [
    "PopulationConfig",
    "run_chain",
    "Grid",
    "Posterior",
    "combine",
    "expected_coverage",
    "sample_prior",
    "simulate",
]
