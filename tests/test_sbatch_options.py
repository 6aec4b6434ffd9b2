"""sbatch's options as sbatch reads them: the table, getopt_long, #SBATCH lines, SBATCH_*,
precedence, and what the daemon makes of a request. Pure logic; the same rules are checked
against the real sbatch of the lab in test_sbatch_parity.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metasched import jobspec
from metasched.jobspec import SpecError
from metasched.sbatch import argv, options, resolve
from metasched.sbatch.options import Kind
from metasched.v1 import metasched_pb2 as pb

SH = "#!/bin/bash\n"


def spec_of(
    script: str, *cli: str, env: dict[str, str] | None = None, cwd: str = "/home/u/run"
) -> pb.JobSpec:
    given, rest = argv.parse(list(cli), argv.CLI)
    assert not rest, rest
    environ = env or {}
    spec, _ = resolve.resolve(
        script, given, argv.env_options(environ), environ=environ, submit_dir=cwd
    )
    return spec


# ---------------------------------------------------------------- the table


def test_every_option_of_both_versions_is_in_the_table() -> None:
    # sbatch --help of 22.05 and the options slurm_opt.c gives sbatch in 25.11
    names = {o.name for o in options.TABLE}
    expected = (
        "account array begin chdir comment constraint cpus-per-gpu cpus-per-task dependency "
        "error exclude exclusive export gpus gpus-per-node gpus-per-task gres hold ignore-pbs "
        "job-name mail-type mem mem-per-cpu mem-per-gpu nodes ntasks ntasks-per-node output "
        "parsable partition qos time wait wrap power tres-per-task stepmgr segment "
        "consolidate-segments spread-segments oom-kill-step resv-ports external extra "
        "autocomplete container-id resources tasks-per-node test-only"
    )
    assert set(expected.split()) <= names
    shorts = {o.short for o in options.TABLE if o.short}
    assert shorts == set("AabBcCdDeFGhHiJkLmMnNopqQsStvVwWxO")
    kinds = {o.kind for o in options.TABLE}
    assert kinds == set(Kind)
    for o in options.TABLE:
        assert o.note, o.name
        if o.kind is Kind.UNDERSTOOD:
            assert o.name in resolve._APPLY


def test_the_table_prints() -> None:
    rows = options.rows()
    assert len(rows) == len(options.TABLE)
    by_flag = {r[0]: r for r in rows}
    assert by_flag["-G, --gpus"][1] == "understood"
    assert by_flag["--uid"][1] == "refused" and "root" in by_flag["--uid"][2]
    assert by_flag["--power"][3] == "Slurm 22.05 only"


def test_the_docs_have_the_tables_own_words() -> None:
    """docs/sbatch.md's table is the code's (regenerate: python -m metasched.sbatch.options
    --markdown), so what users read is what msub and the daemon do."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "sbatch.md").read_text()
    assert options.markdown() in docs


# ---------------------------------------------------------------- getopt_long


@pytest.mark.parametrize(
    ("words", "name", "value"),
    [
        (["--part=batch"], "partition", "batch"),  # unique prefix: sbatch takes it
        (["--ntasks-per-n=2"], "ntasks-per-node", "2"),
        (["--tasks=2"], "tasks-per-node", "2"),  # a prefix of --tasks-per-node only
        (["--gpus", "2"], "gpus", "2"),  # exact beats being a prefix of --gpus-per-node
        (["-N2-4"], "nodes", "2-4"),
        (["-t10"], "time", "10"),
        (["-k"], "no-kill", None),  # optional argument only attached
        (["--exclusive=user"], "exclusive", "user"),
        (["--exclusive", "x.sh"], "exclusive", None),
        (["--wrap", "--wrap=true"], "wrap", "--wrap=true"),  # a required value is the next word
    ],
)
def test_getopt_long_as_sbatch(words: list[str], name: str, value: str | None) -> None:
    given, _ = argv.parse(words, argv.CLI)
    assert (given[0].option.name, given[0].value) == (name, value)


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["--mem-per=1G"], "ambiguous; possibilities: '--mem-per-cpu' '--mem-per-gpu'"),
        (["--gpu=1"], "ambiguous"),
        (["--cpu=2"], "ambiguous"),
        (["--exc=n1"], "ambiguous"),
        (["--ext=1"], "ambiguous"),  # --extra-node-info in 22.05; ambiguous in 25.11
        (["--bogus"], "unrecognized option '--bogus'"),
        (["-y"], "invalid option -- 'y'"),
        (["-N"], "requires an argument -- 'N'"),
        (["--hold=1"], "doesn't allow an argument"),
    ],
)
def test_getopt_long_refusals(words: list[str], message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace("'", "'")):
        argv.parse(words, argv.CLI)


