"""Energy loss functions for physical systems (Kaba, Sareen, Levy & Ravanbakhsh, NeurIPS 2025).

Framework-free core: the pair energy loss and its baselines (functional and ``nn.Module``),
coefficient schemes, edge sets, alignment, diffusion helpers. Framework adapters (SchNetPack,
TorchMD-Net) are separate packages found through entry points: see :mod:`energyloss_plugins.adapters`.
"""

from energyloss_plugins.alignment import aligned_rmsd, kabsch_align
from energyloss_plugins.coefficients import PairContext, coefficient_names, register_coefficients
from energyloss_plugins.graphs import GRAPH_NAMES, build_pairs, rigid_sparse_graph
from energyloss_plugins.losses import (
    LOSSES,
    PairSprings,
    get_loss,
    kabsch_mse_loss,
    mae_loss,
    mse_loss,
    pair_energy_kernel,
    pair_energy_loss,
    resolve_springs,
)
from energyloss_plugins.modules import LOSS_MODULES, KabschMSELoss, MAELoss, MSELoss, PairEnergyLoss, make_loss

__version__ = "0.1.0"

__all__ = [
    "GRAPH_NAMES", "LOSSES", "LOSS_MODULES", "KabschMSELoss", "MAELoss", "MSELoss", "PairContext",
    "PairEnergyLoss", "PairSprings", "aligned_rmsd", "build_pairs", "coefficient_names", "get_loss",
    "kabsch_align", "kabsch_mse_loss", "mae_loss", "make_loss", "mse_loss", "pair_energy_kernel",
    "pair_energy_loss", "register_coefficients", "resolve_springs", "rigid_sparse_graph",
]
