"""Small datasets in the host frameworks' own formats, written by the frameworks' own writers.

- :func:`qm9_style_db`: a SchNetPack ASE database as ``schnetpack.datasets.QM9`` writes it
  (``ASEAtomsData.create`` with QM9's property names and units, atom references, ``add_systems``),
  from molecules of ASE's g2 set with H, C, N, O, F only and made-up property values; optionally
  with a ``target_positions`` property (unit Å) for structure prediction.
- :func:`md17_style_db`: as ``schnetpack.datasets.MD17`` writes it: one molecule (ethanol), many
  frames with ``energy`` (kcal/mol) and ``forces`` (kcal/mol/Å), ``molecule`` in the metadata.
- :func:`torchmdnet_hdf5`: TorchMD-Net's ``HDF5`` layout (groups of equal-size structures with ``types``,
  ``pos``, ``energy``, ``forces``), optionally with ``pos_target`` (read by ``PositionHDF5``).
- :func:`torchmdnet_custom`: TorchMD-Net's ``Custom`` layout (per molecule: ``*coords.npy``
  ``(frames, N, 3)``, ``*embed.npy`` ``(N,)``, ``*energy.npy`` ``(frames, 1)``, ``*forces.npy``).

None of these needs RDKit or the project's data builder.
"""

from __future__ import annotations

import os

import numpy as np

#: QM9's property units, as schnetpack.datasets.QM9.prepare_data writes them.
QM9_UNITS = {
    "rotational_constant_A": "GHz", "rotational_constant_B": "GHz", "rotational_constant_C": "GHz",
    "dipole_moment": "Debye", "isotropic_polarizability": "a0 a0 a0", "homo": "Ha", "lumo": "Ha", "gap": "Ha",
    "electronic_spatial_extent": "a0 a0", "zpve": "Ha", "energy_U0": "Ha", "energy_U": "Ha", "enthalpy_H": "Ha",
    "free_energy": "Ha", "heat_capacity": "cal/mol/K",
}
QM9_ELEMENTS = {1, 6, 7, 8, 9}


def qm9_like_molecules(n: int = 12) -> list:
    """The first ``n`` molecules of ASE's g2 set made of H, C, N, O, F with at least 3 atoms (a QM9-like mix)."""
    from ase.collections import g2

    mols = [a for a in g2 if len(a) >= 3 and set(a.numbers.tolist()) <= QM9_ELEMENTS]
    return mols[:n]


def _structure(atoms) -> dict:
    from schnetpack import properties as p

    return {p.Z: atoms.numbers, p.R: atoms.positions, p.cell: atoms.cell[:], p.pbc: atoms.pbc}


def qm9_style_db(path: str, n: int = 12, with_targets: bool = False, seed: int = 0) -> str:
    """A SchNetPack database in QM9's format at ``path`` (``.db``); see the module docstring.

    With ``with_targets`` the rows' atoms are rattled copies of the molecules (σ = 0.05 Å) and the
    molecules' own positions are stored as ``target_positions`` (unit ``Ang``).
    """
    from schnetpack.data import ASEAtomsData

    rng = np.random.default_rng(seed)
    units = dict(QM9_UNITS, **({"target_positions": "Ang"} if with_targets else {}))
    atomrefs = {name: list(rng.normal(size=100)) for name in ("energy_U0", "energy_U", "enthalpy_H", "free_energy")}
    data = ASEAtomsData.create(path, distance_unit="Ang", property_unit_dict=units, atomrefs=atomrefs)
    rows = []
    for mol in qm9_like_molecules(n):
        atoms = mol.copy()
        props = {name: rng.normal(size=1) for name in QM9_UNITS}
        if with_targets:
            props["target_positions"] = mol.positions.copy()
            atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        rows.append({**props, **_structure(atoms)})
    data.add_systems(property_list=rows)
    return path


def md17_style_db(path: str, n_frames: int = 24, seed: int = 0) -> str:
    """A SchNetPack database in MD17's format: ethanol, ``n_frames`` thermal-like frames (σ = 0.05 Å)."""
    from ase.build import molecule
    from schnetpack.data import ASEAtomsData

    rng = np.random.default_rng(seed)
    data = ASEAtomsData.create(path, distance_unit="Ang",
                               property_unit_dict={"energy": "kcal/mol", "forces": "kcal/mol/Ang"})
    data.update_metadata(molecule="ethanol")
    ethanol = molecule("CH3CH2OH")
    rows = []
    for _ in range(n_frames):
        atoms = ethanol.copy()
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        rows.append({"energy": np.array([rng.normal()]), "forces": rng.normal(size=(len(atoms), 3)),
                     **_structure(atoms)})
    data.add_systems(property_list=rows)
    return path


def torchmdnet_hdf5(path: str, n: int = 12, with_targets: bool = False, seed: int = 0) -> str:
    """An HDF5 file in the layout ``torchmdnet.datasets.HDF5`` reads (several frames per molecule).

    Each molecule is one group (``types`` ``(S, N)``, ``pos`` ``(S, N, 3)``, ``energy`` ``(S,)``,
    ``forces`` ``(S, N, 3)``: S = 2 rattled frames); ``with_targets`` adds ``pos_target``
    ``(S, N, 3)`` (the molecule's own geometry) for :class:`torchmdnet_ext.PositionHDF5`.
    """
    import h5py

    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        for i, mol in enumerate(qm9_like_molecules(n)):
            frames = mol.positions[None] + rng.normal(scale=0.05, size=(2, len(mol), 3))
            g = f.create_group(f"mol{i}")
            # (S, N): TorchMD-Net reads a 1-D types array of length S as one type per structure
            g["types"] = np.broadcast_to(mol.numbers, frames.shape[:2]).astype(np.int64)
            g["pos"] = frames.astype(np.float32)
            g["energy"] = rng.normal(size=2).astype(np.float32)
            g["forces"] = rng.normal(size=frames.shape).astype(np.float32)
            if with_targets:
                g["pos_target"] = np.broadcast_to(mol.positions, frames.shape).astype(np.float32)
    return path


def torchmdnet_custom(directory: str, n: int = 12, seed: int = 0) -> dict[str, str]:
    """``.npy`` files in the layout ``torchmdnet.datasets.Custom`` reads; returns its glob options."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    for i, mol in enumerate(qm9_like_molecules(n)):
        frames = mol.positions[None] + rng.normal(scale=0.05, size=(2, len(mol), 3))
        np.save(os.path.join(directory, f"mol{i:02d}_coords.npy"), frames.astype(np.float32))
        np.save(os.path.join(directory, f"mol{i:02d}_embed.npy"), mol.numbers.astype(np.int64))
        np.save(os.path.join(directory, f"mol{i:02d}_energy.npy"), rng.normal(size=(2, 1)).astype(np.float32))
        np.save(os.path.join(directory, f"mol{i:02d}_forces.npy"), rng.normal(size=frames.shape).astype(np.float32))
    return {"coord_files": os.path.join(directory, "*_coords.npy"),
            "embed_files": os.path.join(directory, "*_embed.npy"),
            "energy_files": os.path.join(directory, "*_energy.npy"),
            "force_files": os.path.join(directory, "*_forces.npy")}