def test_options_stop_at_the_script_whose_arguments_follow() -> None:
    given, rest = argv.parse(["-N", "2", "job.sh", "-N", "3", "--x"], argv.CLI)
    assert [g.value for g in given] == ["2"]
    assert rest == ["job.sh", "-N", "3", "--x"]
    assert argv.parse(["--", "-x"], argv.CLI)[1] == ["-x"]


# ---------------------------------------------------------------- #SBATCH lines


def test_directives_end_at_the_first_command_and_need_column_one() -> None:
    script = (
        SH
        + "#SBATCH -N 2\n"
        + "  #SBATCH -n 9\n"  # indented: a comment, as for sbatch
        + "\n# plain comment\n"
        + "#SLURM --ntasks-per-node=3\n"
        + "module load x\n"
        + "#SBATCH -N 5\n"
    )
    spec = spec_of(script)
    assert (spec.nodes, spec.ntasks, spec.ntasks_per_node) == (2, 0, 3)


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (" -J 'a b' -o x # comment", ["-J", "a b", "-o", "x"]),
        (' --job-name="x y"', ["--job-name=x y"]),
        (" -J a\\ b", ["-J", "a b"]),
        (" -J a\\#b", ["-J", "a#b"]),
        (" -J a#b", ["-J", "a"]),
        (' -J "" -N 2', ["-J"]),  # sbatch's get_argument stops at an empty word
        ("   ", []),
    ],
)
def test_directive_words_split_as_get_argument(line: str, words: list[str]) -> None:
    assert argv.split_directive(line) == words


def test_bad_directives_are_refused() -> None:
    with pytest.raises(SpecError, match="invalid directive found in batch script: foo"):
        spec_of(SH + "#SBATCH foo --time=1\necho\n")
    with pytest.raises(SpecError, match="unmatched"):
        spec_of(SH + "#SBATCH -J 'x\necho\n")
    with pytest.raises(SpecError, match="unrecognized option '--tme'"):
        spec_of(SH + "#SBATCH --tme=5\necho\n")
    with pytest.raises(SpecError, match="hetjob"):
        spec_of(SH + "#SBATCH -N 1\n#SBATCH hetjob\n#SBATCH -N 2\necho\n")


def test_an_option_ending_one_line_takes_its_value_from_the_next() -> None:
    # sbatch joins every line's words into one argument list
    assert spec_of(SH + "#SBATCH -N\n#SBATCH 3\necho\n").nodes == 3


def test_pbs_lines_are_refused_unless_ignored() -> None:
    script = SH + "#PBS -l walltime=1:00:00\necho\n"
    with pytest.raises(SpecError, match="#PBS"):
        spec_of(script)
    assert spec_of(script, "--ignore-pbs").ignore_pbs
    assert spec_of(SH + "#SBATCH --ignore-pbs\n#PBS -N x\necho\n").ignore_pbs
    assert spec_of(script, env={"SBATCH_IGNORE_PBS": "1"}).ignore_pbs
    # far down (after 100 commands) sbatch no longer looks for them
    assert spec_of(SH + "echo\n" * 101 + "#PBS -N x\n").name == ""


def test_neutralise_touches_only_the_lines_sbatch_reads() -> None:
    script = SH + "#SBATCH --array=1-5\n#SLURM -H\necho\ncat <<EOF\n#SBATCH -N 9\nEOF\n"
    out = argv.neutralise(script)
    assert out == SH + "# SBATCH --array=1-5\n# SLURM -H\necho\ncat <<EOF\n#SBATCH -N 9\nEOF\n"
    assert argv.directive_lines(out) == []


# ---------------------------------------------------------------- precedence and rules


def test_command_line_over_environment_over_script() -> None:
    script = SH + "#SBATCH -t 10 -J fromscript -p a\n#SBATCH --mail-type=BEGIN\necho\n"
    spec = spec_of(
        script,
        "-t",
        "30",
        "--mail-type=END",
        env={"SBATCH_TIMELIMIT": "20", "SBATCH_JOB_NAME": "fromenv"},
    )
    assert (spec.time_limit_minutes, spec.name, spec.partition) == (30, "fromenv", "a")
    # --mail-type adds up, as in sbatch: every occurrence is passed, in order
    assert list(spec.sbatch_options) == ["--mail-type=BEGIN", "--mail-type=END"]


