"""ASE bridge: energy landscapes of the pair energy loss as ASE calculators (needs ``ase``).

- :class:`EnergyLossCalculator`: E(atoms, reference) in eV as a standard ASE calculator.
- :func:`coefficients_from_calculator`: non-negative pair springs fitted to any calculator's Hessian.
- :func:`boltzmann_sample`: Langevin samples of the surrogate at temperature T.
- :class:`MMFFCalculator`: RDKit MMFF94 as an ASE calculator.
- :func:`predict_structures` (alias :func:`run_structure_model`), :func:`run_diffusion_model`: trained
  adapter models (objects or checkpoints, found through :mod:`energyloss_plugins.adapters`) or any
  callable on Atoms; :func:`sample_structures` for any denoiser callable.

The TorchMD-Net calculator lives in its adapter: ``get_adapter("torchmdnet").TorchMDNetCalculator``
(:mod:`energyloss_plugins.adapters`).

See docs/ase.md.
"""

from energyloss_plugins.optional import require

require("ase", "energyloss_plugins.ase", "ase")

from energyloss_plugins.ase._utils import (  # noqa: E402
    bonds_from_atoms,
    frequencies_cm,
    n_rigid_modes,
    normal_modes,
    pairs_for_atoms,
)
from energyloss_plugins.ase.calculator import EnergyLossCalculator  # noqa: E402
from energyloss_plugins.ase.mmff import MMFFCalculator, mmff_relax, mol_from_atoms  # noqa: E402
from energyloss_plugins.ase.models import (  # noqa: E402
    atoms_to_batch,
    batch_to_atoms,
    predict_structures,
    run_diffusion_model,
    run_structure_model,
    sample_structures,
    split_diverged,
)
from energyloss_plugins.ase.sampling import BoltzmannSamples, boltzmann_sample, equipartition_energy  # noqa: E402
from energyloss_plugins.ase.springs import (  # noqa: E402
    SpringFitReport,
    add_springs_to_db,
    coefficients_from_calculator,
    collate_springs,
    compute_hessian,
    fit_springs,
    spring_hessian,
    springs_from_data,
    springs_to_data,
    store_springs,
)

__all__ = [
    "BoltzmannSamples",
    "EnergyLossCalculator",
    "MMFFCalculator",
    "SpringFitReport",
    "add_springs_to_db",
    "atoms_to_batch",
    "batch_to_atoms",
    "boltzmann_sample",
    "bonds_from_atoms",
    "coefficients_from_calculator",
    "collate_springs",
    "compute_hessian",
    "equipartition_energy",
    "fit_springs",
    "frequencies_cm",
    "mmff_relax",
    "mol_from_atoms",
    "n_rigid_modes",
    "normal_modes",
    "pairs_for_atoms",
    "predict_structures",
    "run_diffusion_model",
    "run_structure_model",
    "sample_structures",
    "split_diverged",
    "spring_hessian",
    "springs_from_data",
    "springs_to_data",
    "store_springs",
]
