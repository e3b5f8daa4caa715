#!/usr/bin/env bash
# Dense vs structured on Multi30k en→de: scripts/compare.sh demo|reproduce [--max-update N]
exec "$(dirname "$0")/../.venv/bin/python" -m structmt.pipeline.recipes "$@"
