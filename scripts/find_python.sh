#!/usr/bin/env bash
# Print the path of a working Python 3.12 interpreter, or fail with a hint.
# Order: $PYTHON if set, python3.12 on PATH, then pyenv's 3.12.x installs
# (pyenv's shim fails unless a 3.12 version is selected, so we ask pyenv directly).
set -u
works() { "$1" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; }
if [ -n "${PYTHON:-}" ]; then
  works "$PYTHON" && { command -v "$PYTHON"; exit 0; }
  echo "find_python: PYTHON=$PYTHON is not a working Python 3.12" >&2; exit 1
fi
for cand in python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do
  command -v "$cand" >/dev/null 2>&1 && works "$cand" && { command -v "$cand"; exit 0; }
done
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for cand in $(ls -d "$root"/versions/3.12*/bin/python3.12 2>/dev/null | sort -V -r); do
    works "$cand" && { echo "$cand"; exit 0; }
  done
fi
echo "find_python: no Python 3.12 found. Install one (e.g. 'pyenv install 3.12') or run 'make PYTHON=/path/to/python3.12'." >&2
exit 1
