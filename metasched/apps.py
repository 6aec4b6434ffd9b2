"""Apps on the shelf: their definitions (app.toml), typed parameters, and the script a recipe
renders into for the site a run is sent to (docs/apps.md).

A definition is checked whole when it is published, so that a run can only fail on what the
user gives it (a parameter value) and never on the app itself. Parameters reach the script as
typed values, each one shell word quoted by shlex: a placeholder may stand only where the
shell would read a quoted word as data (outside quotes, here-documents and comments), and a
value can never end the word it is in.
"""

from __future__ import annotations

import math
import re
import shlex
import tomllib
from collections.abc import Mapping
from typing import Any

from metasched import jobspec, precision
from metasched.v1 import metasched_pb2 as pb


class AppError(ValueError):
    """A definition or a run's parameters are wrong; the message is one line for the user."""


VISIBILITIES = ("private", "users", "public")
PARAM_TYPES = ("int", "float", "bool", "string", "choice")
MAX_DEFINITION_BYTES = 64 << 10
MAX_PARAM_VALUE = 4096
MAX_RECIPES = 16
MAX_PARAMS = 64

_NAME_RE = re.compile(r"^[a-z][a-z0-9._-]{0,62}$")
_VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,31}$")
_PARAM_RE = re.compile(r"^[a-z_][a-z0-9_]{0,31}$")
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}$")
# Module, image and path names go into the script as they are (quoted all the same): the
# characters of real module trees, registries and directories.
_MODULE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+/-]{0,127}$")
_IMAGE_RE = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9._:/@+-]{0,255}$")
_PATH_RE = re.compile(r"^/[A-Za-z0-9._+/-]{0,255}$")
_OUTPUT_RE = re.compile(r"^[A-Za-z0-9._+/-]{1,255}$")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_TOP_KEYS = {
    "name",
    "version",
    "description",
    "visibility",
    "users",
    "outputs",
    "resources",
    "params",
    "recipes",
}
_RECIPE_KEYS = {
    "name",
    "sites",
    "accelerator",
    "precision",
    "modules",
    "container",
    "paths",
    "gpus_per_node",
}
_RESOURCE_KEYS = {
    "nodes",
    "ntasks",
    "cpus_per_task",
    "mem",
    "gpus_per_node",
    "gpu_type",
    "time",
    "precision",
}


def ref(app: pb.App) -> str:
    return f"{app.name}@{app.version}"


def split_ref(text: str) -> tuple[str, str]:
    """NAME[@VERSION] -> (name, version or '')."""
    name, _, version = text.partition("@")
    if not _NAME_RE.match(name) or (version and not _VERSION_RE.match(version)):
        raise AppError(f"bad app {text[:80]!r}: use NAME or NAME@VERSION")
    return name, version


# ---------------------------------------------------------------- definitions


