#!/usr/bin/env bash
# Prepare a data set into a fairseq data-bin: scripts/prepare.sh OUT_DIR [--data wmt14_en_de] [...]
exec "$(dirname "$0")/../.venv/bin/python" -m structmt.data.cli "$@"
