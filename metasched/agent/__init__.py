"""metasched-agent: the process next to each Slurm cluster (see site_agent.py)."""

import os

# The agent runs Slurm commands as the job's user: Python must then fork() rather than
# vfork() (it changes uid, gid and groups in the child), and fork() runs gRPC's fork
# handlers, which crash the child while the agent's stream threads are inside gRPC ("Check
# failure" from fork_posix.cc; 181 of 400 forks under a busy channel, 0 with this set). The
# agent never forks to run gRPC in a child, so it needs none of gRPC's fork support. Set
# before anything imports grpc (this package is imported first).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
