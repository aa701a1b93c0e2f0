#!/usr/bin/env bash
# Set up everything the tests need on a fresh machine, then run lint, types and the suite.
# Installs Debian's prometheus-pushgateway, prometheus and prometheus-alertmanager when missing
# (the tests start them on free loopback ports themselves) and the package with its test extras (the LLM SDKs
# of the sdk matrix included) into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v prometheus-pushgateway >/dev/null || need+=(prometheus-pushgateway)
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
if ((${#need[@]})); then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || {
      echo "tests need ${need[*]}: install them with apt-get as root (there is no sudo here)" >&2
      exit 1
    }
    sudo="sudo"
  fi
  echo "== installing ${need[*]} (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

source scripts/_venv.sh
install_once dev,cli,sdk

export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff"
ruff check instrument tests benchmarks
ruff format --check instrument tests benchmarks
echo "== mypy --strict"
mypy --strict instrument tests/typing/api.py
echo "== pytest"
# coverage starts before pytest, so the modules its plugin (instrument.testing) imports
# early are measured too; pytest's exit status is kept through the report.
rm -f .coverage .coverage.*
status=0
coverage run -m pytest -m "" "$@" || status=$?
if ((status == 0)); then
  echo "== coverage (branch) of instrument/"
  coverage report --fail-under=90
fi
((status == 0)) || exit "$status"
echo "== benchmarks (quick smoke run)"
python -m benchmarks --quick --summary --output .benchmarks-quick.json
