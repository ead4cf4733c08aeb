"""Console script ``energyloss-data``: build and inspect offline structure datasets.

energyloss-data build nci -o qm9like/data.db --max-molecules 500 --max-heavy-atoms 9 --elements C,N,O,F
energyloss-data build g2 -o g2/data.db --method as-given --inputs mmff,etkdg
energyloss-data info qm9like/data.db

User errors (bad options, unreadable sources, a source where no molecule can be processed) print one
line and exit with status 2; Ctrl-C exits with 130 and keeps every molecule written so far (rerun the
same command to resume).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from energyloss_plugins.console import ArgumentParser, console_script
from energyloss_plugins.optional import add_version_option


def _parser() -> argparse.ArgumentParser:
    from energyloss_plugins.data.settings import INPUT_KINDS, METHODS
    from energyloss_plugins.data.sources import SOURCE_NAMES

    p = ArgumentParser(
        prog="energyloss-data", description="Offline molecular datasets for structure tasks (ASE db)."
    )
    add_version_option(p)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser(
        "build", help="build (or resume building) a dataset", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    b.add_argument("source", help=f"{', '.join(SOURCE_NAMES)}, a .smi file, or an ASE-readable structure file")
    b.add_argument("-o", "--out", required=True, help="output database (.db)")
    b.add_argument("--method", default="mmff", choices=METHODS, help="how targets are made")
    b.add_argument(
        "--inputs", default="cheap,thermal", help=f"comma-separated input kinds from {', '.join(INPUT_KINDS)}"
    )
    b.add_argument("--n-thermal", type=int, default=1, help="thermal samples per molecule")
    b.add_argument("--temperature", type=float, default=300.0, help="K, for thermal inputs")
    b.add_argument("--n-etkdg", type=int, default=1, help="ETKDG embeddings per molecule")
    b.add_argument("--max-molecules", type=int, default=None, help="stop after this many molecules")
    b.add_argument(
        "--max-heavy-atoms", type=int, default=None, help="keep molecules with at most this many heavy atoms"
    )
    b.add_argument("--elements", default=None, help="allowed elements, e.g. C,N,O,F (H implied)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--split", default="0.8,0.1,0.1", help="train,val,test fractions of molecules")
    b.add_argument("--split-file", default=None, help="default: <name>.split.npz beside <name>.db")
    b.add_argument("--workers", type=int, default=1, help="processes")
    b.add_argument("--no-resume", action="store_true", help="discard an interrupted build and start over")
    b.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the output even if energyloss-data did not write it "
        "(by default only its own databases are replaced)",
    )
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--json", action="store_true", help="print the report as JSON")
    i = sub.add_parser("info", help="print a dataset's metadata and counts")
    i.add_argument("path", help="database (.db)")
    return p


@console_script("energyloss-data", interrupted="interrupted; every molecule written so far is kept. Rerun the same "
                                              "command to resume.")
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``energyloss-data``; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "info":
        from energyloss_plugins.data.reader import read_metadata

        print(json.dumps(read_metadata(args.path), indent=2, default=str))
        return 0

    from energyloss_plugins.data.builder import build_dataset
    from energyloss_plugins.data.report import report_json

    try:
        split = tuple(float(x) for x in args.split.split(","))
    except ValueError:
        raise ValueError(
            f"--split must be three comma-separated fractions such as 0.8,0.1,0.1, got {args.split!r}."
        ) from None
    report = build_dataset(
        args.source,
        args.out,
        method=args.method,
        inputs=args.inputs,
        n_thermal=args.n_thermal,
        temperature=args.temperature,
        n_etkdg=args.n_etkdg,
        max_molecules=args.max_molecules,
        max_heavy_atoms=args.max_heavy_atoms,
        elements=args.elements,
        seed=args.seed,
        split=split,
        split_file=args.split_file,
        resume=not args.no_resume,
        overwrite=args.overwrite,
        workers=args.workers,
        progress=not args.no_progress,
    )
    print(report_json(report) if args.json else report)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
