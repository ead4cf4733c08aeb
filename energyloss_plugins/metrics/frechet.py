"""Fréchet ChemNet distance (FCD, Preuer et al. 2018) between two lists of SMILES.

ChemNet and its weights come from the ``fcd`` package (``pip install "energyloss-plugins[metrics]"``;
the weights ship inside the wheel, nothing is downloaded). Each SMILES becomes ChemNet's 512
penultimate-layer activations; each set is summarised by their mean ``mu`` and covariance ``C``, and

    FCD = |mu_1 - mu_2|² + tr(C_1 + C_2 - 2 (C_1^½ C_2 C_1^½)^½)

(unitless; 0 for identical sets, growing as the sets' chemistry differs; QM7 against its other half,
3,550 molecules per side: 0.17). With few molecules the estimate is biased upward
(the covariances are noisy): compare values made with the same numbers of molecules.
The package's model and SMILES encoding are used as they are; the Fréchet distance is computed here
because ``fcd`` 1.2.2's own ``get_fcd`` calls ``numpy.row_stack`` and ``scipy.linalg.sqrtm(..., disp=False)``,
which the NumPy and SciPy pinned here (2.5, 1.18) no longer have.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from energyloss_plugins.optional import require

FEATURE = "FCD (Fréchet ChemNet distance)"


def chemnet_activations(smiles: Sequence[str], batch_size: int = 128) -> np.ndarray:
    """``(n, 512)`` float64 ChemNet activations of ``smiles`` (CPU).

    Raises:
        MissingOptionalDependency: the ``fcd`` package is not installed (one-line message).
    """
    fcd = require("fcd", FEATURE, "metrics")
    fcd_utils = require("fcd.utils", FEATURE, "metrics")
    import torch

    model = fcd.load_ref_model()  # cached by fcd; torch.load's default (torch >= 2.6) is weights_only=True
    data = fcd_utils.SmilesDataset(list(smiles))  # one-hot, padded to ChemNet's 350 characters
    out = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = np.stack([data[i] for i in range(start, min(start + batch_size, len(data)))])
            x = torch.as_tensor(batch, dtype=torch.float32).transpose(1, 2)  # (B, vocabulary, length), as fcd does
            out.append(model(x).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 512))


def activation_statistics(smiles: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(512,)`` and covariance ``(512, 512)`` of the ChemNet activations of ``smiles``.

    Raises:
        ValueError: fewer than two SMILES (no covariance).
    """
    if len(smiles) < 2:
        raise ValueError(f"FCD needs at least two SMILES per set, got {len(smiles)}.")
    act = chemnet_activations(smiles)
    return act.mean(0), np.cov(act, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance of two Gaussians ``N(mu1, cov1)``, ``N(mu2, cov2)`` (symmetric PSD covariances).

    The trace of ``(C_1 C_2)^½`` is taken as the sum of the square roots of the eigenvalues of the
    symmetric ``C_1^½ C_2 C_1^½`` (same spectrum), which stays real where ``sqrtm(C_1 C_2)`` may not.
    """
    w, v = np.linalg.eigh(cov1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    middle = root1 @ cov2 @ root1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)


def fcd_score(smiles: Sequence[str], reference: Sequence[str]) -> float:
    """FCD between two lists of SMILES (each at least two long)."""
    return frechet_distance(*activation_statistics(smiles), *activation_statistics(reference))
