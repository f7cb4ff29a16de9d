"""config/marketfeed@.service, one shard per instance: it verifies, scores as the main unit does, keeps the main unit's
directives but for the per-instance ones, and three instances of it on one host load as three shards that share no
path and no instance id."""
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

from marketfeed.cli.main import parser
from marketfeed.cli.service import RunFlags
from marketfeed.config.instance import instance_of
from marketfeed.config.loader import load
from tests.support.questdb import REPO

MAIN, TEMPLATE = REPO / "config/marketfeed.service", REPO / "config/marketfeed@.service"
# What differs by design: the instance's shard, paths and id. Everything else is the main unit's, hardening included.
PER_INSTANCE = {("Unit", "Description"), ("Service", "ExecStart"), ("Service", "RuntimeDirectory"),
                ("Service", "StateDirectory"), ("Service", "WorkingDirectory"), ("Service", "Environment")}
HOST = "vm1"  # what %l, the short host name, stands for here


def directives(path: Path) -> dict[tuple[str, str], list[str]]:
    """(section, key) → its values in order (a key may repeat: SystemCallFilter, Environment)."""
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    section = ""
    for line in path.read_text().splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found[section, key].append(value)
    return found


def systemd_escape(*args: str) -> str:
    assert shutil.which("systemd-escape"), "systemd-escape missing: bin/test-deps installs systemd"
    return subprocess.run(["systemd-escape", *args], capture_output=True, text=True, check=True).stdout.strip()


def instance_name(shard: str) -> str:
    """marketfeed@<escaped shard>.service's instance part, as systemd-escape writes it."""
    unit = systemd_escape("--template", "marketfeed@.service", shard)
    return unit.removeprefix("marketfeed@").removesuffix(".service")


def expanded(value: str, instance: str) -> str:
    """The specifiers the template uses, as systemd resolves them for `instance` on host HOST."""
    specifiers = {"i": instance, "I": systemd_escape("--unescape", instance), "l": HOST}
    return re.sub(r"%(.)", lambda m: specifiers[m[1]], value)


def test_an_instance_of_the_template_verifies_cleanly_and_scores_at_most_2(tmp_path):
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: bin/test-deps installs it"
    # As tests/test_ops_service.py does for the main unit: this checkout's launcher stands in for the installed one.
    (tmp_path / TEMPLATE.name).write_text(TEMPLATE.read_text().replace("/usr/local/bin/marketfeed",
                                                                       str(REPO / "bin/marketfeed")))
    unit = tmp_path / f"marketfeed@{instance_name('0/3')}.service"
    assert unit.name == "marketfeed@0-3.service" and not unit.exists()  # systemd reads the template for it
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.stderr == "" and result.returncode == 0, result.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                              capture_output=True, text=True)
    score = re.search(r"Overall exposure level for marketfeed@0-3\.service: (\d+\.\d+)", security.stdout)
    assert score and float(score[1]) <= 2.0, security.stdout[-3000:] + security.stderr


def test_the_template_is_the_main_unit_but_for_the_per_instance_directives():
    main, template = directives(MAIN), directives(TEMPLATE)
    assert {k: v for k, v in template.items() if k not in PER_INSTANCE} == \
           {k: v for k, v in main.items() if k not in PER_INSTANCE}
    assert template["Service", "ExecStart"] == [main["Service", "ExecStart"][0] + " --shard %I"]
    assert main["Service", "DynamicUser"] == ["yes"] and len(main) > 40  # the hardening is in what is compared


def test_three_instances_on_one_host_are_three_shards_sharing_no_path_and_no_id():
    shards = 3
    template = directives(TEMPLATE)
    seen_paths: list[str] = []
    ids = set()
    for k in range(shards):
        name = instance_name(f"{k}/{shards}")
        env = dict(expanded(value, name).split("=", 1) for value in template["Service", "Environment"])
        runtime, state = (expanded(template["Service", key][0], name) for key in ("RuntimeDirectory", "StateDirectory"))
        assert expanded(template["Service", "WorkingDirectory"][0], name) == f"/var/lib/{state}"
        argv = expanded(template["Service", "ExecStart"][0], name).split()[1:]
        args = parser().parse_args(argv)
        assert args.func.__name__ == "cmd_run" and args.config == "/etc/marketfeed/marketfeed.toml"
        # The shared config's stand-in: the example, whose paths are the main unit's.
        config = RunFlags(args.log_level, args.log_format, args.shard, args.instance_id).over(
            load(str(REPO / "config/marketfeed.example.toml"), env=env))
        instance = instance_of(config, HOST)
        assert (instance.id, str(instance.shard)) == (f"{HOST}-{k}-{shards}", f"{k}/{shards}")
        ids.add(instance.id)
        service = config.service
        assert all(Path(p).parent == Path("/run", runtime) for p in (service.pid_file, service.status_file))
        state_dirs = (config.spool.dir, config.ledger.dir, config.sink.dead_letter_dir)
        assert all(Path(p).parent == Path("/var/lib", state) for p in state_dirs)
        seen_paths += [service.pid_file, service.status_file, *state_dirs]
    assert len(ids) == shards and len(set(seen_paths)) == len(seen_paths) == 5 * shards
    main = directives(MAIN)  # and none is the main unit's: both units may run on one host
    assert not {main["Service", "RuntimeDirectory"][0], main["Service", "StateDirectory"][0]} & {
        Path(p).parent.name for p in seen_paths}
