#!/usr/bin/env bash
# Run the test suite; pytest's exit code 5 (no tests collected) is a failure, not a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
# The import rule first (pyproject.toml [tool.importlinter]): a broken layer or an import cycle fails the suite.
if ! .venv/bin/lint-imports --no-cache >/tmp/recforge-lint-imports.$$ 2>&1; then
  sed -n '/Broken contracts/,$p' /tmp/recforge-lint-imports.$$ >&2
  rm -f /tmp/recforge-lint-imports.$$
  echo "run_tests: import contracts broken (see above); fix the imports, then rerun make test" >&2
  exit 1
fi
rm -f /tmp/recforge-lint-imports.$$
.venv/bin/python -m pytest -q "$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "run_tests: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
