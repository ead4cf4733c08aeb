"""A tiny TorchMD-Net model configuration shared by the tests that build one (fast on CPU)."""

from __future__ import annotations


def tiny_model_args(model: str = "tensornet", output_model: str = "PositionOutput", **overrides) -> dict:
    """TorchMD-Net's command-line defaults with a 1-layer, 16-feature model; ``overrides`` win."""
    from torchmdnet_ext.cli import get_argparse

    args = vars(get_argparse().parse_args([]))
    args.update(model=model, output_model=output_model, embedding_dimension=16, num_layers=1, num_rbf=8,
                cutoff_upper=4.0, max_num_neighbors=32, num_heads=2, derivative=False)
    args.update(overrides)
    return args
