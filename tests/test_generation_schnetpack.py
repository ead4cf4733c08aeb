"""SchNetPack de novo generation (schnetpack_ext.GenerationTask): blind to clean types, trains, samples.

Tiny PaiNN/SO3net models and a small database of ASE's bundled molecules written here (no ../shared).
"""

import csv
import glob

import pytest
import torch

pytest.importorskip("schnetpack")

import schnetpack as spk  # noqa: E402
import schnetpack.properties as P  # noqa: E402

from _schnetpack_helpers import small_painn, small_so3net  # noqa: E402
from energyloss_plugins.generation import AtomCountDistribution  # noqa: E402
from schnetpack_ext import (  # noqa: E402
    EnergyLoss,
    GenerationOutput,
    GenerationTask,
    PositionHead,
    TimeEmbedding,
    TypeFeatureEmbedding,
    TypeNoiseHead,
    load_generation_model,
)
from schnetpack_ext.generation import DUMMY_NUMBER  # noqa: E402

ELEMENTS = [1, 6, 7, 8]
MOLECULES = ["H2O", "CH4", "NH3", "C2H6", "CH3OH", "HCN", "C2H4", "CH3CHO", "H2CO", "CH3CN", "C2H2", "HCOOH"]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    from ase.build import molecule

    path = str(tmp_path_factory.mktemp("gen_db") / "molecules.db")
    data = spk.data.ASEAtomsData.create(path, distance_unit="Ang", property_unit_dict={})
    data.add_systems([{} for _ in MOLECULES], [molecule(name) for name in MOLECULES])
    return path


def make_task(loss="energy", representation=small_painn, n=16, lr=3e-3, parameterization="eps"):
    embeddings = [TimeEmbedding(n), TypeFeatureEmbedding(n, ELEMENTS)]
    rep = representation(n_atom_basis=n, n_interactions=1, electronic_embeddings=embeddings)
    model = spk.model.NeuralNetworkPotential(
        representation=rep, input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[PositionHead(n, output_key="position_noise", add_positions=False, remove_mean=True),
                        TypeNoiseHead(n, ELEMENTS, output_key="type_noise")])
    output = GenerationOutput(ELEMENTS, loss_fn=EnergyLoss(loss, coefficient_kwargs={"k0": 5.0}),
                              parameterization=parameterization)
    return GenerationTask(model=model, outputs=[output], optimizer_cls=torch.optim.Adam, optimizer_args={"lr": lr})


def first_batch(db, batch_size=6):
    dataset = spk.data.ASEAtomsData(db, load_properties=[], transforms=[spk.transform.CastTo32()])
    return next(iter(spk.data.AtomsLoader(dataset, batch_size=batch_size, shuffle=False)))


def test_network_cannot_read_clean_types_only_the_noisy_features(db):
    torch.manual_seed(0)
    task = make_task().eval()
    batch = first_batch(db)
    noised = task.objective.noise(batch[P.R], batch[P.Z], batch[P.idx_m], generator=torch.Generator().manual_seed(1))
    inputs = task.network_inputs(batch, noised)
    assert torch.all(inputs[P.Z] == DUMMY_NUMBER)

    other = dict(batch)
    picks = torch.randint(0, 4, batch[P.Z].shape, generator=torch.Generator().manual_seed(2))
    other[P.Z] = torch.tensor(ELEMENTS)[picks]
    assert not torch.equal(other[P.Z], batch[P.Z])
    with torch.no_grad():
        out = task.model(task.network_inputs(batch, noised))
        out_other_batch = task.model(task.network_inputs(other, noised))
        out_other_clean = task.model(task.network_inputs(batch, {**noised, "h0": torch.zeros_like(noised["h0"]),
                                                                  "numbers": other[P.Z]}))
        out_other_noise = task.model(task.network_inputs(batch, {**noised, "h_t": noised["h_t"] + 0.5}))
    for key in ("position_noise", "type_noise"):
        assert torch.equal(out[key], out_other_batch[key])
        assert torch.equal(out[key], out_other_clean[key])
    assert not torch.allclose(out["type_noise"], out_other_noise["type_noise"])  # it does read h_t


def _fixed_loss(task, batch, seeds=range(6)):
    with torch.no_grad():
        values = []
        for seed in seeds:
            new, extra = task._noised_batch(batch, torch.Generator().manual_seed(seed))
            pred = task.model(new)
            values.append(float(task.generation_output.calculate_loss(pred, {P.idx_m: new[P.idx_m], **extra})))
    return sum(values) / len(values)


