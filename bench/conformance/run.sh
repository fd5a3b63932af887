#!/bin/bash
# Run SQLAlchemy's own ORM tests (SQLite) with ormtune off or on (docs/conformance.md).
#
#   bench/conformance/run.sh SQLALCHEMY_SOURCE RESULTS_DIR base|A|B|C [pytest arguments]
#
# SQLALCHEMY_SOURCE is a SQLAlchemy source tree (its lib/ and test/, README.unittests.rst);
# its own lib/ is imported, so the tests match the library. Without pytest arguments the
# files listed in files.txt run; files-extra.txt is the second set in docs/conformance.md.
# Results go to RESULTS_DIR/results-NAME.xml (JUnit); NAME is the variant unless OUT is set.
# ORMTUNE_COUNT=1 and ORMTUNE_RELAX=1 as in ormtune_on.py; PYTHON overrides the interpreter.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
source_tree=$(cd "$1" && pwd)
results=$(mkdir -p "$2" && cd "$2" && pwd)
name=$3
shift 3
plugin=()
if [ "$name" != base ]; then plugin=(-p ormtune_on); fi
if [ $# -eq 0 ]; then mapfile -t files < "$here/files.txt"; set -- "${files[@]}"; fi
cd "$source_tree"
ORMTUNE_VARIANT=$name PYTHONPATH="$source_tree/lib:$root/src:$here" \
  "${PYTHON:-$root/.venv/bin/python}" -m pytest -p no:randomly -p no:ormtune -p no:cacheprovider \
  "${plugin[@]}" -q -o addopts="--tb short -r fE --maxfail=100000 -p warnings -p logging --strict-markers" \
  --junitxml="$results/results-${OUT:-$name}.xml" "$@"
