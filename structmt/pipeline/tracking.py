"""Weights & Biases logging: one W&B run per experiment (config, training curves
parsed from fairseq's log, final scores) and a leaderboard table per project.

Offline by default (runs are written under ``runs/wandb`` and can be uploaded
later with ``wandb sync``); online when ``WANDB_MODE=online`` or an API key is
configured (``WANDB_API_KEY``, or ``wandb login``'s entry in the netrc file); off
when ``WANDB_DISABLED`` is true.  Logging never fails a run: errors become
warnings, and a run that cannot be logged online (W&B's server not answering
within 60 s) is logged offline instead, as is every later run of the process
(said once: a sweep on a node without a network waits once, not once a point).
"""

from __future__ import annotations

import netrc
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..fairseq_cli import training_curve
from ..leaderboard_csv import FLOAT_COLUMNS, INT_COLUMNS

DEFAULT_PROJECT = "structmt"


@dataclass
class WandbSettings:
    """How runs are logged: ``mode`` (:data:`MODES`) and the W&B ``project``."""

    mode: str = "auto"
    project: str = DEFAULT_PROJECT


#: ``auto``: :func:`wandb_mode` decides; the others are W&B's own modes
MODES = ("auto", "offline", "online", "disabled")


#: the values W&B accepts in ``WANDB_MODE``
WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")


#: the values of ``WANDB_DISABLED`` that turn W&B off (others, "false" say, leave it on)
TRUE = ("1", "true", "yes")


def wandb_mode(requested: str = "auto") -> str:
    """``requested`` unless it is ``auto``; then ``WANDB_MODE`` if set, else ``disabled`` when ``WANDB_DISABLED``
    is true, else online with an API key (:func:`has_api_key`) and offline without. Under ``auto``, a
    ``WANDB_MODE`` that W&B does not know, or one other than ``disabled`` beside a true ``WANDB_DISABLED``, is a
    ``ValueError`` naming it."""
    if requested not in MODES:
        raise ValueError(f"W&B mode {requested!r}: choose from {', '.join(MODES)}")
    if requested != "auto":
        return requested
    env = os.environ.get("WANDB_MODE")
    if env and env not in WANDB_MODES:
        raise ValueError(f"WANDB_MODE={env!r} is not a W&B mode ({', '.join(WANDB_MODES)}); unset it or fix it")
    off = os.environ.get("WANDB_DISABLED", "").strip().lower() in TRUE
    if off and env and env != "disabled":
        raise ValueError(
            f"WANDB_DISABLED={os.environ['WANDB_DISABLED']!r} and WANDB_MODE={env!r} disagree; unset one of them"
        )
    if off:
        return "disabled"
    return env or ("online" if has_api_key() else "offline")


