#!/usr/bin/env bash
# Run the test suite: sets up .venv with the runtime and development packages, then runs pytest.
# Extra arguments go to pytest, e.g. `./run_tests.sh -k prepare`.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
.venv/bin/python -m pytest -q "$@"
