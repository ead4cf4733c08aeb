"""De novo molecule generation: EDM-style joint diffusion of positions and atom types (SPEC §7).

State per atom: a position x ``(3,)`` Å in the zero-centre-of-mass subspace of its molecule, and
type features h = [one_hot(Z) · 0.25, Z · 0.1] ``(F,)`` with F = number of elements + 1 (EDM's
scaling). Both are noised with one variance-preserving schedule (EDM: polynomial, power 2,
precision 1e-5): x_t = α_t x + σ_t ε_x (ε_x centre-of-mass free), h_t = α_t h + σ_t ε_h. The
network sees x_t, h_t and t only, never the clean types, and predicts ε_x and ε_h (or, for flow
matching, the velocities ε − x and ε_h − h on the path x_t = (1 − t) x + t ε).

Loss (see :meth:`GenerationObjective.loss_terms`)::

    L = [position_weight · mean_b w_t · P(x̂_b, x_b) / n_b  +  mean_b Σ_{i∈b} |ε_h,i − ε̂_h,i|² / n_b] / (3 + F)

with P the positional loss by name (``energy``: the pair energy of SPEC §2; ``mse``, ``mae``,
``kabsch``) of the clean sample x̂ implied by ε̂_x, and w_t = α_t²/σ_t² (1/t² for flow matching), so
that with ``mse`` the positional term is exactly Σ_i |ε_x,i − ε̂_x,i|² / n_b. Normalisation (the
project's choice, following EDM, which divides the summed squared error by atoms × dimensions):
both terms are per atom, and the sum is divided by the 3 + F components per atom, so that with
``mse`` every coordinate and every type feature weighs the same and the loss starts near 1. For the
energy, pick the springs' scale (``k0``) so that its positional term is comparable with the MSE
(see docs/generation.md); ``position_weight`` then balances positions against types.

Sampling: atom counts from the training histogram (:class:`AtomCountDistribution`), x_T (CoM free)
and h_T from N(0, I), ancestral (default) or DDIM steps (Euler for flow matching) with the step
function of :mod:`energyloss_plugins.diffusion`, types by argmax of the one-hot part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from energyloss_plugins import _checks
from energyloss_plugins.config import LossConfig
from energyloss_plugins.diffusion import PerStructureLoss, com_free_noise, network_target, remove_com, reverse_step
from energyloss_plugins.layouts import batch_from_counts, segment_mean, structure_counts, structure_index
from energyloss_plugins.losses import PairSprings
from energyloss_plugins.tasks import DiffusionObjective

if TYPE_CHECKING:  # pragma: no cover
    import ase

#: Parameterizations of the joint model: ε prediction (EDM) or flow-matching velocity.
GENERATION_PARAMETERIZATIONS = ("eps", "velocity")
SAMPLERS = ("ancestral", "ddim", "euler")

#: ``fn(x_t (N, 3), h_t (N, F), t (B,), batch (N,)) -> (out_x (N, 3), out_h (N, F))``.
JointDenoiser = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


class TypeEncoding:
    """Atom types as EDM features h = [one_hot * 0.25, Z * 0.1] (SPEC §7).

    Args:
        elements: atomic numbers the model can generate (sorted and de-duplicated here).
        one_hot_scale, number_scale: EDM's scaling of the one-hot part and of the atomic number.
    """

    def __init__(self, elements: Sequence[int], one_hot_scale: float = 0.25, number_scale: float = 0.1):
        if isinstance(elements, (str, bytes)):
            raise ValueError(f"elements must be a list of atomic numbers such as [1, 6, 7, 8], got {elements!r}.")
        elements = tuple(sorted(set(_checks.check_integers("elements", list(elements), low=1,
                                                           high=_checks.MAX_ATOMIC_NUMBER).tolist())))
        if not elements:
            raise ValueError("elements must be a non-empty list of atomic numbers (1..118), got [].")
        self.elements = elements
        self.n_features = len(elements) + 1
        self.one_hot_scale = float(one_hot_scale)
        self.number_scale = float(number_scale)
        lookup = torch.full((max(elements) + 1,), -1, dtype=torch.long)
        lookup[list(elements)] = torch.arange(len(elements))
        self._index = lookup
        self._numbers = torch.tensor(elements, dtype=torch.long)

    def index(self, numbers: Tensor, *, validate_args: bool = True) -> Tensor:
        """Position of each atomic number ``(N,)`` in :attr:`elements`; ValueError for unknown elements
        (checked with ``validate_args``, which reads back to the host; unchecked, an unknown element is -1)."""
        numbers = torch.as_tensor(numbers)
        if numbers.is_floating_point() or numbers.dtype == torch.bool:  # 6.7 is not carbon
            numbers = _checks.check_integers("numbers", numbers).to(numbers.device)
        numbers = numbers.long()
        inside = (numbers >= 0) & (numbers < self._index.shape[0])
        idx = self._index.to(numbers.device)[numbers.clamp(0, self._index.shape[0] - 1)]
        if not validate_args:
            return idx
        bad = ~inside | (idx < 0)
        if bool(bad.any()):
            unknown = sorted({int(z) for z in numbers[bad].tolist()})
            raise ValueError(f"atomic numbers {unknown} are not among the model's elements {list(self.elements)}; "
                             "add them to `elements` (the element list is fixed when the model is built).")
        return idx

    def encode(self, numbers: Tensor, dtype: torch.dtype = torch.float32, *, validate_args: bool = True) -> Tensor:
        """``(N,)`` long atomic numbers → ``(N, F)`` features (``validate_args``: as :meth:`index`)."""
        idx = self.index(numbers, validate_args=validate_args)
        # A comparison, not F.one_hot, which reads the indices' range back to the host.
        one_hot = (idx.unsqueeze(-1) == torch.arange(len(self.elements), device=idx.device)).to(dtype)
        one_hot = one_hot * self.one_hot_scale
        charge = numbers.to(dtype).unsqueeze(-1) * self.number_scale
        return torch.cat([one_hot, charge], dim=-1)

    def decode(self, h: Tensor) -> Tensor:
        """``(N, F)`` features → ``(N,)`` long atomic numbers (argmax of the one-hot part)."""
        if h.dim() != 2 or h.shape[1] != self.n_features:
            raise ValueError(f"h must have shape (N, {self.n_features}) for elements {list(self.elements)}, "
                             f"got {tuple(h.shape)}.")
        return self._numbers.to(h.device)[h[:, : len(self.elements)].argmax(dim=-1)]

    def __repr__(self) -> str:
        return f"TypeEncoding(elements={list(self.elements)})"


class AtomCountDistribution:
    """Histogram of atoms per molecule in the training set; samples molecule sizes.

    Args:
        histogram: ``histogram[n]`` = number (or weight) of training molecules with n atoms.
    """

    def __init__(self, histogram: Sequence[float]):
        histogram = list(histogram)
        if len(histogram) > _checks.MAX_ATOMS_PER_MOLECULE + 1:
            raise ValueError(f"histogram lists atom counts up to {len(histogram) - 1}; at most "
                             f"{_checks.MAX_ATOMS_PER_MOLECULE} atoms per molecule are supported.")
        weights = torch.as_tensor(histogram, dtype=torch.float64)
        if (weights.dim() != 1 or weights.numel() < 2 or not bool(torch.isfinite(weights).all())
                or bool((weights < 0).any()) or float(weights[1:].sum()) <= 0):
            raise ValueError("histogram must list non-negative weights per atom count with some weight at n >= 1, "
                             f"got {list(histogram)}.")
        weights[0] = 0.0  # a molecule has at least one atom
        self.histogram = [float(w) for w in weights]
        self.probabilities = weights / weights.sum()

    #: Key of the histogram in a Lightning checkpoint (both adapters), so a checkpoint alone can sample.
    CHECKPOINT_KEY = "atom_count_histogram"

    def save_to(self, checkpoint: dict) -> None:
        """Store the histogram in a (Lightning) checkpoint dict."""
        checkpoint[self.CHECKPOINT_KEY] = self.histogram

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping) -> AtomCountDistribution | None:
        """The histogram stored by :meth:`save_to`, or None if the checkpoint has none."""
        histogram = checkpoint.get(cls.CHECKPOINT_KEY)
        return None if histogram is None else cls(histogram)

    @classmethod
    def from_counts(cls, counts: Sequence[int]) -> AtomCountDistribution:
        """From the atom count of every training molecule."""
        counts = _checks.check_integers("counts", list(counts), low=1, high=_checks.MAX_ATOMS_PER_MOLECULE)
        if counts.numel() == 0:
            raise ValueError("counts must hold the atom count (>= 1) of at least one molecule.")
        return cls(torch.bincount(counts).tolist())

    @classmethod
    def from_molecules(cls, numbers: Iterable[Tensor], elements: Sequence[int], *, others: Iterable[Tensor] = (),
                       setting: Callable[[list[int]], str] = lambda zs: f"elements={zs}") -> AtomCountDistribution:
        """From the atomic numbers ``(n_i,)`` of every training molecule, checked against the model's ``elements``.

        ``others``: atomic numbers of the validation/test molecules (checked too, not counted: they are
        encoded as well, so a fix read from the training split alone would fail again on them).
        ``setting(zs)`` spells how the adapter's user sets the elements to ``zs`` (e.g. ``--elements 1,6,8``),
        for the error. Runs once before training, on host tensors.
        """
        counts, seen = [], set()
        for z in numbers:
            z = torch.as_tensor(z)
            counts.append(int(z.numel()))
            seen.update(torch.unique(z).tolist())
        for z in others:
            seen.update(torch.unique(torch.as_tensor(z)).tolist())
        unknown = sorted(seen - {int(e) for e in elements})
        if unknown:
            raise ValueError(f"the data holds elements {unknown} outside {setting(sorted(elements))}; "
                             f"pass {setting(sorted(seen))}.")
        return cls.from_counts(counts)

    @property
    def max_atoms(self) -> int:
        return len(self.histogram) - 1

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n,)`` long atom counts drawn from the histogram."""
        n = _checks.check_number("n", n, low=0, low_inclusive=True, integer=True)
        if n == 0:
            return torch.zeros(0, dtype=torch.long)
        return torch.multinomial(self.probabilities, n, replacement=True, generator=generator)

    def __repr__(self) -> str:
        mean = float((self.probabilities * torch.arange(len(self.histogram))).sum())
        return f"AtomCountDistribution(max_atoms={self.max_atoms}, mean={mean:.2f})"


