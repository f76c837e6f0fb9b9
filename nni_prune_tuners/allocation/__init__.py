"""The allocation engine: the layer sparsities of a branch proposed by a Bayesian model.

Its model (:mod:`.model`: additive response curves and their priors, the sensitivity curves and
the proxy), its budget solve (:mod:`.solve`), its proposal moves (:mod:`.moves`) and the Optuna
sampler that uses them inside PruneTPE (:mod:`.sampler`).
"""

from __future__ import annotations

from nni_prune_tuners.allocation.model import (
    GRID,
    KNOTS,
    Posterior,
    Prior,
    basis,
    curves,
    design,
    fit,
    layer_grids,
    log_density,
    predict,
    prior_means,
    prior_variances,
    proxy_term,
    sensitivity_prior,
)
from nni_prune_tuners.allocation.moves import (
    CANDIDATES,
    MOVED,
    MOVES,
    TrustRegion,
    choose_move,
    few_layer_move,
    is_repeat,
    perturb,
    propose,
    sensitivity_allocation,
)
from nni_prune_tuners.allocation.sampler import AllocationSampler, SparsityBlock, blocks_for
from nni_prune_tuners.allocation.solve import (
    BUDGET_UNITS,
    LINEARISATIONS,
    solve_budget,
    solve_product_budget,
)

__all__ = [
    "BUDGET_UNITS", "CANDIDATES", "GRID", "KNOTS", "LINEARISATIONS", "MOVED", "MOVES",
    "AllocationSampler", "Posterior", "Prior", "SparsityBlock", "TrustRegion", "basis",
    "blocks_for", "choose_move", "curves", "design", "few_layer_move", "fit", "is_repeat",
    "layer_grids", "log_density", "perturb", "predict", "prior_means", "prior_variances",
    "propose", "proxy_term", "sensitivity_allocation", "sensitivity_prior", "solve_budget",
    "solve_product_budget",
]