def test_memory_options_exclude_each_other_as_in_slurm() -> None:
    with pytest.raises(SpecError, match="mutually exclusive"):
        spec_of(SH + "#SBATCH --mem=4G\necho\n", "--mem-per-cpu=1G")
    # one set by SBATCH_* loses to one given in the script
    spec = spec_of(SH + "#SBATCH --mem=4G\necho\n", env={"SBATCH_MEM_PER_CPU": "1G"})
    assert (spec.mem_per_node_mb, spec.mem_per_cpu_mb) == (4096, 0)
    with pytest.raises(SpecError, match="mutually exclusive"):
        spec_of(SH, env={"SBATCH_MEM_PER_CPU": "1G", "SBATCH_MEM_PER_NODE": "2G"})


def test_environment_flags_set_and_unset() -> None:
    assert "--spread-job" in spec_of(SH, env={"SBATCH_SPREAD_JOB": "yes"}).sbatch_options
    unset = spec_of(SH + "#SBATCH --spread-job\necho\n", env={"SBATCH_SPREAD_JOB": "no"})
    assert "--spread-job" not in unset.sbatch_options


@pytest.mark.parametrize(
    ("words", "reason"),
    [
        (["--uid=root"], "--uid is for root"),
        (["--array=9-1"], "runs backwards"),
        (["--dependency=afterok"], "dependency"),
        (["--begin=someday"], "begin"),
        (["--array=1-3", "--dependency=afterok:1", "-H", "--begin=now+1hour"], None),
        (["--export-file=/etc/x"], "submit host"),
        (["--nodefile=/x"], "submit host"),
        (["--get-user-env"], "root"),
        (["--tres-per-task=cpu:2"], "not modelled"),
        (["--comment=metasched:0a0a0a0a:1:1"], "metasched:"),
        (["--cpus-per-gpu=2", "-c", "2", "--gpus=1"], "mutually exclusive"),
        (["--gpus=a100:1", "--gpus-per-node=v100:1"], "GPU types differ"),
        (["--mail-type=ENDD"], "invalid --mail-type"),
        (["--signal=FOO@60"], "invalid --signal"),
        (["--open-mode=x"], "invalid --open-mode"),
        (["-N", "0"], "no compute nodes"),
        (["-n", "0"], "invalid numeric value"),
        (["--mem=1.5G"], "invalid --mem"),
        (["-t", "1.5"], "invalid --time"),
        (["-D", "rel"], None),  # fine: relative to the submit directory
    ],
)
def test_refusals_say_why(words: list[str], reason: str | None) -> None:
    if reason is None:
        spec_of(SH, *words)
        return
    with pytest.raises(SpecError, match=reason):
        spec_of(SH, *words)


def test_values_as_slurm_reads_them() -> None:
    s = spec_of(SH, "-N", "1-1", "-t", "UNLIMITED", "--mem=0", "-n", " +3")
    assert (s.nodes, s.max_nodes, s.time_unlimited, s.mem_whole_node, s.ntasks) == (
        1,
        1,
        True,
        True,
        3,
    )
    assert spec_of(SH, "-t", "0").time_unlimited
    assert spec_of(SH, "--mem=4GB").mem_per_node_mb == 4096
    assert spec_of(SH, "--mem=500K").mem_per_node_mb == 1  # rounded up, as str_to_mbytes
    assert spec_of(SH, "-J", "a b:c%d").name == "a b:c%d"
    assert spec_of(SH, "--gres=gpu:A100:2").gpu_type == "A100"  # case kept: Slurm's is exact
    g = spec_of(SH, "--gres=gpu:a100:2,nvme:1")
    assert (g.gpus_per_node, g.gpu_type, g.other_gres) == (2, "a100", "nvme:1")
    assert spec_of(SH, "-D", "../x").workdir == "/home/u/run/../x"  # as make_full_path
    assert list(spec_of(SH, "-M", "hpc,gpu").sites) == ["hpc", "gpu"]
    assert list(spec_of(SH, "-M", "all").sites) == []
    assert spec_of(SH, "-s", "--exclusive").exclusive == "exclusive"  # the last one wins
    assert spec_of(SH, "--exclusive", "-s").exclusive == "oversubscribe"


