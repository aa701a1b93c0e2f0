# Sourced by demo.sh and test.sh: make .venv with a Python of 3.11 or newer.
python=${PYTHON:-python3}
version_ok='import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'
if ! "$python" -c "$version_ok" 2>/dev/null; then
  echo "instrument needs Python 3.11 or newer; $python is $("$python" -V 2>&1)." >&2
  echo "Point PYTHON at one, e.g. PYTHON=python3.12 $0" >&2
  exit 1
fi
if [[ -x .venv/bin/python ]] && ! .venv/bin/python -c "$version_ok" 2>/dev/null; then
  echo "== .venv has an older Python: recreating it"
  rm -rf .venv
fi
if [[ ! -x .venv/bin/python ]]; then
  echo "== creating .venv"
  "$python" -m venv .venv
fi
