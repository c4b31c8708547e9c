#!/usr/bin/env bash
# Set up and run the test suite: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck disable=SC1091
source scripts/setup.sh
set +e
python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then  # pytest: no tests collected (e.g. a -k filter matched nothing)
    echo "no tests were collected"
    exit 0
fi
exit "$status"
