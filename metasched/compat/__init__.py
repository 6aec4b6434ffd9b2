"""Slurm's own commands, speaking to the federation: sbatch, squeue, scancel, sacct (and an
srun for inside jobs), so that tools written against Slurm (dask-jobqueue, submitit, Parsl,
users' scripts) run on the federation unchanged. Installed as metasched-sbatch, ... and, by
`metasched-compat install DIR`, as a directory of the plain names to put first on PATH
(docs/slurm-compat.md).

Job ids are the federation's global ids throughout; a job's site shows where Slurm would show
a cluster (and, for a running job, its node list).
"""
