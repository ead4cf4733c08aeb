"""Conformers: seeded ETKDGv3 embeddings (RDKit), deterministic for a seed."""

from __future__ import annotations

from typing import Any

import numpy as np

from energyloss_plugins.chem.molecules import ChemError, positions_of, rdkit, rdkit_quiet, without_conformers


def embed(mol: Any, seed: int, max_attempts: int = 3) -> np.ndarray:
    """One ETKDGv3 embedding ``(N, 3)`` Å with a fixed random seed (single thread, deterministic).

    Stereo tags on ``mol`` are enforced (assign them from a 3D target first to get a new conformer
    of the same stereoisomer).

    Raises:
        ChemError: ``embedding_failed``.
    """
    dist_geom = rdkit("rdkit.Chem.rdDistGeom")
    params = dist_geom.ETKDGv3()
    params.randomSeed = int(seed) & 0x7FFFFFFF
    params.numThreads = 1
    work = without_conformers(mol)
    for attempt in range(max_attempts):
        if attempt:
            params.useRandomCoords = True
            params.randomSeed = (int(seed) + 7919 * attempt) & 0x7FFFFFFF
        with rdkit_quiet():
            cid = dist_geom.EmbedMolecule(work, params)
        if cid >= 0:
            return positions_of(work, cid)
    raise ChemError("embedding_failed")
