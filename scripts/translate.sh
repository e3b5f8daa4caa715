#!/usr/bin/env bash
# Translate raw text with a trained run: scripts/translate.sh runs/<run id> < input.en > output.de
exec "$(dirname "$0")/../.venv/bin/python" -m structmt.pipeline.translate "$@"
