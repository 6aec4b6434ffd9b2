"""How sbatch reads its options: the command line, #SBATCH lines and SBATCH_* variables.

Each reader returns Given occurrences in the order sbatch sees them; resolve.py applies them.
The rules are Slurm's own (src/sbatch/opt.c, glibc's getopt_long with Slurm's "+" option
string), including the ones users trip over:

- a long option may be abbreviated to any prefix that names one option ("--part"); one
  that could be several is an error ("--mem-per" could be --mem-per-cpu or --mem-per-gpu).
  A prefix must name the same option in every Slurm from 22.05 to 25.11 ("--ext" is
  --extra-node-info in 22.05 but ambiguous in 25.11: refused);
- parsing stops at the first word that is not an option: the script, whose arguments
  follow (so `msub job.sh -N 2` passes "-N 2" to the script, as sbatch does);
- #SBATCH (and #SLURM) lines count from the top of the script up to the first line that
  is neither blank nor a comment; they must start in column 1; their words are split as
  sbatch's get_argument splits them (quotes, backslash, # starts a comment), and all of
  them form one argument list, so a word that is not an option is an invalid directive.
- #PBS and #BSUB lines (column 1, anywhere in the first 100 lines that are not comments)
  are translated by sbatch unless --ignore-pbs: metasched does not translate them
  (resolve.py refuses them with the reason).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from metasched.jobspec import SpecError
from metasched.sbatch.options import BY_ENV, BY_NAME, BY_SHORT, ENV_ONLY_REFUSED, Arg, Option

SCRIPT, ENV, CLI = "script", "env", "cli"
DIRECTIVE_PREFIXES = ("#SBATCH", "#SLURM")
PBS_PREFIXES = ("#BSUB", "#PBS")
# sbatch stops looking for #PBS / #BSUB lines after this many lines that are not comments
_XLATE_SCAN = 100


@dataclass(frozen=True, slots=True)
class Given:
    """One occurrence of an option: its value (None: none given), and where it came from."""

    option: Option
    value: str | None
    source: str  # script, env or cli
    reset: bool = False  # SBATCH_FLAG=no: the option is unset, as Slurm does for env flags

    def describe(self) -> str:
        where = {SCRIPT: "#SBATCH ", ENV: "", CLI: ""}[self.source]
        return f"{where}--{self.option.name}"


def match_long(name: str, extra: tuple[Option, ...] = ()) -> Option:
    """The option a long name (or an abbreviation of it) means, as getopt_long decides.
    extra: more options matched alongside sbatch's (msub's own)."""
    exact = BY_NAME.get(name) or next((o for o in extra if o.name == name), None)
    if exact is not None:
        return exact
    matches = [o for n, o in BY_NAME.items() if n.startswith(name)]
    matches += [o for o in extra if o.name.startswith(name)]
    if not matches:
        raise SpecError(f"unrecognized option '--{name}'")
    if len({id(o) for o in matches}) > 1:
        names = " ".join(f"'--{o.name}'" for o in sorted(matches, key=lambda o: o.name))
        raise SpecError(f"option '--{name}' is ambiguous; possibilities: {names}")
    return matches[0]


def parse(
    argv: list[str], source: str, extra: tuple[Option, ...] = ()
) -> tuple[list[Given], list[str]]:
    """getopt_long(argv) with Slurm's table (and extra long options): the options and the
    words left (from the first one that is not an option: the script and its arguments)."""
    out: list[Given] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return out, argv[i + 1 :]
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            opt = match_long(name, extra)
            if opt.arg is Arg.NONE and eq:
                raise SpecError(f"option '--{opt.name}' doesn't allow an argument")
            missing = f"option '--{opt.name}' requires an argument"
            taken, i = _value(opt, value if eq else None, argv, i, missing)
            out.append(Given(opt, taken, source))
        elif word.startswith("-") and word != "-":
            j = 1
            while j < len(word):
                letter = word[j]
                opt_or_none = BY_SHORT.get(letter)
                if opt_or_none is None:
                    raise SpecError(f"invalid option -- '{letter}'")
                opt = opt_or_none
                if opt.arg is Arg.NONE:  # a flag: more may follow in the same word (-vQ)
                    out.append(Given(opt, None, source))
                    j += 1
                    continue
                missing = f"option requires an argument -- '{letter}'"
                taken, i = _value(opt, word[j + 1 :] or None, argv, i, missing)
                out.append(Given(opt, taken, source))
                break
        else:
            return out, argv[i:]
        i += 1
    return out, []


def _value(
    opt: Option, attached: str | None, argv: list[str], i: int, missing: str
) -> tuple[str | None, int]:
    """An option's value and where parsing goes on: attached to it (--x=v, -xv); for a
    required one without, the next word, whatever it looks like (getopt_long's rule)."""
    if opt.arg is not Arg.REQUIRED or attached is not None:
        return attached, i
    if i + 1 < len(argv):
        return argv[i + 1], i + 1
    raise SpecError(missing)


def split_directive(line: str) -> list[str]:
    """The words of one #SBATCH line after the prefix, as sbatch's get_argument splits them."""
    if not any(c in line for c in "\"'\\#"):  # nothing quoted, escaped or commented
        plain = line.split()
        if not any(w[0] == ":" or w.lower() in ("hetjob", "packjob") for w in plain):
            return plain
    words: list[str] = []
    i, n = 0, len(line)
    while True:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            return words
        rest = line[i:]
        low = rest.lower()
        for sep in ("packjob", "hetjob"):
            if low.startswith(sep) and (len(rest) == len(sep) or rest[len(sep)].isspace()):
                raise SpecError("heterogeneous jobs (#SBATCH hetjob) are not supported")
        if line[i] == ":":
            raise SpecError(f"unexpected ':' in #SBATCH line {line.strip()!r}")
        word: list[str] = []
        quote = ""
        escaped = False
        started = False
        while i < n and (quote or not line[i].isspace()):
            c = line[i]
            if escaped:
                escaped = False
            elif c == "\\":
                i += 1
                if i < n and line[i] == " ":
                    word.append(" ")
                    started = True
                    i += 1
                else:
                    escaped = True
                continue
            elif quote:
                if c == quote:
                    quote = ""
                    i += 1
                    continue
            elif c in "\"'":
                quote = c
                i += 1
                continue
            elif c == "#":  # a comment: the word so far is the line's last
                if started:
                    words.append("".join(word))
                return words
            word.append(c)
            started = True
            i += 1
        if quote:
            raise SpecError(f"unmatched {quote} in #SBATCH line {line.strip()!r}")
        if not started:  # sbatch's get_argument returns no word ('""'): the line ends
            return words
        words.append("".join(word))


def directive_lines(script: str) -> list[tuple[int, str]]:
    """(line index, line) of the #SBATCH / #SLURM lines sbatch reads: from the top to the
    first line that is not blank and not a comment (the rest of the script is not read)."""
    out: list[tuple[int, str]] = []
    pos, k, n = 0, 0, len(script)
    while pos <= n:
        end = script.find("\n", pos)
        if end < 0:
            end = n
        line = script[pos:end]
        if line.startswith(DIRECTIVE_PREFIXES):
            out.append((k, line))
        else:
            stripped = line.lstrip()
            if stripped and not stripped.startswith("#"):
                break
        pos, k = end + 1, k + 1
    return out


def has_directives(script: str) -> bool:
    """Cheap test (C-speed scans) before the line-by-line reading."""
    return "#SBATCH" in script or "#SLURM" in script or has_pbs(script)


def has_pbs(script: str) -> bool:
    return "#PBS" in script or "#BSUB" in script


def script_options(script: str) -> tuple[Given, ...]:
    """The script's #SBATCH options, in order. An invalid directive is an error, as in sbatch."""
    return _read_directives(tuple(line for _, line in directive_lines(script)))


@functools.lru_cache(maxsize=512)
def _read_directives(lines: tuple[str, ...]) -> tuple[Given, ...]:
    # Cached: a user submitting the same script many times pays for reading it once.
    words: list[str] = []
    for line in lines:
        prefix = "#SBATCH" if line.startswith("#SBATCH") else "#SLURM"
        words += split_directive(line[len(prefix) :])
    given, rest = parse(words, SCRIPT)
    if rest:
        raise SpecError(f"invalid directive found in batch script: {rest[0]}")
    return tuple(given)


def pbs_lines(script: str) -> list[str]:
    """The #PBS / #BSUB lines sbatch would translate (without --ignore-pbs)."""
    found: list[str] = []
    non_comments = 0
    for line in script.split("\n"):
        if line.startswith(PBS_PREFIXES):
            found.append(line)
            continue
        if not line.startswith("#"):
            non_comments += 1
            if non_comments > _XLATE_SCAN:
                break
    return found


def neutralise(script: str) -> str:
    """The script with its #SBATCH / #SLURM lines turned into plain comments, so the site's
    sbatch reads no option from it: every option is given on its command line, where the
    daemon put it. Only the lines sbatch would read change ("#SBATCH" -> "# SBATCH"); a
    later "#SBATCH" (say in a here-document the job writes out) stays as it is. #PBS lines
    are left for --ignore-pbs, which the agent always gives."""
    lines = directive_lines(script)
    if not lines:
        return script
    parts = script.split("\n")
    for k, line in lines:
        parts[k] = "# " + line[1:]
    return "\n".join(parts)


def env_options(environ: Mapping[str, str]) -> list[Given]:
    """The options SBATCH_* (and SLURM_HINT, SLURM_CLUSTERS) variables set, as sbatch reads
    them (the order of its env_vars table; a flag set to anything but "", yes or a number
    other than 0 is unset)."""
    out: list[Given] = []
    for var, reason in ENV_ONLY_REFUSED.items():
        if var in environ:
            raise SpecError(reason)
    for var, opt in BY_ENV.items():
        value = environ.get(var)
        if value is None:
            continue
        if opt.arg is Arg.NONE:
            out.append(Given(opt, None, ENV, reset=not _env_flag(value)))
        elif opt.arg is Arg.OPTIONAL:
            out.append(Given(opt, value or None, ENV))
        else:
            out.append(Given(opt, value, ENV))
    return out


def _env_flag(value: str) -> bool:
    if value == "" or value.lower() == "yes":
        return True
    try:
        return int(value) != 0
    except ValueError:
        return False


def words(given: Iterable[Given]) -> list[str]:
    """Occurrences back to canonical argv words ("--name" / "--name=value")."""
    return [
        f"--{g.option.name}" if g.value is None else f"--{g.option.name}={g.value}" for g in given
    ]
