"""Where things are: the repository checkout and the plugin folder (``--user-dir``)."""

from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent
REPO_ROOT = PLUGIN_DIR.parent