def has_api_key() -> bool:
    """Whether a W&B API key is configured: ``WANDB_API_KEY``, or the netrc entry ``wandb login`` writes for the
    server (``WANDB_BASE_URL``'s host, default ``api.wandb.ai``) in ``$NETRC``, ``~/.netrc`` or ``~/_netrc``."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname or "api.wandb.ai"
    named = os.environ.get("NETRC")
    files = [Path(named).expanduser()] if named else [Path("~/.netrc").expanduser(), Path("~/_netrc").expanduser()]
    for file in files:
        if file.is_file():
            try:
                entry = netrc.netrc(str(file)).authenticators(host)
            except (OSError, netrc.NetrcParseError):
                return False  # wandb cannot read it either
            return bool(entry and entry[2])
    return False


def project_problem(project: str) -> str:
    """Why W&B refuses ``project`` as a project name ("" when it does not)."""
    if 0 < len(project) <= 128 and not set("/\\#?%:") & set(project):
        return ""
    return "must be 1 to 128 characters, none of / \\ # ? % : (W&B's rule for project names)"


def _finish(run: Any) -> Path:
    """Finish ``run`` and wait until its local files are complete; returns its folder."""
    import wandb

    folder = Path(run.dir).parent
    run.finish()
    wandb.teardown()  # finish() can return before the service has flushed the run file
    return folder


def _discard(run: Any) -> None:
    """Close ``run`` after a failure and remove its local folder: no half-logged run is left to upload."""
    import wandb

    folder = Path(run.dir).parent
    try:
        run.finish(exit_code=1)
    finally:
        wandb.teardown()
        shutil.rmtree(folder, ignore_errors=True)


def _init(wandb_dir: Path, mode: str, project: str, **kwargs: Any) -> Any:
    """``wandb.init`` of the run ``kwargs["id"]`` of ``project`` in ``mode`` (offline or online), resumed if it exists.

    The mode goes to ``wandb.setup`` (the process-wide settings) as well as to the run:
    wandb reads some settings from the process-wide ones only, such as its own usage
    telemetry, which (wandb 0.31) otherwise posts to the W&B server at exit even from
    an offline run.  Offline, nothing is sent anywhere and no host name is looked up.
    """
    import wandb

    wandb_dir.mkdir(parents=True, exist_ok=True)
    settings = wandb.Settings(mode=mode, init_timeout=60, silent=True, x_disable_stats=True, console="off")
    env = os.environ.get("WANDB_MODE")
    os.environ["WANDB_MODE"] = mode  # W&B reads it too, and refuses a value it does not know whatever mode is asked
    try:
        wandb.setup(settings=settings)
        return wandb.init(
            dir=str(wandb_dir), settings=settings, reinit="finish_previous", project=project, resume="allow", **kwargs
        )
    except Exception:
        # a failed init (online without a network, say) leaves the run id claimed in W&B's service: without a
        # teardown the offline retry of the same id fails as "in use" and nothing is logged
        wandb.teardown()
        raise
    finally:
        if env is None:
            os.environ.pop("WANDB_MODE", None)
        else:
            os.environ["WANDB_MODE"] = env


def log_experiment(
    run_id: str,
    config: dict[str, Any],
    train_log: Path,
    rows: list[dict[str, Any]],
    wandb_dir: Path,
    settings: WandbSettings | None = None,
    group: str | None = None,
    wandb_id: str | None = None,
    valid: dict[str, Any] | None = None,
) -> Path | None:
    """Log one evaluation of a run as the W&B run ``wandb_id`` (default: ``run_id``), named ``run_id``: its
    training curve and, per test set, every column of its leaderboard ``rows`` in the summary
    (``test_2016_flickr/bleu``, ``…/git_commit``, ``…/machine``, …), and its ``valid`` score (a sweep's
    objective: ``valid/bleu``, ``valid/chrf`` and their signatures) when it has one. Returns its local W&B
    folder (None if disabled or failed; a run that fails after it began is closed and its folder removed). When
    online logging fails (no network on a compute node, say) it is logged offline instead, to be uploaded later
    with ``wandb sync``."""
    settings = settings or WandbSettings()

    def log(mode: str) -> Path:
        run = _init(
            wandb_dir,
            mode,
            settings.project,
            name=run_id,
            id=wandb_id or run_id,
            group=group,
            config=config,
            job_type="experiment",
        )
        try:
            for point in training_curve(train_log):
                step = int(point.pop("num_updates"))
                run.log({f"train/{k}": v for k, v in point.items()}, step=step)
            for row in rows:  # the whole leaderboard row: scores, signatures, commits, machine, labels, file
                for column, value in row.items():
                    if column not in ("run_id", "test_set") and value not in ("", None):
                        run.summary[f"{row['test_set']}/{column}"] = _cell(column, value)
            for key, value in (valid or {}).items():
                run.summary[f"valid/{key}"] = value
        except Exception:
            _discard(run)
            raise
        return _finish(run)

    return _logged(f"W&B logging of {run_id}", settings, log)


#: the online failures of this process (one at most): after the first, every run is logged offline at once
_online_failed: list[str] = []


def _logged(what: str, settings: WandbSettings, log: Any) -> Path | None:
    """``log(mode)`` in ``settings``' mode (None if disabled), else ``log("offline")`` when that was online (and
    at once for every later online run of the process); failures become warnings."""
    try:
        mode = wandb_mode(settings.mode)
    except ValueError as err:
        warnings.warn(f"{what} skipped: {err}", stacklevel=3)
        return None
    if mode == "disabled":
        return None
    if mode != "offline" and _online_failed:
        mode = "offline"  # the first failure's warning said so
    try:
        return log(mode)
    except Exception as err:  # noqa: BLE001 - tracking must never fail a run
        if mode == "offline":
            warnings.warn(f"{what} skipped: {err}", stacklevel=3)
            return None
        _online_failed.append(str(err))
        warnings.warn(
            f"{what} failed {mode} ({err}); logging it offline instead, as every later run of this process "
            "(upload with wandb sync)",
            stacklevel=3,
        )
    try:
        return log("offline")
    except Exception as err:  # noqa: BLE001
        warnings.warn(f"{what} skipped: {err}", stacklevel=3)
        return None


def log_leaderboard(
    rows: list[dict[str, str]], columns: list[str], wandb_dir: Path, settings: WandbSettings | None = None
) -> Path | None:
    """(Re)build the project's leaderboard ``wandb.Table`` (these ``columns``) from the CSV rows, in the project's
    W&B run ``leaderboard`` (online, each rebuild is a new step of it; offline, a run folder of its own under
    that id)."""
    settings = settings or WandbSettings()

    def log(mode: str) -> Path:
        import wandb

        run = _init(wandb_dir, mode, settings.project, name="leaderboard", id="leaderboard", job_type="leaderboard")
        table = wandb.Table(columns=columns, data=[[_cell(c, r.get(c, "")) for c in columns] for r in rows])
        run.log({"leaderboard": table})
        return _finish(run)

    return _logged("W&B leaderboard", settings, log)


def _cell(column: str, value: Any) -> Any:
    """A leaderboard cell as the W&B table holds it: the number columns as numbers (an empty one None), so the
    table sorts and plots by value, not as text ("9.62" above "38.91")."""
    if column not in INT_COLUMNS + FLOAT_COLUMNS:
        return value
    if value in ("", None):
        return None
    return int(value) if column in INT_COLUMNS else float(value)
