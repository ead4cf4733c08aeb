"""``energyloss-sample``: structures out of a trained checkpoint of any registered adapter, without Python.

    energyloss-sample gen.ckpt -n 1000 -o samples.db                 # generation: N new molecules
    energyloss-sample last.ckpt --inputs mmff.xyz -o predicted.extxyz  # structure: predicted geometries
    energyloss-sample diff.ckpt --inputs mols.xyz -n 5 -o confs.xyz    # diffusion: 5 conformers per molecule

The checkpoint's adapter (SchNetPack, TorchMD-Net) and kind (structure, diffusion, generation) are
found through :mod:`energyloss_plugins.adapters`. The output format follows the file name
(``.db``: ASE database, ``.extxyz``/``.xyz``, anything ``ase.io.write`` knows); it is written to a
temporary file beside it and renamed, so an interrupted run leaves no partial file, and an existing
file is only replaced with ``--overwrite``. Exit status 2 for usage errors (missing file, unknown
checkpoint, framework not installed), with a one-line message.

Safe to open: checkpoints are read with ``weights_only=True`` (tensors, numbers, strings; the
SchNetPack tasks' model description is rebuilt from an allow-list of classes), so a file cannot run
code. A file that needs a full unpickle (SchNetPack's ``best_model``, a checkpoint from elsewhere)
is refused unless you pass ``--trust-checkpoint``: that unpickles it, which can run any code in it,
so use it only for files you made or trust.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

from energyloss_plugins.adapters import AdapterUnavailableError, adapter_names, resolve
from energyloss_plugins.optional import MissingOptionalDependency, add_version_option, install_line


class UsageError(Exception):
    """A problem with the command line or its files; reported in one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="energyloss-sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_option(p)
    p.add_argument("checkpoint", help="trained model: Lightning .ckpt, SchNetPack best_model, ...")
    p.add_argument("-o", "--output", required=True, help="output file (.db, .extxyz, .xyz, ...)")
    p.add_argument("-n", "--num", type=int, default=None,
                   help="generation: molecules to sample (required); "
                   "diffusion: conformers per input molecule (default 1)")
    p.add_argument("--inputs", default=None,
                   help="structure model: input geometries; diffusion model: the molecules to sample conformers for")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the adapter's)")
    p.add_argument("--method", default=None, help="sampler: ancestral, ddim or euler (default: by parameterisation)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler noise (default 0; -1: fresh randomness)")
    p.add_argument("--batch-size", type=int, default=64, help="structures per network call (default 64)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--framework", default=None,
                   help=f"adapter name, to skip detection (registered: {', '.join(adapter_names())})")
    p.add_argument("--no-align", action="store_true", help="structure model: keep predictions in the model's frame")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a full unpickle of the checkpoint (best_model, old or foreign files): it can run "
                   "code from the file; only for files you made or trust")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _read_inputs(path: str) -> list:
    from ase.io import read

    if not os.path.exists(path):
        raise UsageError(f"--inputs {path!r} does not exist.")
    images = read(path, index=":")
    if not images:
        raise UsageError(f"--inputs {path!r} holds no structures.")
    return images


def write_atomically(path: str, images: list, overwrite: bool = False) -> None:
    """Write ``images`` with ``ase.io.write`` to a temporary file beside ``path``, then rename it to ``path``."""
    from ase.io import write

    if os.path.exists(path) and not overwrite:
        raise UsageError(f"{path} exists; pass --overwrite to replace it.")
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    # Same suffix as the target, so ase.io picks the same format.
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=os.path.splitext(base)[1] or ".extxyz", dir=directory)
    os.close(fd)
    os.remove(tmp)  # ASE's database refuses to open an empty file
    try:
        write(tmp, images, format=None if os.path.splitext(base)[1] else "extxyz")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def run(args: argparse.Namespace) -> list:
    """Sample or predict as the arguments say; returns the structures (not yet written)."""
    from energyloss_plugins.ase import predict_structures, run_diffusion_model

    if os.path.exists(args.output) and not args.overwrite:
        raise UsageError(f"{args.output} exists; pass --overwrite to replace it.")
    if not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise UsageError(f"The directory of --output {args.output!r} does not exist.")
    if args.num is not None and args.num < 1:
        raise UsageError(f"-n must be a positive count, got {args.num}.")
    try:
        resolved = resolve(args.checkpoint, args.framework, device=args.device, trusted=args.trust_checkpoint)
    except FileNotFoundError as err:
        raise UsageError(str(err)) from None
    except ValueError as err:
        raise UsageError(str(err)) from None
    seed = None if args.seed == -1 else args.seed
    sampler = {"method": args.method, "seed": seed, "batch_size": args.batch_size, "device": args.device,
               "progress": not args.quiet}
    if args.steps is not None:
        sampler["steps"] = args.steps
    kind, name = resolved.kind, f"{resolved.framework} {resolved.kind} model"
    if kind == "generation":
        if args.inputs is not None:
            raise UsageError(f"{args.checkpoint} is a {name}: it takes no --inputs; give -n.")
        if args.num is None:
            raise UsageError(f"{args.checkpoint} is a {name}: give the number of molecules with -n.")
        return resolved.adapter.generate(resolved.model, args.num, **sampler)
    if args.inputs is None:
        raise UsageError(f"{args.checkpoint} is a {name}: give the input structures with --inputs FILE.")
    images = _read_inputs(args.inputs)
    if kind == "structure":
        if args.num is not None:
            raise UsageError(f"{args.checkpoint} is a {name}: it predicts one structure per input; drop -n.")
        return predict_structures(resolved.model, images, framework=resolved.framework, batch_size=args.batch_size,
                                  device=args.device, align_to_input=not args.no_align, progress=not args.quiet)
    if kind == "diffusion":
        templates = [atoms for atoms in images for _ in range(args.num or 1)]
        return run_diffusion_model(resolved.model, templates, framework=resolved.framework, **sampler)
    raise UsageError(f"{args.checkpoint}: the {resolved.framework} adapter reported an unknown kind {kind!r}.")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.time()
    try:
        images = run(args)
        write_atomically(args.output, images, overwrite=args.overwrite)
    except (UsageError, AdapterUnavailableError) as err:
        print(f"energyloss-sample: error: {err}", file=sys.stderr)
        return 2
    except MissingOptionalDependency as err:  # its message names the extra to install
        print(f"energyloss-sample: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:  # a framework an adapter needs is missing
        print(f"energyloss-sample: error: {err}; {install_line('all')}", file=sys.stderr)
        return 2
    print(f"wrote {len(images)} structures to {args.output} ({time.time() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
