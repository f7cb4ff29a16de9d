"""The tree passes ruff (pyproject.toml [tool.ruff]) and mypy (setup.cfg [mypy]): any finding fails, with its output."""
import configparser
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# setup.cfg [mypy] mypy_path reads the package here: mypy cannot follow setuptools' editable import hook.
LINKED_PACKAGE = ROOT / ".mypy_cache" / "package"


def package_dir() -> dict[str, str]:
    """setup.cfg's package_dir: marketfeed.<folder> → <folder>."""
    options = configparser.ConfigParser()
    options.read(ROOT / "setup.cfg")
    pairs = (line.split("=") for line in options["options"]["package_dir"].strip().splitlines())
    return {package.strip(): folder.strip() for package, folder in pairs}


PACKAGE_DIR = package_dir()
PACKAGES = (*PACKAGE_DIR, "bench", "tests")
FOLDERS = (*PACKAGE_DIR.values(), "bench", "tests")


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=300)


def link_package() -> None:
    """marketfeed/<folder> → <folder>, as the package is installed (relative links: the checkout may move)."""
    for package, folder in PACKAGE_DIR.items():
        link = LINKED_PACKAGE.joinpath(*package.split("."))
        if not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(*[".."] * (len(link.relative_to(ROOT).parts) - 1), folder))


def test_ruff_finds_nothing():
    result = run("ruff", "check", "--no-fix", "--output-format", "concise", *FOLDERS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing():
    link_package()
    result = run("mypy", *(arg for package in PACKAGES for arg in ("-p", package)))
    findings = result.stdout.replace(f"{LINKED_PACKAGE.relative_to(ROOT)}/marketfeed/", "")  # as checkout paths
    assert result.returncode == 0, findings + result.stderr
    # Nothing left out: every module of the source folders was checked (tests/sim/simclient.py as imported).
    checked = re.search(r"no issues found in (\d+) source files", result.stdout)
    modules = [path for folder in FOLDERS for path in (ROOT / folder).rglob("*.py")]
    assert checked and int(checked[1]) >= len(modules) - 1, result.stdout
