#!/usr/bin/env bash
# Translate raw text with a trained run: scripts/translate.sh runs/<run id> < input.en > output.de
py=$("$(dirname "$0")/venv_python.sh") || exit 1
exec "$py" -m structmt.pipeline.translate "$@"
