#!/usr/bin/env bash
# The test command, two pytest invocations; both must pass:
#  1. the whole suite (unit tests, differential tests against RETURNN, and the tests that start one
#     shared local Ray), without the `cluster_launcher` tests;
#  2. the `cluster_launcher` tests (tests/test_ray_up.py: `ray up` / `ray submit` / `ray down` over ssh
#     to this machine). They run on their own because the cluster launcher runs `ray stop`, which
#     would end invocation 1's shared Ray.
# Extra arguments go to invocation 1, e.g. `-m "not ray"`; invocation 2 then does not run.
# `bash scripts/test.sh -m cluster_launcher` runs only the cluster-launcher tests.
# An invocation that collects no tests (pytest's exit code 5) is an error.
set -uo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
# Ray tests run on the machine's own local Ray, never on one a user has running, and with tokens of
# their own (a user's RAY_AUTH_TOKEN for a cluster would otherwise win).
unset RAY_ADDRESS RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH
# A new empty home, as on a machine that never ran Ray: nothing an earlier run left in the real one
# (~/.ray/auth_token, caches) can hide a missing step. Removed when the tests end.
test_home=$(mktemp -d "${TMPDIR:-/tmp}/returnn-ray-test-home.XXXXXX")
trap 'rm -rf "$test_home"' EXIT
export HOME=$test_home

run_pytest() {
  python -m pytest "$@"
  local rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "error: pytest collected no tests (pytest $*)" >&2
    return 1
  fi
  return "$rc"
}

run_pytest -m "not cluster_launcher" "$@"
rc=$?
if [ "$#" -eq 0 ]; then
  run_pytest -m cluster_launcher
  launcher_rc=$?
  if [ "$rc" -eq 0 ]; then
    rc=$launcher_rc
  fi
fi
exit "$rc"