def parse_definition(text: str, owner: str) -> pb.App:
    """app.toml -> a checked App (owner and definition set; times and counts left to the store)."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_DEFINITION_BYTES:
        raise AppError(f"the definition is over {MAX_DEFINITION_BYTES} bytes")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise AppError(f"app.toml is not valid TOML: {e}") from None
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise AppError(f"unknown key {unknown[0]!r} in app.toml")
    app = pb.App(owner=owner, definition=text)
    app.name = _text(raw, "name", "app", required=True)
    if not _NAME_RE.match(app.name):
        raise AppError(f"bad app name {app.name[:40]!r}: lower-case letters, digits, . _ -")
    app.version = _text(raw, "version", "app", required=True)
    if not _VERSION_RE.match(app.version):
        raise AppError(f"bad version {app.version[:40]!r}: letters, digits, . + _ -")
    app.description = _text(raw, "description", "app")
    app.visibility = _text(raw, "visibility", "app") or "private"
    if app.visibility not in VISIBILITIES:
        raise AppError(f"visibility must be one of {', '.join(VISIBILITIES)}")
    app.users.extend(_names(raw, "users", "app", _USER_RE))
    if app.users and app.visibility != "users":
        raise AppError('users are listed only with visibility = "users"')
    app.outputs.extend(_names(raw, "outputs", "app", _OUTPUT_RE))
    for out in app.outputs:
        if out.startswith("/") or ".." in out.split("/"):
            raise AppError(f"output {out!r} must be relative to the run's directory, without ..")
    app.resources.CopyFrom(_resources(raw.get("resources", {})))
    params = raw.get("params", {})
    if not isinstance(params, dict) or len(params) > MAX_PARAMS:
        raise AppError(f"[params] must be a table of at most {MAX_PARAMS} parameters")
    for name, body in params.items():
        app.params.append(_param(name, body))
    recipes = raw.get("recipes")
    if not isinstance(recipes, list) or not recipes:
        raise AppError("an app needs at least one [[recipes]]")
    if len(recipes) > MAX_RECIPES:
        raise AppError(f"at most {MAX_RECIPES} recipes")
    names = {p.name for p in app.params}
    for i, body in enumerate(recipes):
        app.recipes.append(_recipe(i, body, names))
        r = app.recipes[-1]
        if r.accelerator == "none" and app.resources.gpus_per_node:
            raise AppError(
                f"recipe {r.name} is for partitions without accelerators, but [resources]"
                " asks for GPUs (give the GPU recipes gpus_per_node instead)"
            )
    seen = [r.name for r in app.recipes]
    dup = {n for n in seen if seen.count(n) > 1}
    if dup:
        raise AppError(f"two recipes are named {sorted(dup)[0]!r}")
    return app


def _text(raw: Mapping[str, Any], key: str, where: str, required: bool = False) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str):
        raise AppError(f"{where}.{key} must be a string")
    if required and not value:
        raise AppError(f"{where}.{key} is required")
    if "\x00" in value or len(value) > 4096:
        raise AppError(f"{where}.{key} is not a line of text")
    return value


def _names(raw: Mapping[str, Any], key: str, where: str, pattern: re.Pattern[str]) -> list[str]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AppError(f"{where}.{key} must be a list of strings")
    for v in value:
        if not pattern.match(v):
            raise AppError(f"bad {key[:-1] if key.endswith('s') else key} {v[:60]!r} in {where}")
    return list(dict.fromkeys(value))


def _resources(raw: Any) -> pb.JobSpec:
    if not isinstance(raw, dict):
        raise AppError("[resources] must be a table")
    unknown = sorted(set(raw) - _RESOURCE_KEYS)
    if unknown:
        known = ", ".join(sorted(_RESOURCE_KEYS))
        raise AppError(f"unknown resource {unknown[0]!r} (known: {known})")
    spec = pb.JobSpec()
    try:
        for key in ("nodes", "ntasks", "cpus_per_task", "gpus_per_node"):
            if key in raw:
                value = raw[key]
                if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                    raise AppError(f"resources.{key} must be a whole number of at least 1")
                setattr(spec, key, value)
        if "mem" in raw:
            spec.mem_per_node_mb = jobspec.parse_mem(str(raw["mem"]))
        if "time" in raw:
            spec.time_limit_minutes = jobspec.parse_time(str(raw["time"]))
        spec.gpu_type = _text(raw, "gpu_type", "resources").lower()
        spec.precision = _text(raw, "precision", "resources")
        # the checks every job passes, on a stand-in script
        jobspec.validate(_with_script(spec, "#!/bin/sh\n"))
        spec.precision = precision.normalize(spec.precision)
    except (jobspec.SpecError, precision.UnknownPrecision) as e:
        raise AppError(f"resources: {e}") from None
    return spec


def _with_script(spec: pb.JobSpec, script: str) -> pb.JobSpec:
    out = pb.JobSpec()
    out.CopyFrom(spec)
    out.script = script
    return out


def _param(name: str, body: Any) -> pb.AppParam:
    if not _PARAM_RE.match(name):
        raise AppError(f"bad parameter name {name[:40]!r}: lower-case letters, digits, _")
    if not isinstance(body, dict):
        raise AppError(f"params.{name} must be a table (type, default, description)")
    unknown = sorted(set(body) - {"type", "default", "choices", "description"})
    if unknown:
        raise AppError(f"params.{name}: unknown key {unknown[0]!r}")
    p = pb.AppParam(name=name, type=body.get("type", "string"))
    if p.type not in PARAM_TYPES:
        raise AppError(f"params.{name}.type must be one of {', '.join(PARAM_TYPES)}")
    p.description = _text(body, "description", f"params.{name}")
    choices = body.get("choices", [])
    if p.type == "choice":
        if (
            not isinstance(choices, list)
            or not choices
            or not all(isinstance(c, str) and c for c in choices)
        ):
            raise AppError(f"params.{name}: a choice needs a list of choices (strings)")
        p.choices.extend(choices)
    elif choices:
        raise AppError(f'params.{name}: choices go with type = "choice"')
    if "default" in body:
        try:
            p.default = _typed(p, body["default"])
        except AppError as e:
            raise AppError(f"params.{name}.default: {e}") from None
        p.has_default = True
    return p


def _typed(p: pb.AppParam, value: Any) -> str:
    """A value (TOML's, or the text a user gave) as the canonical text of its type."""
    if isinstance(value, str):
        text = value
        if len(text) > MAX_PARAM_VALUE:
            raise AppError(f"{p.name}: value over {MAX_PARAM_VALUE} characters")
        if any((ord(ch) < 32 and ch != "\t") or ord(ch) == 127 for ch in text):
            raise AppError(f"{p.name}: control characters (newlines, NUL...) are not allowed")
    if p.type == "int":
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise AppError(f"{p.name} must be a whole number")
        try:
            n = int(value) if isinstance(value, int) else int(value.strip(), 10)
        except ValueError:
            raise AppError(f"{p.name} must be a whole number, not {str(value)[:40]!r}") from None
        if abs(n) >= 2**63:
            raise AppError(f"{p.name} is out of range")
        return str(n)
    if p.type == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise AppError(f"{p.name} must be a number")
        try:
            x = float(value)
        except ValueError:
            raise AppError(f"{p.name} must be a number, not {str(value)[:40]!r}") from None
        if not math.isfinite(x):
            raise AppError(f"{p.name} must be a finite number")
        return repr(x)
    if p.type == "bool":
        if isinstance(value, bool):
            return "true" if value else "false"
        word = str(value).strip().lower()
        if word in ("true", "yes", "1", "on"):
            return "true"
        if word in ("false", "no", "0", "off"):
            return "false"
        raise AppError(f"{p.name} must be true or false, not {str(value)[:40]!r}")
    if not isinstance(value, str):
        raise AppError(f"{p.name} must be a string")
    if p.type == "choice" and value not in p.choices:
        raise AppError(f"{p.name} must be one of {', '.join(p.choices)}, not {value[:40]!r}")
    return value


def _recipe(i: int, body: Any, params: set[str]) -> pb.Recipe:
    where = f"recipes[{i}]"
    if not isinstance(body, dict):
        raise AppError(f"{where} must be a table")
    unknown = sorted(set(body) - _RECIPE_KEYS - {"command"})
    if unknown:
        raise AppError(f"{where}: unknown key {unknown[0]!r}")
    r = pb.Recipe(name=_text(body, "name", where, required=True))
    if not _PARAM_RE.match(r.name.replace("-", "_")):
        raise AppError(f"{where}: bad recipe name {r.name[:40]!r}")
    where = f"recipe {r.name}"
    r.sites.extend(_names(body, "sites", where, re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")))
    r.accelerator = _text(body, "accelerator", where).lower()
    if (
        r.accelerator
        and r.accelerator not in ("none", "any")
        and not re.match(r"^[a-z0-9][a-z0-9._-]{0,63}$", r.accelerator)
    ):
        raise AppError(f"{where}: bad accelerator {r.accelerator[:40]!r}")
    if r.accelerator == "any":
        r.accelerator = ""
    try:
        r.precision = precision.normalize(_text(body, "precision", where))
    except precision.UnknownPrecision as e:
        raise AppError(f"{where}: {e}") from None
    r.modules.extend(_names(body, "modules", where, _MODULE_RE))
    r.container = _text(body, "container", where)
    if r.container and not _IMAGE_RE.match(r.container):
        raise AppError(f"{where}: bad container image {r.container[:60]!r}")
    r.paths.extend(_names(body, "paths", where, _PATH_RE))
    gpus = body.get("gpus_per_node", 1 if r.accelerator not in ("", "none") else 0)
    if not isinstance(gpus, int) or isinstance(gpus, bool) or not 0 <= gpus <= 1024:
        raise AppError(f"{where}: gpus_per_node must be a whole number from 0 to 1024")
    if gpus and r.accelerator in ("", "none"):
        raise AppError(f"{where}: gpus_per_node goes with an accelerator type (a100, h100...)")
    r.gpus_per_node = gpus
    r.command = _text(body, "command", where, required=True)
    check_command(r.command, params, where)
    return r


def check_command(command: str, params: set[str], where: str = "command") -> None:
    """Refuse a command whose placeholders the shell would not read as one quoted word."""
    if "\n" in command or "\r" in command:
        raise AppError(f"{where}: the command is one line (put longer work in a script)")
    quote = ""  # the quote the scanner is inside: ', " or ` ('' = none)
    i = 0
    while i < len(command):
        ch = command[i]
        if ch == "{":
            if command.startswith("{{", i):
                i += 2
                continue
            end = command.find("}", i)
            name = command[i + 1 : end] if end > 0 else ""
            if end < 0 or not _PARAM_RE.match(name):
                raise AppError(
                    f"{where}: bad placeholder at {command[i : i + 20]!r}"
                    " (use {name}, and {{ for a brace)"
                )
            if name not in params:
                raise AppError(f"{where}: {{{name}}} is not a parameter of the app")
            if quote:
                raise AppError(
                    f"{where}: {{{name}}} is inside {quote}-quotes; parameters are quoted "
                    "for you, so put the placeholder outside quotes"
                )
            i = end + 1
            continue
        if ch == "}" and not command.startswith("}}", i):
            raise AppError(f"{where}: a lone }} (write }}}} for a brace)")
        if ch == "}":
            i += 2
            continue
        if quote == "'":
            if ch == "'":
                quote = ""
        elif ch == "\\" and quote != "'":
            if command[i + 1 : i + 2] in ("{", "}"):
                raise AppError(f"{where}: write {{{{ or }}}} for a brace, not a backslash")
            i += 1  # the next character is escaped
        elif not quote and command.startswith("$'", i):
            raise AppError(f"{where}: $'...' quoting is not allowed in a command")
        elif quote and ch == quote:
            quote = ""
        elif not quote and ch in "'\"`":
            quote = ch
        elif not quote and ch == "#" and (i == 0 or command[i - 1] in " \t;&|("):
            if _PLACEHOLDER.search(command, i):
                raise AppError(f"{where}: a placeholder in a comment would never be used")
            return
        elif not quote and command.startswith("<<", i):
            raise AppError(f"{where}: here-documents are not allowed in a command")
        i += 1
    if quote:
        raise AppError(f"{where}: unterminated {quote}-quote")


# ---------------------------------------------------------------- runs


def resolve_params(app: pb.App, given: Mapping[str, str]) -> dict[str, str]:
    """A run's parameters: every one of the app's, typed and canonical, defaults filled in."""
    known = {p.name: p for p in app.params}
    unknown = sorted(set(given) - set(known))
    if unknown:
        have = ", ".join(sorted(known)) or "none"
        raise AppError(f"{ref(app)} has no parameter {unknown[0]!r} (it has: {have})")
    out: dict[str, str] = {}
    for name, p in known.items():
        if name in given:
            out[name] = _typed(p, given[name])
        elif p.has_default:
            out[name] = p.default
        else:
            raise AppError(f"parameter {name} is required (--param {name}=...)")
    return out


def render_command(command: str, params: Mapping[str, str]) -> str:
    """The command with each {param} as one shell-quoted word, {{ and }} as braces."""
    out: list[str] = []
    i = 0
    while i < len(command):
        if command.startswith("{{", i) or command.startswith("}}", i):
            out.append(command[i])
            i += 2
            continue
        if command[i] == "{":
            end = command.index("}", i)
            out.append(shlex.quote(params[command[i + 1 : end]]))
            i = end + 1
            continue
        out.append(command[i])
        i += 1
    return "".join(out)


def render_script(
    app_ref: str,
    recipe: pb.Recipe,
    params: Mapping[str, str],
    site: str,
    offers: pb.Offerings,
) -> str:
    """The batch script of one run of an app with this recipe at this site.

    Modules are loaded in a login shell (where sites set up `module`), after any module trees
    the site said lie outside MODULEPATH. A container recipe runs its command inside the
    image through the site's own launcher (container_run), as one quoted `sh -c` word.
    """
    command = render_command(recipe.command, params)
    lines = ["#!/bin/bash -l" if recipe.modules else "#!/bin/bash"]
    lines.append(f"# metasched app {app_ref}, recipe {recipe.name}, at site {site}")
    for name, value in sorted(params.items()):
        lines.append(f"# param {name} = {shlex.quote(value)}")
    if recipe.modules:
        for tree in offers.module_use:
            lines.append(f"module use {shlex.quote(tree)}")
        loads = " ".join(shlex.quote(m) for m in recipe.modules)
        lines.append(f"module load {loads} || exit 97")
    for path in recipe.paths:
        lines.append(f'export PATH={shlex.quote(path)}:"$PATH"')
    if recipe.container:
        launcher = [shlex.quote(w) for w in shlex.split(offers.container_run)]
        image = shlex.quote(recipe.container)
        lines.append(" ".join([*launcher, image, "/bin/sh", "-c", shlex.quote(command)]))
    else:
        lines.append(command)
    return "\n".join(lines) + "\n"


def offerings_at(report: pb.SiteReport | None, partition: str) -> pb.Offerings:
    """What a site offers a job in one of its partitions: the site's and the partition's."""
    offers = pb.Offerings()
    if report is not None:
        offers.MergeFrom(report.offers)
        for p in report.partitions:
            if p.name == partition:
                offers.MergeFrom(p.offers)
                offers.container_run = p.offers.container_run or report.offers.container_run
    return offers


def spec_at_site(spec: pb.JobSpec, recipe: str, site: str, offers: pb.Offerings) -> pb.JobSpec:
    """An app's run as its site gets it: the script of `recipe` (the one chosen when it was
    forwarded) rendered for the site's offers, and the recipe's GPUs unless the run asked
    for some itself (its GPU recipe's accelerators are what the recipe runs on)."""
    recipes = {r.name: r for r in spec.app_recipes}
    chosen = recipes.get(recipe) or spec.app_recipes[0]  # recorded at forwarding
    out = pb.JobSpec()
    out.CopyFrom(spec)
    out.script = render_script(
        f"{spec.app}@{spec.app_version}", chosen, spec.app_params, site, offers
    )
    if chosen.gpus_per_node and not out.gpus_per_node:
        out.gpus_per_node = chosen.gpus_per_node
    if out.gpus_per_node and not out.gpu_type and chosen.accelerator not in ("", "none"):
        out.gpu_type = chosen.accelerator
    return out


def stub_script(app_ref: str) -> str:
    """What a run's stored script says before it has a site (replaced when it is sent)."""
    return f"#!/bin/bash\n# metasched app {app_ref}: rendered for its site's recipe when sent\n"


def visible_to(visibility: str, owner: str, users: list[str] | tuple[str, ...], user: str) -> bool:
    return visibility == "public" or user == owner or (visibility == "users" and user in users)