class GenerationObjective:
    """Joint diffusion (or flow matching) of positions and atom types with a positional loss by name.

    Args:
        elements: atomic numbers of the training set (fixes the type features).
        loss: positional loss: ``energy`` (w_t · E(x̂, x)), ``mse`` (= ε-MSE), ``kabsch`` or ``mae``, with
            its ``loss_kwargs``; or a :class:`~energyloss_plugins.config.LossConfig`.
        position_weight: multiplies the positional term (the paper sweeps it in [0.05, 1.5]).
        loss_kwargs: options of the positional loss (coefficients, coefficient_kwargs, graph, ...).
        schedule, precision: the VP schedule of both x and h (EDM: polynomial, 1e-5).
        parameterization: ``eps`` (EDM) or ``velocity`` (flow matching; sampled with Euler steps).
        max_weight: clip of w_t (None: none, so that ``mse`` is exactly the ε-MSE; the energy's
            term stays bounded at t → 0 because x̂ − x shrinks with σ_t).
    """

    def __init__(self, elements: Sequence[int], loss: str | LossConfig = "energy", position_weight: float = 1.0,
                 loss_kwargs: Mapping | None = None, schedule: str = "polynomial", precision: float = 1e-5,
                 parameterization: str = "eps", max_weight: float | None = 1e3):
        _checks.check_choice("parameterization", parameterization, GENERATION_PARAMETERIZATIONS)
        _checks.check_number("position_weight", position_weight, low=0, low_inclusive=True)
        self.encoding = TypeEncoding(elements)
        self.positions = DiffusionObjective(loss, parameterization, schedule, loss_kwargs, max_weight, precision)
        self.position_weight = float(position_weight)
        self.parameterization = parameterization
        self.flow_matching = parameterization == "velocity"
        self.schedule = self.positions.schedule

    @property
    def loss_name(self) -> str:
        return self.positions.loss_name

    @property
    def n_features(self) -> int:
        return self.encoding.n_features

    def noise(self, positions: Tensor, numbers: Tensor, batch: Tensor,
              generator: torch.Generator | None = None, *, n_structures: int | None = None,
              validate_args: bool = True) -> dict[str, Tensor]:
        """Noise a clean flat batch: positions ``(N, 3)`` Å, numbers ``(N,)``, batch ``(N,)``.

        Returns keys ``x0`` (centred), ``h0``, ``x_t``, ``h_t``, ``eps`` ``(N, 3)``, ``eps_h`` ``(N, F)``,
        ``t``, ``alpha``, ``sigma`` ``(B,)`` and ``numbers`` ``(N,)`` (for the loss only). A training
        step passes ``n_structures`` and ``validate_args=False`` (no host synchronisation).
        """
        if validate_args:
            _checks.check_positions("positions", positions, 2)
            _checks.check_batch(batch, positions.shape[0])
        noised = self.positions.noise(positions, batch, generator, n_structures=n_structures,
                                      validate_args=validate_args)
        h0 = self.encoding.encode(numbers, positions.dtype, validate_args=validate_args)
        eps_h = torch.randn(h0.shape, dtype=h0.dtype, device=h0.device, generator=generator)
        a, s = noised["alpha"][batch].unsqueeze(1), noised["sigma"][batch].unsqueeze(1)
        return {**noised, "h0": h0, "eps_h": eps_h, "h_t": a * h0 + s * eps_h, "numbers": numbers}

    def position_target(self, noised: Mapping[str, Tensor], batch: Tensor) -> Tensor:
        """What a perfect network outputs for the positions ``(N, 3)``: ε_x, or ε_x − x for flow matching."""
        return network_target(noised, batch, self.parameterization)

    def type_target(self, noised: Mapping[str, Tensor]) -> Tensor:
        """What a perfect network outputs for the types: ε_h, or ε_h − h for flow matching."""
        return noised["eps_h"] - noised["h0"] if self.flow_matching else noised["eps_h"]

    def loss_terms(self, out_x: Tensor, out_h: Tensor, noised: Mapping[str, Tensor], batch: Tensor, *,
                   springs: PairSprings | None = None, validate_args: bool = True,
                   per_structure: PerStructureLoss | None = None) -> dict[str, Tensor]:
        """The two weighted, normalised terms: ``positions`` and ``types``; their sum is :meth:`loss`.

        ``springs``: of the clean molecules, resolved by a data pipeline (the energy's kernel alone).
        ``validate_args=False`` in a training step (nothing is read back to the host).
        ``per_structure``: the positional loss P(x̂, x) handed in by the caller (see
        :meth:`DiffusionObjective.loss`); None: the configured one.
        """
        if out_h.shape != noised["h0"].shape:
            raise ValueError(f"out_h must have shape {tuple(noised['h0'].shape)} (atoms x type features), "
                             f"got {tuple(out_h.shape)}.")
        scale = 1.0 / (3 + self.n_features)
        n_structures = noised["t"].shape[0]  # B from a shape: no host synchronisation
        positions = self.positions.loss(out_x, noised, batch, numbers=noised.get("numbers"), springs=springs,
                                        n_structures=n_structures, validate_args=validate_args,
                                        per_structure=per_structure)
        squared = ((out_h - self.type_target(noised)) ** 2).sum(-1)
        types = segment_mean(squared, batch, n_structures).mean() if n_structures else out_h.sum() * 0.0
        return {"positions": self.position_weight * scale * positions, "types": scale * types}

    def loss(self, out_x: Tensor, out_h: Tensor, noised: Mapping[str, Tensor], batch: Tensor, *,
             springs: PairSprings | None = None, validate_args: bool = True,
             per_structure: PerStructureLoss | None = None) -> Tensor:
        """Scalar training loss (see the module docstring; arguments as :meth:`loss_terms`)."""
        terms = self.loss_terms(out_x, out_h, noised, batch, springs=springs, validate_args=validate_args,
                                per_structure=per_structure)
        return terms["positions"] + terms["types"]

    @torch.no_grad()
    def sample(self, denoiser: JointDenoiser, n_atoms: Tensor, *, steps: int = 500, method: str | None = None,
               generator: torch.Generator | None = None, progress: bool = False, dtype: torch.dtype = torch.float32,
               initial: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Generate molecules with the given atom counts.

        Args:
            denoiser: ``fn(x_t (N, 3), h_t (N, F), t (B,), batch (N,)) -> (out_x, out_h)``.
            n_atoms: ``(B,)`` atom count per molecule (e.g. from :meth:`AtomCountDistribution.sample`).
            steps: denoising steps (EDM uses 1,000).
            method: ``ancestral`` (default), ``ddim`` or, for flow matching, ``euler`` (its default).
            initial: optional ``(x_T (N, 3), h_T (N, F))`` instead of fresh noise (x_T is centred here).

        Returns:
            numbers ``(N,)`` long, positions ``(N, 3)`` Å (centre of mass at 0), batch ``(N,)``.
        """
        method = method or ("euler" if self.flow_matching else "ancestral")
        _checks.check_choice("sampler", method, SAMPLERS)
        if (method == "euler") != self.flow_matching:
            raise ValueError(f"method {method!r} does not fit parameterization {self.parameterization!r}: use "
                             "'euler' for flow matching (velocity) and 'ancestral' or 'ddim' for eps models.")
        steps = _checks.check_number("steps", steps, low=1, low_inclusive=True, integer=True)
        device = generator.device if generator is not None else getattr(n_atoms, "device", "cpu")
        if torch.as_tensor(n_atoms).dim() != 1:
            raise ValueError(f"n_atoms must be a 1-D tensor of atom counts >= 1, got {_checks.describe(n_atoms)}.")
        n_atoms = _checks.check_integers("n_atoms", n_atoms, low=1, high=_checks.MAX_ATOMS_PER_MOLECULE)
        n_atoms = n_atoms.to(device)
        n_structures = n_atoms.shape[0]
        batch = batch_from_counts(n_atoms)
        if initial is None:
            x = com_free_noise(torch.empty(batch.shape[0], 3, dtype=dtype, device=device), batch, generator)
            h = torch.randn(batch.shape[0], self.n_features, dtype=dtype, device=device, generator=generator)
        else:
            x, h = (v.to(device=device, dtype=dtype) for v in initial)
            if x.shape != (batch.shape[0], 3) or h.shape != (batch.shape[0], self.n_features):
                raise ValueError(f"initial must be (x_T ({batch.shape[0]}, 3), "
                                 f"h_T ({batch.shape[0]}, {self.n_features})), "
                                 f"got {tuple(x.shape)} and {tuple(h.shape)}.")
            x = remove_com(x, batch, n_structures)
        times = torch.linspace(1.0, 0.0, steps + 1, dtype=dtype, device=device)
        iterator = range(steps)
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc=f"sampling ({method}, {n_structures} molecules)", leave=False)
        options = {"method": method, "parameterization": self.parameterization, "schedule": self.schedule}
        for step in iterator:
            t, s = times[step], times[step + 1]
            out_x, out_h = denoiser(x, h, t.expand(n_structures), batch)
            final = step == steps - 1
            noisy = method == "ancestral" and not final
            noise_x = com_free_noise(x, batch, generator) if noisy else None
            noise_h = torch.randn(h.shape, dtype=h.dtype, device=device, generator=generator) if noisy else None
            x = remove_com(reverse_step(x, out_x, batch, t, s, noise=noise_x, final=final, **options),
                           batch, n_structures)
            h = reverse_step(h, out_h, batch, t, s, noise=noise_h, final=final, **options)
        return self.encoding.decode(h), x, batch


def to_atoms(numbers: Tensor, positions: Tensor, batch: Tensor) -> list[ase.Atoms]:
    """Flat generated molecules → a list of ``ase.Atoms`` (positions in Å, no cell)."""
    from ase import Atoms

    numbers, positions, batch = numbers.detach().cpu(), positions.detach().cpu().double(), batch.detach().cpu()
    _checks.check_batch(batch, positions.shape[0])
    batch, n_structures = structure_index(batch)
    order = torch.argsort(batch, stable=True)
    counts = structure_counts(batch, n_structures).tolist()
    return [Atoms(numbers=z.numpy(), positions=x.numpy())
            for z, x in zip(torch.split(numbers[order], counts), torch.split(positions[order], counts), strict=True)]


def sample_molecules(objective: GenerationObjective, denoiser: JointDenoiser, atom_counts: AtomCountDistribution,
                     n: int, *, steps: int = 500, method: str | None = None, seed: int | None = None,
                     batch_size: int = 250, progress: bool = True, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> list[ase.Atoms]:
    """``n`` molecules as ``ase.Atoms``, in batches of ``batch_size`` molecules (shared by the adapters).

    ``seed=None`` draws fresh randomness; an int makes the samples reproducible (sizes and noise) for
    the same ``batch_size`` and device (the noise is drawn batch by batch).
    """
    n = _checks.check_number("n", n, low=0, low_inclusive=True, integer=True)
    batch_size = _checks.check_number("batch_size", batch_size, low=1, low_inclusive=True, integer=True)
    steps = _checks.check_number("steps", steps, low=1, low_inclusive=True, integer=True)
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    sizes = atom_counts.sample(n, generator=torch.Generator().manual_seed(int(seed)) if seed is not None else None)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc="molecules", unit="mol")
    molecules = []
    try:
        for start in range(0, n, batch_size):
            numbers, positions, batch = objective.sample(denoiser, sizes[start : start + batch_size], steps=steps,
                                                         method=method, generator=generator, progress=progress,
                                                         dtype=dtype)
            molecules.extend(to_atoms(numbers, positions, batch))
            if bar is not None:
                bar.update(min(batch_size, n - start))
    finally:
        if bar is not None:
            bar.close()
    return molecules


@torch.no_grad()
def sample_with_model(model: torch.nn.Module, objective: GenerationObjective, denoiser: JointDenoiser,
                      atom_counts: AtomCountDistribution | None, n: int, *, how_to_count: str,
                      **options) -> list[ase.Atoms]:
    """:func:`sample_molecules` with a trained ``model`` (the adapters' ``sample_molecules``).

    ``model`` is put in eval mode for the sampling (its mode is restored after) and fixes the device and
    dtype; ``denoiser`` calls it. ``how_to_count`` completes the error when it has no atom-count histogram
    (how this adapter gets one). ``options``: ``steps``, ``method``, ``seed``, ``batch_size``, ``progress``.
    """
    if atom_counts is None:
        raise ValueError("this model has no atom-count histogram: train it (the histogram of the training split is "
                         f"stored in the checkpoint) or {how_to_count}.")
    parameter = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        return sample_molecules(objective, denoiser, atom_counts, n, device=parameter.device, dtype=parameter.dtype,
                                **options)
    finally:
        model.train(was_training)
