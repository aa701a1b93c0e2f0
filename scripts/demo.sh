#!/usr/bin/env bash
# Set up a venv with the CLI extras and run the end-to-end demo (no server needed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[cli]"
exec .venv/bin/instrument demo "$@"
