# Sourced by the scripts in this folder: makes sure .venv exists with the
# project installed (editable, with test extras), reinstalling only when
# pyproject.toml changed. Works on a fresh Debian machine with Python 3.11.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: Python 3.11 or newer is required (found: $("$python" --version 2>&1))" >&2
    exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
    if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
        # Debian ships venv/ensurepip separately.
        echo "installing python3-venv (Debian) ..." >&2
        if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv >/dev/null; fi
    fi
    "$python" -m venv "$venv"
fi
stamp="$venv/.cryptopass-installed"
wanted="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    echo "installing cryptopass-relay and its dependencies into .venv ..." >&2
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
    "$venv/bin/python" -m pip install -q -e "$root[test]" >&2
    echo "$wanted" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
