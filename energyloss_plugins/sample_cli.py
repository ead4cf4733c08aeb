"""``energyloss-sample``: structures out of a trained checkpoint of any registered adapter, without Python.

    energyloss-sample gen.ckpt -n 1000 -o samples.db                 # generation: N new molecules
    energyloss-sample last.ckpt --inputs mmff.xyz -o predicted.extxyz  # structure: predicted geometries
    energyloss-sample diff.ckpt --inputs mols.xyz -n 5 -o confs.xyz    # diffusion: 5 conformers per molecule

The checkpoint's adapter (SchNetPack, TorchMD-Net) and kind (structure, diffusion, generation) are
found through :mod:`energyloss_plugins.adapters`. The output format follows the file name
(``.db``: ASE database, ``.extxyz``/``.xyz``, anything ``ase.io.write`` knows); it is checked before
any work, written to a temporary file beside it and renamed, so an interrupted run (Ctrl-C: exit
status 130) leaves no partial file, and an existing file is only replaced with ``--overwrite``.
Samples whose positions diverged (NaN or Inf) are counted, reported and left out of the file unless
``--keep-diverged``. Exit status 2 for usage errors (missing or unreadable file, unknown checkpoint,
bad option, framework not installed), with a one-line message; 1 when every sample diverged.

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
import time

from energyloss_plugins.adapters import AdapterUnavailableError, adapter_names, resolve
from energyloss_plugins.console import ArgumentParser, UsageError, check_device, console_script, positive_int
from energyloss_plugins.io import check_output_path, read_structures, structure_format, write_structures
from energyloss_plugins.optional import add_version_option, install_line

PROG = "energyloss-sample"
SAMPLERS = ("ancestral", "ddim", "euler")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog=PROG, description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_option(p)
    p.add_argument("checkpoint", help="trained model: Lightning .ckpt, SchNetPack best_model, ...")
    p.add_argument("-o", "--output", required=True, help="output file (.db, .extxyz, .xyz, ...)")
    p.add_argument("-n", "--num", type=positive_int("-n"), default=None,
                   help="generation: molecules to sample (required); "
                   "diffusion: conformers per input molecule (default 1)")
    p.add_argument("--inputs", default=None,
                   help="structure model: input geometries; diffusion model: the molecules to sample conformers for")
    p.add_argument("--steps", type=positive_int("--steps"), default=None, help="sampler steps (default: the adapter's)")
    p.add_argument("--method", default=None, choices=SAMPLERS,
                   help="sampler: ancestral, ddim or euler (default: by parameterisation)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler noise (default 0; -1: fresh randomness)")
    p.add_argument("--batch-size", type=positive_int("--batch-size"), default=64,
                   help="structures per network call (default 64)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--framework", default=None,
                   help=f"adapter name, to skip detection (registered: {', '.join(adapter_names())})")
    p.add_argument("--no-align", action="store_true", help="structure model: keep predictions in the model's frame")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow a full unpickle of the checkpoint (best_model, old or foreign files): it can run "
                   "code from the file; only for files you made or trust")
    p.add_argument("--keep-diverged", action="store_true",
                   help="also write samples whose positions diverged (NaN/Inf; marked info['diverged'])")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> list:
    """Sample or predict as the arguments say; returns the structures (not yet written)."""
    from energyloss_plugins.ase import predict_structures, run_diffusion_model

    # Everything the user can get wrong is checked before the model is loaded.
    check_output_path(args.output, name="-o", overwrite=args.overwrite, flag="--overwrite")
    structure_format(args.output, name="-o")
    check_device(args.device)
    if os.path.isdir(args.checkpoint) or (os.path.isfile(args.checkpoint) and os.path.getsize(args.checkpoint) == 0):
        kind = "a directory" if os.path.isdir(args.checkpoint) else "empty"
        raise UsageError(f"checkpoint {args.checkpoint} is {kind}; give a trained model file (.ckpt, best_model).")
    images = read_structures(args.inputs, name="--inputs") if args.inputs is not None else None
    try:
        resolved = resolve(args.checkpoint, args.framework, device=args.device, trusted=args.trust_checkpoint)
    except AdapterUnavailableError as err:
        raise UsageError(f"{err}; {install_line('all')}") from None
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
    if images is None:
        raise UsageError(f"{args.checkpoint} is a {name}: give the input structures with --inputs FILE.")
    if kind == "structure":
        if args.num is not None:
            raise UsageError(f"{args.checkpoint} is a {name}: it predicts one structure per input; drop -n.")
        return predict_structures(resolved.model, images, framework=resolved.framework, batch_size=args.batch_size,
                                  device=args.device, align_to_input=not args.no_align, progress=not args.quiet)
    if kind == "diffusion":
        templates = [atoms for atoms in images for _ in range(args.num or 1)]
        return run_diffusion_model(resolved.model, templates, framework=resolved.framework, keep_diverged=True,
                                   **sampler)
    raise UsageError(f"{args.checkpoint}: the {resolved.framework} adapter reported an unknown kind {kind!r}.")


@console_script(PROG, interrupted="interrupted; no output file was written.")
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``energyloss-sample``; returns the exit status."""
    from energyloss_plugins.ase import split_diverged

    args = build_parser().parse_args(argv)
    start = time.time()
    images = run(args)
    finite, diverged = split_diverged(images)
    if diverged and not args.keep_diverged:
        if not finite:
            print(f"{PROG}: error: all {len(images)} samples diverged (NaN or Inf positions); nothing written. "
                  "Use more --steps or a better-trained checkpoint.", file=sys.stderr)
            return 1
        images = finite
    for i in diverged if args.keep_diverged else ():
        images[i].info["diverged"] = True
    write_structures(args.output, images, overwrite=args.overwrite, name="-o", flag="--overwrite")
    note = ""
    if diverged:
        note = (f"; {len(diverged)} diverged (NaN/Inf positions) " +
                ("kept, marked info['diverged']" if args.keep_diverged else "left out (--keep-diverged keeps them)"))
    print(f"wrote {len(images)} structures to {args.output} ({time.time() - start:.1f} s){note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
