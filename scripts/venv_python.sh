#!/usr/bin/env bash
# Prints the Python of this checkout's .venv (make install), or says how to get one: the wrapper scripts run it.
py="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/python"
[[ -x $py ]] || {
    echo "error: no $py: run 'make install' (or run the module with a Python that has structmt installed)" >&2
    exit 1
}
echo "$py"
