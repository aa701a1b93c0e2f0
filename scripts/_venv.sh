# Sourced by demo.sh and test.sh: make .venv with a Python of 3.11 or newer.
python=${PYTHON:-python3}
version_ok='import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'
if ! command -v "$python" >/dev/null 2>&1; then
  echo "instrument needs Python 3.11 or newer; there is no '$python' on PATH." >&2
  echo "Point PYTHON at one, e.g. PYTHON=python3.12 $0" >&2
  exit 1
fi
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
  echo "== creating .venv with $("$python" -V 2>&1)"
  if ! "$python" -m venv .venv; then
    # Debian's python3 lacks ensurepip until python3-venv is installed.
    echo "could not create .venv with $python; on Debian/Ubuntu: apt-get install python3-venv" >&2
    echo "(prefix sudo unless you are root)" >&2
    rm -rf .venv
    exit 1
  fi
fi

# install_once EXTRAS: pip install -e ".[EXTRAS]" unless the same pyproject.toml and extras
# were installed into this .venv before (a stamp file keyed on both): a rerun skips pip.
install_once() {
  local stamp=.venv/.instrument-installed key
  key="$1 $(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [[ -f $stamp && $(<"$stamp") == "$key" ]]; then
    echo "== .venv is up to date with pyproject.toml (.[$1]): skipping pip"
    return 0
  fi
  echo "== installing the package with .[$1] into .venv (pip; the first time takes a minute)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[$1]"
  echo "$key" >"$stamp"
}
