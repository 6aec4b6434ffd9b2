"""Which partitions can run which app recipes: what sites offer (modules, containers, paths)
against what each recipe needs and targets (sites, accelerator, precision).

For placement this is one more filter: an app's job may use a partition where at least one
of its recipes can run. The recipes travel with the job (JobSpec.app_recipes, copied from
the immutable app version at submission), so placement never looks the app up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from metasched.v1 import metasched_pb2 as pb


@dataclass(frozen=True)
class Offers:
    """What one partition offers: its site's offerings and its own, merged."""

    modules: frozenset[str] = frozenset()  # full names: gcc/12.2
    module_names: frozenset[str] = frozenset()  # and their bare names: gcc
    containers: frozenset[str] = frozenset()
    paths: frozenset[str] = frozenset()
    can_run_containers: bool = False  # the site said how it runs an image

    @staticmethod
    def of(*offerings: pb.Offerings) -> Offers:
        modules = frozenset(m for o in offerings for m in o.modules)
        return Offers(
            modules=modules,
            module_names=frozenset(m.split("/", 1)[0] for m in modules),
            containers=frozenset(c for o in offerings for c in o.containers),
            paths=frozenset(p for o in offerings for p in o.paths),
            can_run_containers=any(o.container_run for o in offerings),
        )

    def has_module(self, name: str) -> bool:
        """gcc/12.2 exactly, or a bare gcc (any version: Lmod loads the default one)."""
        return name in self.modules or ("/" not in name and name in self.module_names)


NO_OFFERS = Offers()


@dataclass(frozen=True)
class RecipeNeed:
    """One recipe, as placement sees it."""

    name: str
    sites: frozenset[str]
    accelerator: str  # "none", a GPU type, or "" (any)
    precision: str
    modules: tuple[str, ...]
    container: str
    paths: tuple[str, ...]
    gpus_per_node: int = 0  # of its accelerator type, on one node

    @staticmethod
    def of(r: pb.Recipe) -> RecipeNeed:
        return RecipeNeed(
            r.name,
            frozenset(r.sites),
            r.accelerator,
            r.precision,
            tuple(r.modules),
            r.container,
            tuple(r.paths),
            r.gpus_per_node,
        )


class AppNeeds:
    """An app job's recipes. Equal for every run of one app version (its recipes are copied
    from it), so jobs of one version share their shape class and their eligible partitions;
    the hash is computed once, as placement hashes it for every queued job."""

    __slots__ = ("_hash", "recipes", "ref")

    def __init__(self, ref: str, recipes: Iterable[RecipeNeed]) -> None:
        self.ref = ref
        self.recipes = tuple(recipes)
        self._hash = hash((ref, self.recipes))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, AppNeeds)
            and self._hash == other._hash
            and self.ref == other.ref
            and self.recipes == other.recipes
        )

    def __repr__(self) -> str:
        return f"AppNeeds({self.ref}: {', '.join(r.name for r in self.recipes)})"

    @staticmethod
    def of_spec(spec: pb.JobSpec) -> AppNeeds | None:
        if not spec.app:
            return None
        return AppNeeds(
            f"{spec.app}@{spec.app_version}", (RecipeNeed.of(r) for r in spec.app_recipes)
        )


def recipe_refusal(
    site: str,
    gpus: Mapping[str, int],
    precisions: Iterable[str],
    offers: Offers,
    r: RecipeNeed,
) -> str:
    """Why this recipe cannot run on a partition ('' = it can): the partition's site name,
    the GPUs of its nodes (type -> the most on one node), its precisions and what it offers."""
    if r.sites and site not in r.sites:
        return "not one of its sites"
    if r.accelerator == "none" and gpus:
        return "for partitions without accelerators"
    if r.accelerator and r.accelerator != "none":
        if r.accelerator not in gpus:
            return f"needs {r.accelerator} accelerators"
        most = gpus[r.accelerator]
        if r.gpus_per_node > most:
            return f"needs {r.gpus_per_node} {r.accelerator} on a node (at most {most} here)"
    if r.precision and r.precision not in precisions:
        return f"needs precision {r.precision}"
    missing = [m for m in r.modules if not offers.has_module(m)]
    if missing:
        return f"needs module {missing[0]}"
    if r.container:
        if not offers.can_run_containers:
            return "needs a container runtime"
        if r.container not in offers.containers:
            return f"needs container {r.container}"
    lacking = [p for p in r.paths if p not in offers.paths]
    if lacking:
        return f"needs path {lacking[0]}"
    return ""


def first_runnable(
    site: str,
    gpus: Mapping[str, int],
    precisions: Iterable[str],
    offers: Offers,
    app: AppNeeds,
) -> tuple[str, str]:
    """(the first recipe, in the app's order, that can run on the partition, '') or
    ('', why none can)."""
    precisions = frozenset(precisions)
    why = []
    for r in app.recipes:
        refusal = recipe_refusal(site, gpus, precisions, offers, r)
        if not refusal:
            return r.name, ""
        why.append(f"{r.name} {refusal}")
    return "", f"no recipe of {app.ref} can run here ({'; '.join(why)})"
