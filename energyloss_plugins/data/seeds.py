"""Per-molecule seeds of the dataset builder: every random choice derives from (global seed, source index)."""

from __future__ import annotations

import numpy as np

#: Sub-streams of one molecule's seeds: its ETKDG start, its thermal samples, its k-th ETKDG input.
EMBED_STREAM, THERMAL_STREAM, ETKDG_STREAM = 0, 1, 100


def seed_for(seed: int, index: int, stream: int = 0) -> int:
    """Deterministic 31-bit seed for structure ``index`` (and sub-stream) from the global seed."""
    return int(np.random.SeedSequence([int(seed), int(index), int(stream)]).generate_state(1)[0]) & 0x7FFFFFFF
