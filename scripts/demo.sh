#!/usr/bin/env bash
# Set up a venv with the CLI extras and run the end-to-end demo (no server needed).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
install_once cli
echo "== running the demo: instrument demo $*"
exec .venv/bin/instrument demo "$@"
