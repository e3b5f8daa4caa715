#!/usr/bin/env bash
# Dense vs structured on Multi30k en→de: scripts/compare.sh demo|reproduce|finetune [--seeds S …] [--max-update N]
# (python -m structmt.pipeline.recipes --help lists every option; one seed unless --seeds names more)
py=$("$(dirname "$0")/venv_python.sh") || exit 1
exec "$py" -m structmt.pipeline.recipes "$@"
