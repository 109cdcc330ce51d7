#!/usr/bin/env bash
# The test command: the whole suite (unit tests, differential tests against RETURNN, and the
# tests that start one shared local Ray). Extra arguments go to pytest, e.g. `-m "not ray"`.
set -uo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
# Ray tests run on the machine's own local Ray, never on one a user has running.
unset RAY_ADDRESS
python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit "$rc"
