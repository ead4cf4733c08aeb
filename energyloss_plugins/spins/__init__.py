"""Spin systems: the local-field free-energy loss and exact ground states (SPEC §4).

Layout: ``couplings`` ``(B, 2, H, W)`` (channel 0 bond to the right neighbour, channel 1 bond to
the neighbour below; zero wrapping bonds = open boundaries), ``spins`` ``(B, H, W)`` in {-1, +1},
``logits`` ``(B, H, W)`` (logit of q(spin = +1)). See ``docs/spins.md``.

A physical system of its own beside the molecular core: lattices and energies (``lattice``), the
losses (``functional``, ``modules``), exact ground states (``exact``), seeded cached datasets
(``data``) and the CNN (``models``). The training loop that uses them is an example
(``examples/spins/spin_training.py``), not part of the package.
"""

from .data import SpinGlassDataset, cache_path, default_cache_dir, make_spin_glass_dataset
from .exact import (
    brute_force_ground_state,
    canonicalize,
    greedy_descent,
    ground_state,
    ground_states,
    single_flip_descent,
)
from .functional import (
    SPIN_LOSS_FUNCTIONS,
    binary_entropy_from_logits,
    cross_entropy_spin_loss,
    get_spin_loss_function,
    local_field_energy,
    local_field_free_energy_loss,
    local_field_weights,
    margin_spin_loss,
    spin_loss_names,
    true_energy_free_energy_loss,
)
from .lattice import (
    boundary_mask,
    coupling_features,
    flip_costs,
    infer_boundary,
    is_local_minimum,
    ising_energy,
    ising_excess_energy,
    local_fields,
    random_couplings,
)
from .models import SpinResNet
from .modules import (
    SPIN_LOSSES,
    CrossEntropySpinLoss,
    LocalFieldFreeEnergyLoss,
    MarginSpinLoss,
    TrueEnergyFreeEnergyLoss,
    get_spin_loss,
)

__all__ = [
    "SpinGlassDataset",
    "cache_path",
    "default_cache_dir",
    "make_spin_glass_dataset",
    "brute_force_ground_state",
    "canonicalize",
    "greedy_descent",
    "ground_state",
    "ground_states",
    "single_flip_descent",
    "SPIN_LOSS_FUNCTIONS",
    "binary_entropy_from_logits",
    "cross_entropy_spin_loss",
    "get_spin_loss_function",
    "local_field_energy",
    "local_field_free_energy_loss",
    "local_field_weights",
    "margin_spin_loss",
    "spin_loss_names",
    "true_energy_free_energy_loss",
    "boundary_mask",
    "coupling_features",
    "flip_costs",
    "infer_boundary",
    "is_local_minimum",
    "ising_energy",
    "ising_excess_energy",
    "local_fields",
    "random_couplings",
    "SpinResNet",
    "SPIN_LOSSES",
    "CrossEntropySpinLoss",
    "LocalFieldFreeEnergyLoss",
    "MarginSpinLoss",
    "TrueEnergyFreeEnergyLoss",
    "get_spin_loss",
]
