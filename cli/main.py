"""`marketfeed` entry point: parses the command line and dispatches to one command."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from marketfeed.config.loader import ConfigError, load
from marketfeed.config.schema import LOG_FORMATS, LOG_LEVELS, Config

# The installed service's config (README, systemd); elsewhere the current directory's.
SYSTEM_CONFIG = "/etc/marketfeed/marketfeed.toml"
LOCAL_CONFIG = "marketfeed.toml"


def default_config(system: str = SYSTEM_CONFIG) -> str:
    """-c's default: the system config when there is one, else ./marketfeed.toml."""
    return system if Path(system).is_file() else LOCAL_CONFIG


def _config(args: argparse.Namespace) -> Config:
    try:
        config = load(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config error: {problem}", file=sys.stderr)
        sys.exit(2)
    _hide_secrets(config)
    return config


def _hide_secrets(config: Config) -> None:
    """No log line of this process may show a secret of its config (README, Security)."""
    from marketfeed.config.secrets import secret_values
    from marketfeed.telemetry import logs

    logs.hide(secret_values(config))


def cmd_run(args) -> int:
    from marketfeed.cli.service import RunFlags, run

    return run(_config(args), run_flags=RunFlags(args.log_level, args.log_format, args.shard, args.instance_id))


def cmd_check_config(args) -> int:
    config = _config(args)
    print(f"{config.source}: ok ({len(config.feeds)} feeds)")
    return 0


def cmd_health(args) -> int:
    from marketfeed.cli.health import UNKNOWN, health

    try:
        config = load(args.config)
    except ConfigError as exc:  # exit 2 would read as "critical" to a monitoring system
        print(f"MARKETFEED UNKNOWN - {'; '.join(exc.problems)}")
        return UNKNOWN
    _hide_secrets(config)
    return health(config, args.json, args.timeout, args.healthcheck)


def cmd_top(args) -> int:
    from marketfeed.cli.top import top

    return top(_config(args))


def cmd_verify(args) -> int:
    from marketfeed.cli.verify import ledger_unfilled
    from marketfeed.cli.verify import run as verify

    config = _config(args)
    return verify(config, args.since, args.json, ledger_unfilled(config), args.repair)


def cmd_backfill(args) -> int:
    from marketfeed.cli.backfill import backfill

    return backfill(_config(args), args.feed, args.symbol, args.since, args.to, args.channel, args.json)


def cmd_demo(args) -> int:
    from marketfeed.cli.demo import demo

    return demo(args.duration, args.rate, args.http_listen, args.state_dir)


def cmd_files(args) -> int:
    from marketfeed.config.shipped import SHIPPED, shipped_file

    if args.name is None:
        for name, entry in SHIPPED.items():
            print(f"{name:18} {shipped_file(name)}   {entry.what}")
        return 0
    try:
        sys.stdout.buffer.write(shipped_file(args.name).read_bytes())
    except KeyError as exc:
        print(f"marketfeed files: {exc.args[0]}", file=sys.stderr)
        return 2
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="marketfeed", description="Exchange WebSocket feeds into QuestDB.")
    from marketfeed.telemetry.metrics import package_version

    p.add_argument("--version", action="version", version=f"marketfeed {package_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    config_default = default_config()

    def with_config(sp):
        sp.add_argument("-c", "--config", default=config_default,
                        help=f"TOML config file (default: {SYSTEM_CONFIG} if it exists, else ./{LOCAL_CONFIG})")
        return sp

    run = with_config(sub.add_parser("run", help="run the service in the foreground"))
    run.add_argument("--log-format", choices=[f for f in LOG_FORMATS if f != "auto"], default=None,
                     help="log lines as JSON or as text (default: service.log_format; auto: text on a terminal "
                          "without service.log_file, else JSON)")
    run.add_argument("--log-level", choices=LOG_LEVELS, default=None, help="default: service.log_level")
    run.add_argument("--shard", default=None, metavar="K/N",
                     help="this instance's share of every feed's symbols: 0 <= K < N, K auto = the ordinal ending "
                          "the host name (default: service.shard; none: all of them)")
    run.add_argument("--instance-id", default=None, metavar="ID",
                     help="default: service.instance_id, else the host name")
    run.set_defaults(func=cmd_run)
    with_config(sub.add_parser("check-config", help="validate a config file")).set_defaults(func=cmd_check_config)
    health = with_config(sub.add_parser("health", help="ask the running service for a fresh health report "
                                                       "(exit 0 ok, 1 degraded, 2 critical, 3 unknown)"))
    health.add_argument("--json", action="store_true", help="print the report as JSON")
    health.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the report (default: %(default)s)")
    health.add_argument("--healthcheck", action="store_true",
                        help="exit 0 while ok or degraded, 1 when critical or unknown (Docker's HEALTHCHECK)")
    health.set_defaults(func=cmd_health)
    with_config(sub.add_parser("top", help="live terminal dashboard of the running service")).set_defaults(func=cmd_top)
    verify = with_config(sub.add_parser("verify", help="duplicates and trade-id gaps in QuestDB (exit 1 if any)"))
    verify.add_argument("--since", default=None,
                        help="only rows from this time: ISO (2024-01-01T10:00Z) or 15m, 2h, 7d")
    verify.add_argument("--json", action="store_true", help="print the findings as JSON")
    verify.add_argument("--repair", action="store_true",
                        help="hand the trade-id gaps found to the service's recovery ledger, which fetches them")
    verify.set_defaults(func=cmd_verify)
    history = with_config(sub.add_parser(
        "backfill", help="fetch a historical range of one feed over REST into QuestDB (resumable; exit 0 all "
                         "filled, 1 incomplete, 130 interrupted)"))
    history.add_argument("--feed", required=True, help="the [[feeds]] name")
    history.add_argument("--symbol", action="append", default=[], help="only this symbol (repeatable; default: all)")
    history.add_argument("--from", dest="since", required=True,
                         help="start: ISO (2024-01-01T10:00Z) or relative to now: 90m, 2h, 7d")
    history.add_argument("--to", default=None, help="end (default: now), as --from")
    history.add_argument("--channel", action="append", default=[],
                         help="only this channel of the feed (repeatable; default: all)")
    history.add_argument("--json", action="store_true", help="one JSON line per page (default when not on a terminal)")
    history.set_defaults(func=cmd_backfill)
    demo = sub.add_parser("demo", help="local QuestDB + exchange simulator + the service")
    demo.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl-C)")
    demo.add_argument("--rate", type=float, default=50.0, help="simulated trades per second per symbol")
    demo.add_argument("--http-listen", default="127.0.0.1:8766", help="metrics/health endpoint (default: %(default)s)")
    demo.add_argument("--state-dir", default="var", help="log, status, pid and config files (default: %(default)s)")
    demo.set_defaults(func=cmd_demo)
    files = sub.add_parser("files", help="the shipped operations files: list them, or print one "
                                        "(e.g. marketfeed files systemd-unit > marketfeed.service)")
    files.add_argument("name", nargs="?", default=None, help="the file to print (default: list them with their paths)")
    files.set_defaults(func=cmd_files)
    sub.add_parser("sim", help="run the exchange simulator standalone (marketfeed sim --help)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sim"]:  # the simulator parses its own options: a REMAINDER argument would refuse them
        from marketfeed.sim.cli import main as sim_main

        return sim_main(argv[1:])
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
