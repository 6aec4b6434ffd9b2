"""metasched-agent: runs next to one Slurm cluster and connects it to metaschedd."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time

from metasched import __version__, log, sdnotify
from metasched.agent import config as agent_config
from metasched.agent import metrics, stop_deadline
from metasched.agent.journal import Journal
from metasched.agent.site_agent import SiteAgent
from metasched.agent.slurm import make_backend
from metasched.agent.slurm.base import SlurmBackend, SlurmError, SlurmUnavailable
from metasched.agent.tagkey import KEY_FILE, TagKeyError, TagKeys
from metasched.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="metasched-agent", description=__doc__)
    ap.add_argument("-c", "--config", default="/etc/metasched/agent.toml")
    ap.add_argument("--version", action="version", version=f"metasched-agent {__version__}")
    ap.add_argument(
        "--check",
        action="store_true",
        help="check the config and that Slurm answers, print what the site offers, and exit",
    )
    ap.add_argument(
        "--rotate-tag-key",
        action="store_true",
        help="make a new key to sign job tags with (older keys still verify), and exit",
    )
    args = ap.parse_args(argv)
    try:
        cfg = agent_config.from_file(args.config)
        if args.rotate_tag_key:
            TagKeys.rotate(cfg.state_dir)
            print(f"metasched-agent: new tag key in {cfg.state_dir / KEY_FILE}; restart the agent")
            return 0
        # before anything talks to Slurm: an agent that cannot sign cannot tell its jobs
        keys = TagKeys.load_or_create(cfg.state_dir)
        backend = make_backend(cfg.backend, cfg.slurm_conf or None, cfg.slurm_bin_dir)
    except (ConfigError, SlurmError, ValueError, TagKeyError, OSError) as e:
        print(f"metasched-agent: {e}", file=sys.stderr)
        return 2
    log.setup(cfg.log_level, process="metasched-agent")
    if args.check:
        try:
            version = backend.version()
            backend.nodes()  # the version is local; this one needs slurmctld to answer
        except SlurmUnavailable as e:
            print(
                f"metasched-agent: Slurm at site {cfg.site} does not answer ({_via(backend)}): {e}",
                file=sys.stderr,
            )
            return 1
        except SlurmError as e:
            print(f"metasched-agent: Slurm at site {cfg.site}: {e}", file=sys.stderr)
            return 1
        journal = Journal(cfg.state_dir / "journal.db")
        rep = SiteAgent(cfg, backend, journal, keys).report()
        print(f"site {cfg.site}: Slurm {version} via {backend.name}")
        for p in rep.partitions:
            offered = ", ".join(x.name for x in p.precisions) or "none"
            print(
                f"  partition {p.name}: {p.nodes} nodes x {p.cpus_per_node} CPUs; "
                f"precisions: {offered}"
            )
        return 0
    journal = Journal(cfg.state_dir / "journal.db")
    agent = SiteAgent(cfg, backend, journal, keys)
    metrics_at = None
    if cfg.metrics_listen:
        try:
            metrics_at = metrics.serve(agent.metrics, cfg.metrics_listen)
        except OSError as e:
            print(
                f"metasched-agent: cannot serve metrics on {cfg.metrics_listen}: {e}",
                file=sys.stderr,
            )
            return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # ends the agent at the 2 s deadline even while Python cannot run (pyslurm holds the GIL)
    stop_deadline.arm(cfg.site)
    log.get(site=cfg.site).info(
        "agent_started", daemon=cfg.daemon, backend=backend.name, metrics=metrics_at
    )
    settled: list[bool] = []  # agent.run's answer: True when nothing was left in flight
    runner = threading.Thread(target=lambda: settled.append(agent.run(stop)), name="agent")
    runner.start()
    # systemd (Type=notify): ready once running; the watchdog is fed while the poller keeps
    # polling Slurm (a poll stuck in a Slurm command stops it: WatchdogSec in the unit)
    sdnotify.notify("READY=1", f"STATUS=site {cfg.site}, daemon {cfg.daemon}")
    interval = sdnotify.watchdog_interval()
    stuck_after = max(4 * cfg.poll_interval, 120.0)
    next_feed = time.monotonic()
    while runner.is_alive() and not stop.is_set():
        # short sleeps, not stop.wait(): the signal handler sets `stop` on this thread, and
        # Event.set() inside a handler can deadlock against this thread's own Event.wait()
        time.sleep(0.1)
        if interval and time.monotonic() >= next_feed:
            next_feed = time.monotonic() + interval
            if agent.polling(stuck_after):
                sdnotify.notify("WATCHDOG=1")
    sdnotify.notify("STOPPING=1")
    # no stop.set() here: a second signal arriving inside it would deadlock on its lock; the
    # runner ends by itself once stop is set (within STOP_GRACE_SECONDS), or has ended
    runner.join()
    if settled and settled[0]:
        journal.close()
    # else a command is still in flight (its intent is journalled): the process ends with it
    return 0 if stop.is_set() else 1  # ended without being asked: systemd restarts it


def _via(backend: SlurmBackend) -> str:
    try:
        return backend.describe()
    except SlurmError:
        return backend.name


if __name__ == "__main__":
    sys.exit(main())
