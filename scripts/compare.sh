#!/usr/bin/env bash
# Dense vs structured on Multi30k en→de: scripts/compare.sh demo|reproduce|finetune [--seeds S …] [--max-update N]
# (python -m structmt.pipeline.recipes --help lists every option; one seed unless --seeds names more)
exec "$(dirname "$0")/../.venv/bin/python" -m structmt.pipeline.recipes "$@"