def test_export_modes_read_the_submitters_environment() -> None:
    env = {"HOME": "/h", "A": "1", "B": "x,y", "SLURM_JOB_ID": "7"}
    every = spec_of(SH, "--export=ALL", env=env)
    assert every.export_mode == "all" and dict(every.environment) == {
        "HOME": "/h",
        "A": "1",
        "B": "x,y",
    }
    listed = spec_of(SH, "--export=A,C=3,NOPE", env=env)
    assert listed.export_mode == "list" and dict(listed.environment) == {"A": "1", "C": "3"}
    assert spec_of(SH, "--export=NONE", env=env).export_mode == "none"
    assert spec_of(SH, "--export=NIL", env=env).export_mode == "nil"
    assert dict(spec_of(SH, "--export=ALL,Z=9", env=env).environment)["Z"] == "9"


# ---------------------------------------------------------------- the daemon's merge


SCRIPT = (
    SH
    + "#SBATCH -N 2 --ntasks-per-node=4\n"
    + "#SBATCH --job-name='my job'   # comment\n"
    + "#SBATCH --mail-type=END --mem-per-cpu=2G\n"
    + "#SBATCH -t 1:00:00 -o out.%j\n"
    + "echo hi\n"
)


def test_the_daemon_reads_what_msub_read() -> None:
    msub = spec_of(SCRIPT, "-t", "5", "--partition=a,b", "--mail-type=FAIL")
    raw = jobspec.validate(pb.JobSpec(script=SCRIPT, time_limit_minutes=5, partition="a,b"))
    for spec in (jobspec.validate(msub), raw):
        assert (spec.nodes, spec.ntasks_per_node, spec.name) == (2, 4, "my job")
        assert (spec.mem_per_cpu_mb, spec.time_limit_minutes, spec.output) == (2048, 5, "out.%j")
    assert jobspec.validate(msub) == msub  # a fixed point: the lines are read once
    assert list(raw.sbatch_options) == ["--mail-type=END"]


def test_the_daemon_refuses_what_sbatch_would() -> None:
    for script, message in (
        (SH + "#SBATCH --array=5-1\necho\n", "runs backwards"),
        (SH + "#SBATCH --dependency=after\necho\n", "dependency"),
        (SH + "#SBATCH --bogus\necho\n", "unrecognized option"),
        (SH + "#SBATCH --uid=0\necho\n", "--uid"),
        (SH + "#PBS -N x\necho\n", "#PBS"),
    ):
        with pytest.raises(SpecError, match=message):
            jobspec.validate(pb.JobSpec(script=script))
    with pytest.raises(SpecError, match="mutually exclusive"):
        jobspec.validate(pb.JobSpec(script=SH + "#SBATCH --mem=1G\necho\n", mem_per_cpu_mb=10))
    with pytest.raises(SpecError, match="cannot be passed"):
        jobspec.validate(pb.JobSpec(script=SH, sbatch_options=["--array=1-3"]))
    # arrays, dependencies, --begin and --hold in the lines are the daemon's to track
    tracked = jobspec.validate(
        pb.JobSpec(
            script=SH + "#SBATCH --array=1-5%2\n#SBATCH -H\n#SBATCH -d afterok:3?afterany:4\n"
            "#SBATCH --kill-on-invalid-dep=no\necho\n"
        )
    )
    assert (tracked.array, tracked.dependency, tracked.hold) == (
        "1-5%2",
        "afterok:3?afterany:4",
        True,
    )
    assert tracked.keep_invalid_dependency and not tracked.sbatch_options
    assert not any(
        w.startswith(("--array", "--dep", "--hold", "--kill")) for w in resolve.to_words(tracked)
    )
    with pytest.raises(SpecError, match="cannot be passed"):
        jobspec.validate(pb.JobSpec(script=SH, sbatch_options=["--nodes=3"]))


WORDS = [
    ["-N", "2"],
    ["-n", "8"],
    ["--ntasks-per-node=2"],
    ["-c", "4"],
    ["--mem=2G"],
    ["--mem-per-cpu=1G"],
    ["--gres=gpu:a100:1"],
    ["--gpus=2"],
    ["-t", "30"],
    ["-t", "0"],
    ["-p", "a,b"],
    ["-J", "x y"],
    ["--mail-type=END"],
    ["--exclusive"],
    ["-s"],
    ["-C", "ib&avx"],
    ["-x", "n[1-2]"],
    ["--comment=c"],
    ["-o", "o.%j"],
    ["--signal=B:USR1@60"],
]


