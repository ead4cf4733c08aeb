"""Offline molecular datasets for structure tasks (equilibrium targets + input geometries, ASE db).

Importing this package needs numpy and torch only; RDKit, ASE and tblite are imported when a
function needs them. See ``docs/data.md`` for the database contract and the builder's choices.

    from energyloss_plugins.data import build_dataset, read_dataset
    report = build_dataset("nci", "qm9like/data.db", max_molecules=500, max_heavy_atoms=9, elements="C,N,O,F")
    records = read_dataset("qm9like/data.db")
"""

from energyloss_plugins.chem import (
    BOLTZMANN_EV,
    KCAL_MOL_IN_EV,
    TARGET_FMAX,
    XTB_FMAX,
    ChemError,
    harmonic_samples,
)
from energyloss_plugins.data.builder import build_dataset
from energyloss_plugins.data.inputs import process_entry
from energyloss_plugins.data.paths import find_split_file, split_file_for
from energyloss_plugins.data.reader import (
    DatasetRecord,
    check_atoms_db,
    check_structure_db,
    collate_records,
    read_dataset,
    read_metadata,
    read_split,
)
from energyloss_plugins.data.report import BuildReport
from energyloss_plugins.data.settings import (
    CHEAP_INPUT,
    INPUT_KINDS,
    METHODS,
    PROPERTY_UNITS,
    BuildSettings,
    make_settings,
)
from energyloss_plugins.data.sources import SOURCE_NAMES, SourceEntry, Structures, load_structures, nci_path
from energyloss_plugins.data.splits import split_molecules

__all__ = [
    "BOLTZMANN_EV",
    "CHEAP_INPUT",
    "INPUT_KINDS",
    "KCAL_MOL_IN_EV",
    "METHODS",
    "PROPERTY_UNITS",
    "SOURCE_NAMES",
    "TARGET_FMAX",
    "XTB_FMAX",
    "BuildReport",
    "BuildSettings",
    "ChemError",
    "DatasetRecord",
    "SourceEntry",
    "Structures",
    "build_dataset",
    "check_atoms_db",
    "check_structure_db",
    "collate_records",
    "find_split_file",
    "harmonic_samples",
    "load_structures",
    "make_settings",
    "nci_path",
    "process_entry",
    "read_dataset",
    "read_metadata",
    "read_split",
    "split_file_for",
    "split_molecules",
]
