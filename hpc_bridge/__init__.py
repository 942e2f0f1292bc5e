"""hpc-bridge: Slurm power saving on top of the CycleCloud cluster REST API."""

__version__ = "0.1.0"
