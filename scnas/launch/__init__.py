"""Job descriptions and the executors that run them: in-process, local submitit, or SLURM via submitit."""

from scnas.launch.executors import run_job
from scnas.launch.job import Job

__all__ = ["Job", "run_job"]
