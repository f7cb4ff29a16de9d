"""The Dockerfile's build, without Docker: its COPY set installed with pip, then run from outside the checkout.

No Docker daemon (nor its base image) is reachable here, so this stands in for `docker build`: what the
image's `pip install .` gets is what this installs, and the image's default command is checked against it.
"""
import os
import re
import shutil
import subprocess
import sys

from tests.support.questdb import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_the_images_pip_install_carries_every_module_and_a_working_marketfeed_command(tmp_path):
    source, site = tmp_path / "src", tmp_path / "site"
    copied = re.findall(r"^COPY (.+) \S+$", DOCKERFILE, re.MULTILINE)
    source.mkdir()
    for paths in copied:
        for name in paths.split():
            (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, source / name)
    # The build backend (setuptools, wheel) comes with the test extras: no download during the test.
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--target", str(site), str(source)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}  # the dependencies come from this venv, as pip would install them
    env.update(re.findall(r"(MARKETFEED_\w+)=(\S+)", DOCKERFILE))  # the image's ENV

    packages = ("actors", "bin", "cli", "config", "feeds", "sim", "storage", "supervision", "telemetry")
    modules = sorted("marketfeed." + ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
                     for package in packages for path in (REPO / package).rglob("*.py")
                     if path.name != "__main__.py")  # __main__ would run the program
    imported = subprocess.run([sys.executable, "-c", f"import importlib\nfor m in {modules!r}:\n"
                               "    assert importlib.import_module(m).__file__.startswith(" + repr(str(site)) + "), m"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    # One package: nothing generic (config, cli, sim…) at the top of site-packages.
    assert sorted(p.name for p in site.iterdir() if not p.name.endswith((".dist-info", ".egg-info"))) == ["bin", "marketfeed"]

    # The image copies the example config to /etc/marketfeed/marketfeed.toml and runs `marketfeed run -c` on it.
    example = site / "marketfeed" / "config" / "marketfeed.example.toml"
    assert example.read_bytes() == (REPO / "config/marketfeed.example.toml").read_bytes()
    command = [str(site / "bin" / "marketfeed")]
    checked = subprocess.run([*command, "check-config", "-c", str(example)], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert 'CMD ["run", "-c", "/etc/marketfeed/marketfeed.toml"]' in DOCKERFILE
    helped = subprocess.run([*command, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and all(c in helped.stdout for c in ("run", "health", "verify", "sim"))
