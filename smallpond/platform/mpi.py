"""The MPI platform: launches executor processes with OpenMPI's ``mpirun``.

One ``mpirun`` starts all ``num_nodes`` ranks; each rank is one executor. The launch is made so
that the job survives the loss of a rank (``--enable-recovery``: mpirun's default is to kill every
rank when one dies, which would turn one lost executor into a lost job; a job of one rank has no
other to keep going, and is launched without it, so that mpirun exits with its rank's status:
with it, mpirun exits 0 whatever the ranks did, and ``SP_SPAWN=1``'s process reported a run that
failed or was killed as a success), ranks are not pinned to
cores (``--bind-to none``: an executor runs several worker processes), and more ranks than cores
are allowed on a host (``--oversubscribe``). Run as root, ``--allow-run-as-root`` is added.
Each rank sees ``OMPI_COMM_WORLD_RANK`` and ``OMPI_COMM_WORLD_LOCAL_SIZE`` (ranks on its host).
"""

from __future__ import annotations

import os
import shutil
from typing import Dict, List, Optional, Sequence

from smallpond.platform.base import Platform


class MPI(Platform):
    """Starts executors through ``mpirun -np N``.

    ``extra_opts`` may hold ``mpirun_args``: extra arguments for mpirun (a ``--hostfile``, say).
    """

    name = "mpi"

    @staticmethod
    def is_available() -> bool:
        """True when ``mpirun`` is on the PATH."""
        return shutil.which("mpirun") is not None

    def extra_opts_names(self) -> tuple:
        return ("mpirun_args",)

    def mpirun_command(self, num_nodes: int, envs: Dict[str, str], extra: Sequence[str] = ()) -> List[str]:
        """The ``mpirun`` command line (without the program) for ``num_nodes`` ranks."""
        mpirun = shutil.which("mpirun")
        if mpirun is None:
            raise RuntimeError("platform 'mpi': mpirun is not on the PATH (Debian: apt-get install openmpi-bin)")
        cmd = [mpirun, "-np", str(num_nodes), "--oversubscribe", "--bind-to", "none"]
        if num_nodes > 1:  # (one rank: its exit status is mpirun's, see the module docstring)
            cmd.append("--enable-recovery")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        for k in sorted(envs):
            cmd += ["-x", k]  # values come from mpirun's own environment, also on remote hosts
        return cmd + list(extra)

    def start_job(
        self,
        num_nodes: int,
        entrypoint: str,
        args: Sequence[str],
        envs: Optional[Dict[str, str]] = None,
        extra_opts: Optional[Dict[str, object]] = None,
    ) -> List[str]:
        """Run ``mpirun -np num_nodes python entrypoint *args``; returns the id of the mpirun process."""
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be at least 1, got {num_nodes!r}")
        import sys

        opts = self._check_extra_opts(extra_opts)
        # executors divide their host among the ranks mpirun put there (OMPI_COMM_WORLD_LOCAL_SIZE)
        env = self._environment(envs, 1)
        env.pop("SP_EXECUTORS_ON_HOST", None)
        exported = {"PYTHONPATH": env["PYTHONPATH"], **{str(k): str(v) for k, v in (envs or {}).items()}}
        cmd = self.mpirun_command(num_nodes, exported, [str(a) for a in opts.get("mpirun_args", ()) or ()])
        return [self._popen(cmd + [sys.executable, entrypoint, *args], env, opts.get("log_path"))]