@pytest.mark.parametrize("loss", ["energy", "mse"])
def test_short_training_lowers_the_loss_and_the_checkpoint_alone_samples(db, tmp_path, loss):
    import pytorch_lightning as pl

    torch.manual_seed(0)
    task = make_task(loss)
    data = spk.data.AtomsDataModule(db, batch_size=4, num_train=10, num_val=2, transforms=[spk.transform.CastTo32()],
                                    num_workers=0, split_file=str(tmp_path / "split.npz"), load_properties=[])
    batch = first_batch(db, batch_size=12)
    before = _fixed_loss(task, batch)
    trainer = pl.Trainer(max_steps=60, accelerator="cpu", logger=pl.loggers.CSVLogger(str(tmp_path)),
                         log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(task, datamodule=data)
    assert _fixed_loss(task, batch) < 0.8 * before

    (metrics,) = glob.glob(str(tmp_path / "lightning_logs" / "version_*" / "metrics.csv"))
    with open(metrics) as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("train_loss") for r in rows) and any(r.get("val_loss") for r in rows)

    train_sizes = {len(data.train_dataset[i][P.Z]) for i in range(len(data.train_dataset))}
    assert task.atom_counts is not None and {n for n, w in enumerate(task.atom_counts.histogram) if w} == train_sizes
    path = str(tmp_path / "model.ckpt")
    trainer.save_checkpoint(path)
    loaded = load_generation_model(path)
    assert loaded.atom_counts.histogram == task.atom_counts.histogram and loaded.elements == tuple(ELEMENTS)
    samples = loaded.sample_molecules(5, steps=6, seed=0, batch_size=2, progress=False)
    again = loaded.sample_molecules(5, steps=6, seed=0, batch_size=2, progress=False)
    assert len(samples) == 5
    for a, b in zip(samples, again, strict=True):
        assert len(a) in train_sizes and set(a.numbers.tolist()) <= set(ELEMENTS)
        assert (a.numbers == b.numbers).all() and abs(a.positions - b.positions).max() < 1e-3
        assert abs(a.positions.mean(0)).max() < 1e-3 * max(1.0, abs(a.positions).max())


@pytest.mark.parametrize("representation", [small_painn, small_so3net])
def test_schnetpack_sampler_is_rotation_equivariant(representation):
    """Rotating the initial noise rotates the samples of a PaiNN/SO3net model (DDIM, float64)."""
    torch.manual_seed(1)
    task = make_task(representation=representation).double().eval()
    obj = task.objective
    g = torch.Generator().manual_seed(3)
    counts = torch.tensor([5, 3])
    batch = torch.repeat_interleave(torch.arange(2), counts)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    h = torch.randn(8, obj.n_features, generator=g, dtype=torch.float64)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    rot = q * torch.sign(torch.diagonal(r))
    den = task.denoiser()
    z1, p1, _ = obj.sample(den, counts, steps=6, method="ddim", initial=(x, h), dtype=torch.float64)
    z2, p2, _ = obj.sample(den, counts, steps=6, method="ddim", initial=(x @ rot.T, h), dtype=torch.float64)
    assert torch.equal(z1, z2)
    assert torch.allclose(p1 @ rot.T, p2, atol=1e-7 * float(p1.abs().max()))
    centre = torch.zeros(2, 3, dtype=torch.float64).index_add_(0, batch, p2)
    assert centre.abs().max() < 1e-9 * float(p2.abs().max())


def test_flow_matching_variant_trains_and_samples_with_euler_steps(db):
    torch.manual_seed(2)
    task = make_task(parameterization="velocity")
    batch = first_batch(db, batch_size=12)
    before = _fixed_loss(task, batch)
    optimizer = torch.optim.Adam(task.parameters(), lr=3e-3)
    for step in range(40):
        new, extra = task._noised_batch(batch, torch.Generator().manual_seed(100 + step))
        loss = task.generation_output.calculate_loss(task.model(new), {P.idx_m: new[P.idx_m], **extra})
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert _fixed_loss(task, batch) < before
    task.atom_counts = AtomCountDistribution.from_counts([3, 5])
    molecules = task.sample_molecules(3, steps=4, seed=0, progress=False)  # method defaults to euler
    assert [len(m) in (3, 5) for m in molecules] == [True] * 3


def test_generation_task_needs_one_generation_output_and_a_histogram_to_sample(db):
    import pytorch_lightning as pl

    task = make_task()
    with pytest.raises(ValueError, match="GenerationOutput"):
        GenerationTask(model=task.model, outputs=[])
    with pytest.raises(ValueError, match="histogram"):
        task.sample_molecules(2, steps=2, progress=False)
    dataset = spk.data.ASEAtomsData(db, load_properties=[], transforms=[spk.transform.CastTo32()])
    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="atom_counts"):  # plain dataloaders: nothing to count from
        trainer.fit(task, train_dataloaders=spk.data.AtomsLoader(dataset, batch_size=4))


def test_shipped_configs_compose():
    from hydra import compose, initialize_config_module

    import schnetpack_ext  # noqa: F401  (registers the resolvers)

    for name in ("energyloss_generation", "energyloss_generation_paper"):
        with initialize_config_module(config_module="schnetpack.configs", version_base=None):
            cfg = compose(config_name="train", overrides=[f"experiment={name}", "data.datapath=/tmp/x.db",
                                                          "globals.loss=mse"])
        assert cfg.task._target_ == "schnetpack_ext.GenerationTask"
        assert cfg.task.outputs[0].loss_fn.loss == "mse"