@settings(max_examples=300, deadline=None)
@given(
    script=st.lists(st.sampled_from(WORDS), max_size=4),
    cli=st.lists(st.sampled_from(WORDS), max_size=4),
)
def test_msub_then_daemon_is_a_fixed_point(script: list[list[str]], cli: list[list[str]]) -> None:
    """Whatever msub resolves, the daemon's merge of the script's lines under it changes
    nothing, and the agent's options give the same fields back."""
    lines = "".join("#SBATCH " + " ".join(f"'{w}'" for w in ws) + "\n" for ws in script)
    text = SH + lines + "echo\n"
    try:
        msub = spec_of(text, *[w for ws in cli for w in ws])
    except SpecError:
        return  # sbatch refuses some combinations too (--mem with --mem-per-cpu)
    assert jobspec.validate(msub) == msub
    # the agent's words, read back by sbatch's rules, make the same option fields
    back = spec_of(SH, *resolve.to_words(msub))
    for f in ("nodes", "ntasks", "cpus_per_task", "mem_per_node_mb", "gpus", "sbatch_options"):
        assert getattr(back, f) == getattr(msub, f), f


# ---------------------------------------------------------------- the shape Slurm gives


@pytest.mark.parametrize(
    ("words", "nodes", "tasks", "cpus_node", "spread", "gpus"),
    [
        ([], 1, 1, 1, False, 0),
        (["--ntasks-per-node=4"], 1, 4, 4, False, 0),  # was 1 CPU
        (["-N", "2", "--ntasks-per-node=4"], 2, 8, 4, False, 0),
        (["-n", "64"], 1, 64, 1, True, 0),  # Slurm may use several nodes
        (["-N", "1-2", "-n", "3"], 1, 3, 1, True, 0),
        (["-N", "4", "-n", "2"], 2, 2, 1, False, 0),  # "setting nnodes to 2"
        (["--gpus=8"], 1, 1, 1, True, 8),  # GPUs for the whole job, not per node
        (["-N", "2", "--gpus=8"], 2, 2, 1, False, 8),
        (["--gres=gpu:4"], 1, 1, 1, False, 4),
        (["-n", "3", "--gpus-per-task=1"], 1, 3, 1, True, 3),
        (["--cpus-per-gpu=8", "--gpus=2"], 1, 1, 16, True, 2),
    ],
)
def test_shape_as_slurm_sizes_it(
    words: list[str], nodes: int, tasks: int, cpus_node: int, spread: bool, gpus: int
) -> None:
    shape = jobspec.shape_of(spec_of(SH, *words))
    assert (shape.nodes, shape.tasks, shape.spread, shape.total_gpus) == (
        nodes,
        tasks,
        spread,
        gpus,
    )
    assert (shape.cpus_per_node if not spread else shape.total_cpus // shape.tasks * 1) in (
        cpus_node,
        shape.cpus_per_task,
    )


def test_shape_limits_and_memory() -> None:
    no_limit = jobspec.shape_of(spec_of(SH))
    assert not no_limit.time_limit_given and no_limit.time_at(60) == ""
    unlimited = jobspec.shape_of(spec_of(SH, "-t", "UNLIMITED"))
    assert unlimited.time_at(0) == "" and "no time limit" in unlimited.time_at(60)
    assert jobspec.shape_of(spec_of(SH, "-t", "90")).time_at(60).startswith("time limit 90")
    mpc = jobspec.shape_of(spec_of(SH, "--mem-per-cpu=2G", "--ntasks-per-node=4"))
    assert mpc.mem_per_node_mb == 8192
    whole = jobspec.shape_of(spec_of(SH, "--mem=0"))
    assert whole.whole_node


def test_constraints_are_matched_against_node_features_generously() -> None:
    feats = frozenset({"haswell", "ib", "v100-32g"})
    assert jobspec.constraint_ok("haswell", feats)
    assert jobspec.constraint_ok("haswell&ib", feats)
    assert jobspec.constraint_ok("knl|haswell", feats)
    assert jobspec.constraint_ok("[haswell|knl]*2", feats)
    assert jobspec.constraint_ok("v100-32g", feats)
    assert jobspec.constraint_ok("!knl", feats)
    assert not jobspec.constraint_ok("knl", feats)
    assert not jobspec.constraint_ok("haswell&knl", feats)
