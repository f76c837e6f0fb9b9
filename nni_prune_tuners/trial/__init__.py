"""The torch side of nni-prune-tuners: the pruning API a trial imports (Contract 7).

Installed with the ``trial`` extra (``pip install nni-prune-tuners[trial]``). The package's own
``__init__`` never imports this subpackage, so the tuner and assessor stay free of torch::

    from nni_prune_tuners.trial import Pruner, next_parameters

    pruner = Pruner(model, next_parameters(), epochs=epochs, optimizer=optimizer)

``next_parameters()`` is ``nni.get_next_parameter()`` inside NNI; run by hand, it reads the
configuration from ``NNI_PRUNE_PARAMS``.

The prunable layers (:func:`prunable_layers`) are the weights a user calls layers: Conv1d/2d/3d,
Linear, HuggingFace's ``Conv1D`` and ``nn.MultiheadAttention``'s projections (``<mha>.in_proj``);
example inputs are one tensor, a tuple of positional inputs or a dict of keyword inputs.

``python -m nni_prune_tuners.trial.profile`` writes the model profile the tuner reads;
``nni-prune-tuners presearch`` (``nni_prune_tuners.trial.presearch``) adds the best few
allocations of a one-shot proxy search to it, which PruneTPE proposes first.

The ``channel`` method (Contract 10) removes whole output channels for real, in ``Pruner``'s
constructor (then ``pruner.model`` is the model to train and ``pruner.optimizer`` is built after
pruning by ``optimizer_factory``) or by hand::

    pruner = Pruner(model, params, epochs=epochs, example_inputs=x,
                    optimizer_factory=lambda m: torch.optim.SGD(m.parameters(), lr=0.01))

    from nni_prune_tuners.trial import channel_groups, prune_channels

    groups = channel_groups(model, example_inputs)
    model = prune_channels(model, {group.name: 0.5 for group in groups}, example_inputs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)   # built after pruning
"""

from __future__ import annotations

from nni_prune_tuners.params import CHANNEL, MASK_METHODS, METHODS, PruneParams, parse
from nni_prune_tuners.trial.batchnorm import recalibrate_batchnorm
from nni_prune_tuners.trial.channel import (
    ChannelGroup,
    ChannelLayer,
    channel_groups,
    channel_layers,
    prune_channels,
)
from nni_prune_tuners.trial.layers import count_flops, prunable_layers
from nni_prune_tuners.trial.masking import (
    AgpSchedule,
    WeightMasker,
    agp_mask,
    agp_sparsity,
    level_mask,
    measured_sparsity,
    num_pruned,
)
from nni_prune_tuners.trial.parameters import PARAMS_ENV, next_parameters
from nni_prune_tuners.trial.pruner import Pruner, parse_params

__all__ = [
    "CHANNEL",
    "MASK_METHODS",
    "METHODS",
    "PARAMS_ENV",
    "AgpSchedule",
    "ChannelGroup",
    "ChannelLayer",
    "PruneParams",
    "Pruner",
    "WeightMasker",
    "agp_mask",
    "agp_sparsity",
    "channel_groups",
    "channel_layers",
    "count_flops",
    "level_mask",
    "measured_sparsity",
    "next_parameters",
    "num_pruned",
    "parse",
    "parse_params",
    "prunable_layers",
    "prune_channels",
    "recalibrate_batchnorm",
]
