"""scancel for the federation: cancel jobs by global id, or by user / name / state.

    scancel [ID ...] [-u USER] [--me] [-n NAME] [-t STATE] [-p PARTITION] [-M SITE]
            [-Q|--quiet] [-s SIGNAL]

As scancel does, a job already ended (or unknown) is silently no error.
--signal is refused: the federation cancels, it does not relay signals (yet).
"""

from __future__ import annotations

import argparse
import sys

import grpc

from metasched.cli.errors import UsageError
from metasched.compat import common, squeue
from metasched.v1 import metasched_pb2 as pb


def parser() -> argparse.ArgumentParser:
    p = common.Parser(prog="scancel", description=__doc__)
    p.add_argument("ids", nargs="*")
    p.add_argument("-u", "--user", action="append", default=[])
    p.add_argument("--me", action="store_true")
    p.add_argument("-n", "--name", "--jobname", action="append", default=[])
    p.add_argument("-t", "--state", "--states", dest="states", action="append", default=[])
    p.add_argument("-p", "--partition", action="append", default=[])
    p.add_argument("-M", "--clusters", action="append", default=[])
    p.add_argument("-Q", "--quiet", action="store_true")
    p.add_argument("-s", "--signal")
    p.add_argument("-f", "--full", action="store_true")
    p.add_argument("-b", "--batch", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        opts = parser().parse_args(args)
        if opts.signal:
            raise UsageError(
                "--signal is not supported by the federation (jobs can be cancelled, not signalled)"
            )
        ids = common.split_ids(opts.ids, "job id")
        c = common.client()
        filters = opts.user or opts.me or opts.name or opts.states or opts.partition
        if filters or opts.clusters:
            if not ids and not filters:
                raise UsageError("No job identification provided")
            ns = argparse.Namespace(
                user=opts.user,
                me=opts.me,
                name=opts.name,
                states=opts.states,
                partition=opts.partition,
                clusters=opts.clusters,
            )
            listed = common.jobs_by_id(c, ids) if ids else common.list_jobs(c, True, False)
            ids = [j.id for j in squeue.select(listed, ns)]
        elif not ids:
            raise UsageError("No job identification provided")
        status = 0
        for job_id in ids:
            try:
                c.call("CancelJob", pb.CancelJobRequest(job_id=job_id))
            except grpc.RpcError as e:
                code = e.code()
                # As scancel does: a job already ended, or unknown, is no error (the wish
                # that it not run is met); anything else is one line and exit status 1.
                if code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                    continue
                if code != grpc.StatusCode.PERMISSION_DENIED:
                    raise
                if not opts.quiet:
                    print(
                        f"scancel: error: Kill job error on job id {job_id}: "
                        "Access/permission denied",
                        file=sys.stderr,
                    )
                status = 1
        return status

    return common.run("scancel", body)


if __name__ == "__main__":
    sys.exit(main())
