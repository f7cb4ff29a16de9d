"""The shape of the tree: no two modules import each other (directly or round a loop, lazy imports included)."""
import ast
import graphlib

from tests.support.questdb import REPO

FOLDERS = ("actors", "bin", "cli", "config", "feeds", "sim", "storage", "supervision", "telemetry")


def module_name(path) -> str:
    return "marketfeed." + ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def imports() -> dict[str, set[str]]:
    """Every marketfeed module → the marketfeed modules it imports anywhere in its text (inside functions too)."""
    modules = {module_name(path): path for folder in FOLDERS for path in (REPO / folder).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("marketfeed."):
                # `from marketfeed.feeds import registry` imports the module feeds.registry, not feeds/__init__.
                targets |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                            for alias in node.names}
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.startswith("marketfeed.")}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycle_between_modules():
    graph = imports()
    assert len(graph) > 50  # the whole tree was read
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"modules import each other: {' → '.join(exc.args[1])}") from None


def test_the_cycle_check_sees_a_lazy_import():
    graph = imports()
    graph["marketfeed.feeds.base"].add("marketfeed.actors.feed")  # as if feeds/base.py imported the actor lazily
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError:
        return
    raise AssertionError("a cycle through the actor was not found")
