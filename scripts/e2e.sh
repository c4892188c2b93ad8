#!/usr/bin/env bash
# End-to-end test: drives a built promptgate binary with the official openai Python SDK
# (tests/e2e/test_openai_sdk.py) against a mock upstream, the built-in echo upstream and
# promptgate's own errors.
#
#   scripts/e2e.sh BINARY          e.g. scripts/e2e.sh target/debug/promptgate
#
# Creates .venv/ at the repo root when missing and installs tests/e2e/requirements.txt into it
# (only when that file changed since the last install). Extra arguments after BINARY go to pytest.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 BINARY [PYTEST_ARGS...]" >&2
    exit 2
fi
bin=$1
shift
if [[ ! -f $bin || ! -x $bin ]]; then
    echo "e2e: \`$bin\` is not an executable file (build it first: cargo build)" >&2
    exit 2
fi
bin_abs="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
requirements="$root/tests/e2e/requirements.txt"
python=${PYTHON:-python3}

# A venv whose interpreter is gone (e.g. Python was upgraded) is rebuilt from scratch.
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    echo "e2e: creating $venv" >&2
    "$python" -m venv --clear "$venv"
fi

# Install only when the requirements (or the venv's Python) changed since the last install.
stamp_key="$( { cat "$requirements"; "$venv/bin/python" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)"
stamp="$venv/.e2e-requirements-$stamp_key"
if [[ ! -f $stamp ]]; then
    echo "e2e: installing tests/e2e/requirements.txt into .venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
    rm -f "$venv"/.e2e-requirements-*
    touch "$stamp"
fi

cd "$root"
export PROMPTGATE_BIN="$bin_abs"
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/e2e "$@"
