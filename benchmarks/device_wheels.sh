#!/usr/bin/env bash
# Gather what benchmarks/device_suite.py needs on a GPU machine that has Python 3.12, torch,
# Lightning, PyG, torchmetrics, numpy/scipy/matplotlib, h5py, pyyaml and sympy but no network and
# none of SchNetPack, ASE, Hydra/omegaconf (+antlr4), matscipy, vesin or RDKit (docs/benchmarks.md).
#
#   benchmarks/device_wheels.sh [DIR] [QM7]     # here, with PyPI reachable; DIR defaults to wheels/
#
# DIR then holds the pinned wheels (versions read from requirements/lock.txt, so exactly what CI
# tests), this project's own wheel (its console scripts energyloss-data / energyloss-evaluate and
# entry points) and the QM7 file. Checks that the whole fits in the 64 MiB a device call may carry,
# and prints the one command that installs and runs the suite there. DIR is ignored by git.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=${1:-$ROOT/wheels}
QM7=${2:-$ROOT/../shared/data/qm7/qm7_pbe0.extxyz.gz}
PY=${PYTHON:-python3}
LIMIT_MIB=64
# Missing on the GPU image and imported by what the suite runs. SchNetPack's other requirements are
# there (torch, lightning, torchmetrics, h5py, pyyaml, sympy, tqdm, rich, tensorboard) or are not
# imported by spktrain (tensorboardX, hydra-colorlog, pre-commit, black).
PACKAGES="schnetpack ase hydra-core omegaconf antlr4-python3-runtime matscipy vesin rdkit petname fasteners dirsync
torch-ema progressbar"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"

pin() {  # the version requirements/lock.txt pins for a distribution name (case and -/_ insensitive)
    local want
    want=$(echo "$1" | tr 'A-Z_' 'a-z-')
    awk -F'==' -v w="$want" '{n=tolower($1); gsub("_","-",n); if (n==w) {print $2; exit}}' "$ROOT/requirements/lock.txt"
}

mkdir -p "$DIR"
rm -f "$DIR"/*.whl
for name in $PACKAGES; do
    version=$(pin "$name")
    [ -n "$version" ] || { echo "device_wheels: $name is not pinned in requirements/lock.txt" >&2; exit 2; }
    # shellcheck disable=SC2086
    if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            $PLATFORMS -d "$DIR" "$name==$version" 2>/dev/null; then
        # sdist only (antlr4-python3-runtime 4.9.3): a pure-Python wheel built here runs anywhere
        "$PY" -m pip wheel -q --no-deps -w "$DIR" "$name==$version"
    fi
done
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DIR" "$ROOT"
if [ -f "$QM7" ]; then
    cp "$QM7" "$DIR/qm7_pbe0.extxyz.gz"
else
    echo "device_wheels: no QM7 file at $QM7 (pass it as the second argument); the generation section needs it" >&2
fi

echo "$DIR:"
ls -l "$DIR" | awk 'NR > 1 {printf "  %8.2f MiB  %s\n", $5 / 1048576, $9}'
total=$(du -cb "$DIR"/* | tail -1 | cut -f1)
tree=$(git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 du -cb 2>/dev/null) | awk '/total$/ {s += $1} END {print s}')
printf 'carried: %.2f MiB; tracked working tree: %.2f MiB; together %.2f MiB of %d MiB\n' \
    "$(echo "$total / 1048576" | bc -l)" "$(echo "$tree / 1048576" | bc -l)" \
    "$(echo "($total + $tree) / 1048576" | bc -l)" "$LIMIT_MIB"
if [ $((total + tree)) -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "device_wheels: over $LIMIT_MIB MiB; leave out rdkit (the suite then reports validity as null)" >&2
    exit 1
fi
rel=$(realpath --relative-to="$ROOT" "$DIR")
cat <<EOF
On the GPU machine, in the repository root (carry: $rel):
  python3 -m pip install -q --no-deps --no-index --no-compile $rel/*.whl && \\
  PYTHONUNBUFFERED=1 PYTHONPATH=\$PWD python3 benchmarks/device_suite.py --out /tmp/suite --qm7 $rel/qm7_pbe0.extxyz.gz && \\
  cp /tmp/suite/results.json /tmp/suite/results.md \$OUT/
EOF
