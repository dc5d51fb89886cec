"""Exit statuses shared by the training entry point and the launchers that relaunch it."""

# EX_TEMPFAIL from sysexits.h: "a temporary failure; retry later". `python -m rankjax.main` exits with it when
# SIGTERM / SIGINT (or a preemption notice) stopped the run after saving a checkpoint; a launcher (SLURM
# --requeue, a TPU queued resource, a shell loop) relaunches the same command to resume.
PREEMPTED_EXIT_CODE = 75
