"""A stand-in for SLURM's commands, enough for submitit's SLURM executor (``hydra/launcher=slurm``) to run its
job arrays on this machine: ``python fake_slurm.py sbatch|srun|sacct|scancel|scontrol ARGS``.

``sbatch SCRIPT`` keeps a copy of the script under ``$FAKE_SLURM_LOG``, prints ``Submitted batch job <id>`` as
SLURM does and runs the array's tasks one after another in a background process, each under ``bash SCRIPT`` with
the variables SLURM sets in a job of one task on one node (``SLURM_ARRAY_JOB_ID``, ``SLURM_ARRAY_TASK_ID``,
``SLURM_JOB_NODELIST``, ...); ``srun`` runs its command with ``--output``/``--error`` patterns filled in;
``sacct`` reports the tasks' states; ``scancel`` and ``scontrol`` are recorded. Time limits and requeues are not
simulated.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

LOG = Path(os.environ.get("FAKE_SLURM_LOG", "fake_slurm"))


def _record(name: str, args: list[str]) -> None:
    LOG.mkdir(parents=True, exist_ok=True)
    with open(LOG / "calls.log", "a") as f:
        f.write(" ".join([name, *args]) + "\n")


def sbatch(args: list[str]) -> None:
    _record("sbatch", args)
    text = Path(args[-1]).read_text()
    counter = LOG / "next_job_id"
    job = int(counter.read_text()) if counter.exists() else 1000
    counter.write_text(str(job + 100))
    script = LOG / f"sbatch_{job}.sh"
    script.write_text(text)
    array = re.search(r"^#SBATCH --array=(\d+)-(\d+)", text, re.M)
    tasks = [str(t) for t in range(int(array[1]), int(array[2]) + 1)] if array else [""]
    for task in tasks:
        (LOG / f"state_{job}_{task}").write_text("PENDING")
    runner = [sys.executable, __file__, "_run", str(script), str(job), ",".join(tasks)]
    with open(LOG / f"runner_{job}.log", "w") as out:
        subprocess.Popen(runner, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"Submitted batch job {job}")


def _run(args: list[str]) -> None:
    script, job, tasks = args[0], int(args[1]), args[2].split(",")
    for i, task in enumerate(tasks):
        env = dict(os.environ)
        env.update(
            SLURM_JOB_ID=str(job + 1 + i) if task else str(job),
            SLURM_JOB_NODELIST="localhost",
            SLURM_NNODES="1",
            SLURM_JOB_NUM_NODES="1",
            SLURM_NODEID="0",
            SLURM_NTASKS="1",
            SLURM_NTASKS_PER_NODE="1",
            SLURM_PROCID="0",
            SLURM_LOCALID="0",
        )
        if task:
            env.update(SLURM_ARRAY_JOB_ID=str(job), SLURM_ARRAY_TASK_ID=task)
        state = LOG / f"state_{job}_{task}"
        state.write_text("RUNNING")
        code = subprocess.run(["bash", script], env=env).returncode
        state.write_text("COMPLETED" if code == 0 else "FAILED")


def srun(args: list[str]) -> None:
    _record("srun", args)
    files = {}
    while args and args[0].startswith("--"):
        option = args.pop(0)
        if option in ("--output", "--error"):
            files[option] = args.pop(0)
    env = os.environ
    names = {
        "%A": env.get("SLURM_ARRAY_JOB_ID", ""),
        "%a": env.get("SLURM_ARRAY_TASK_ID", ""),
        "%j": env["SLURM_JOB_ID"],
        "%t": "0",
    }
    paths = {}
    for option, pattern in files.items():
        for code, value in names.items():
            pattern = pattern.replace(code, value)
        paths[option] = pattern
    with (
        open(paths.get("--output", os.devnull), "a") as out,
        open(paths.get("--error", paths.get("--output", os.devnull)), "a") as err,
    ):
        sys.exit(subprocess.run(args, stdout=out, stderr=err).returncode)


def sacct(args: list[str]) -> None:
    print("JobID|State|NodeList")
    for state in sorted(LOG.glob("state_*")):
        job, _, task = state.name[len("state_") :].partition("_")
        print(f"{job}_{task}|{state.read_text()}|localhost" if task else f"{job}|{state.read_text()}|localhost")


def scontrol(args: list[str]) -> None:
    _record("scontrol", args)
    if args[:2] == ["show", "hostnames"]:
        print(args[2])


def scancel(args: list[str]) -> None:
    _record("scancel", args)


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    {"sbatch": sbatch, "srun": srun, "sacct": sacct, "scontrol": scontrol, "scancel": scancel, "_run": _run}[command](
        rest
    )
