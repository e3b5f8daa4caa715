"""Where things are: the repository checkout, the plugin folder (``--user-dir``), and the default folders
of results (committed) and runs (checkpoints, data, W&B files; not committed)."""

from pathlib import Path

PLUGIN_DIR = Path(__file__).resolve().parent
REPO_ROOT = PLUGIN_DIR.parent
RESULTS_DIR = REPO_ROOT / "results"
RUNS_DIR = REPO_ROOT / "runs"
