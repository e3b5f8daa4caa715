#!/usr/bin/env bash
# Prepare a data set into a fairseq data-bin: scripts/prepare.sh OUT_DIR [--data wmt14_en_de] [...]
py=$("$(dirname "$0")/venv_python.sh") || exit 1
exec "$py" -m structmt.data.cli "$@"
