"""results.json, results.md (the README's tables) and results.png from one run's results."""
from __future__ import annotations

from pathlib import Path

import orjson

TARGETS = {"p99_ms_at_10k": 150.0, "rss_steady_mb": 150.0}
CEILINGS = (  # key in a run's ratios, label
    ("raw_tls_read", "raw TLS read"),
    ("frame_decoder", "frame decoder"),
    ("parse", "parse"),
    ("row_building", "row building"),
    ("questdb_ingest", "QuestDB ingest"),
)


def write(results: dict, out: Path) -> None:
    (out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    (out / "results.md").write_text(markdown(results))
    chart(results, out / "results.png")


def _n(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def held(lat: dict) -> bool:
    """The run kept (nearly) its fixed rate; otherwise its latencies measure a growing backlog."""
    return lat["achieved_rate"] >= 0.9 * lat["rate"]


def _runs(values: list[float]) -> str:
    """ (median of 3: a, b, c) — empty for a single run."""
    if len(values) < 2:
        return ""
    return f" (median of {len(values)}: {', '.join(_n(v) for v in sorted(values))})"


def _run_name(run: dict) -> str:
    return f"marketfeed, {run['mode'].upper()}, {run['feeds']} feed{'s' if run['feeds'] > 1 else ''}"


def markdown(r: dict) -> str:
    m, c = r["machine"], r["ceilings"]
    loads = ", ".join(f"{x:.2f}" for x in m["load_average"])
    end = ", ".join(f"{x:.2f}" for x in m.get("load_average_end", ()))
    stock = c["websocket_client_recv_msgs_s"]
    lines = [
        (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}, Python {m['python']}, "
         f"{m['questdb']}; load average {loads} at the start{f', {end} at the end' if end else ''} (a shared "
         "machine: compare ratios within one run, not rates across runs)."),
        "",
        (f"One Binance stream (trade events, 2 symbols) over {c['tls']} from a near-free sender (every frame "
         "pre-rendered, written in chunks of 1000 trades per symbol), recorded once by the raw read; each later "
         f"stage runs alone over the output of the one before ({_n(c['frames'])} frames; the parser and what follows "
         "on the first of them). marketfeed end to end is a real `marketfeed run` process reading the same kind of "
         "stream over TLS (feeds.ca_file) into this QuestDB, until every id is visible."),
        "",
        "| ceiling (one Python thread, one stage alone) | DOUBLE | DECIMAL |",
        "| --- | --- | --- |",
        (f"| raw TLS read (bytes only; {_n(c['raw_tls_read_mb_s'])} MiB/s) | {_n(c['raw_tls_read_msgs_s'])} msgs/s"
         f"{_runs(c['raw_tls_read_runs_msgs_s'])} | same |"),
        f"| frame decoder (feeds/wsframes.py) | {_n(c['frame_decoder_msgs_s'])} msgs/s | same |",
    ]
    labels = (("parse_msgs_s", "parse (BinanceProtocol.parse: msgspec, numbers, the row)", "msgs/s"),
              ("row_building_rows_s", "row building (the sink's ILP encoder)", "rows/s"),
              ("questdb_ingest_rows_s", "QuestDB ingest of pre-built buffers", "rows/s"))
    modes = c["modes"]
    for key, label, unit in labels:
        lines.append(f"| {label} | {_n(modes['double'][key])} {unit} | {_n(modes['decimal'][key])} {unit} |")
    lines.append(f"| for reference: stock websocket-client recv() loop (not on marketfeed's path) | "
                 f"{_n(stock) + ' msgs/s' if stock else 'not measured'} | |")
    lines += ["", "| end to end (rows in QuestDB, ids complete) | rows/s | "
              + " | ".join(f"÷ {label}" for _, label in CEILINGS) + " | CPU µs/msg | RSS steady / peak |",
              "| --- | --- |" + " --- |" * (len(CEILINGS) + 2)]
    for run in r["max_rate"]:
        ok = "" if run["ids_complete"] else " (ids NOT complete)"
        ratios = " | ".join(f"{run['ratios'][key]:.1%}" for key, _ in CEILINGS)
        lines.append(f"| {_run_name(run)} | {_n(run['rows_s'])}{ok}{_runs(run.get('rows_s_runs', []))} | {ratios} | "
                     f"{_n(run['cpu_us_per_msg'], 1)} | {_n(run['rss_steady_mb'])} / {_n(run['rss_peak_mb'])} MB |")
    cost = r["decimal_cost"]
    lines += ["", (f"DECIMAL as a share of DOUBLE: parse {cost['parse_msgs_s']:.0%}, row building "
                   f"{cost['row_building_rows_s']:.0%}, QuestDB ingest {cost['questdb_ingest_rows_s']:.0%}, end to "
                   f"end (1 feed) {_pct(cost['end_to_end'])}."), ""]
    lines += ["| latency and memory | value | target |", "| --- | --- | --- |"]
    for lat in r["latency"]:
        target = f"p99 ≤ {TARGETS['p99_ms_at_10k']:.0f} ms" if lat["rate"] == 10_000 else ""
        if not lat.get("reachable", True):
            lines.append(f"| latency send→ack at {lat['rate']:,} msgs/s | not reachable | {target} |")
            continue
        if not held(lat):
            lines.append(f"| latency send→ack at {lat['rate']:,} msgs/s | not reachable: the paced run reached "
                         f"{_n(lat['achieved_rate'])} msgs/s (p50 {_n(lat['p50_ms'])} ms) | {target} |")
            continue
        lines.append(f"| latency send→ack at {lat['rate']:,} msgs/s: p50 / p99 / max | {_n(lat['p50_ms'], 1)} / "
                     f"{_n(lat['p99_ms'], 1)} / {_n(lat['max_ms'], 1)} ms | {target} |")
    one = next(run for run in r["max_rate"] if run["feeds"] == 1)
    lines.append(f"| RSS at max rate, 1 feed: steady | {_n(one['rss_steady_mb'])} MB | "
                 f"≤ {TARGETS['rss_steady_mb']:.0f} MB |")
    o = r["outage"]
    lines.append(f"| RSS during a {o['outage_s']:.0f} s QuestDB outage at {o['rate']:,} msgs/s: steady / peak | "
                 f"{_n(o['rss_steady_mb'])} / {_n(o['rss_peak_mb'])} MB (before: {_n(o['rss_before_mb'])} MB); "
                 f"ids complete after recovery: {'yes' if o['ids_complete_after'] else 'NO'} | |")
    f = r["flush_settings"]
    which = "a run of their own, not a measured one" if r["plan"]["profile_apart"] else "the measured run"
    profiles = ", ".join(f"{mode}: {p['file'] if 'file' in p else 'not recorded (' + p['error'] + ')'}"
                         for mode, p in r["profiles"].items())
    lines += ["", "Flush settings (the defaults): " + ", ".join(f"`{k} = {v}`" for k, v in f.items()) + ". "
              "Latency is from the time the paced simulator was due to send a trade (it sends pre-rendered "
              "frames on that schedule, at most 2 ms late, so a late sender counts against marketfeed) to the "
              "return of the writer's flush carrying it (QuestDB's HTTP acknowledgement).", "",
              f"py-spy profiles of a 1-feed max-rate run ({which}): {profiles}.", ""]
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def chart(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = r["ceilings"]
    modes = c["modes"]
    names = ["raw TLS\nread", "frame\ndecoder", "parse\nDOUBLE", "parse\nDECIMAL", "rows\nDOUBLE", "rows\nDECIMAL",
             "ingest\nDOUBLE", "ingest\nDECIMAL", *(_run_name(run).removeprefix("marketfeed, ").replace(", ", "\n")
                                                    for run in r["max_rate"])]
    values = [c["raw_tls_read_msgs_s"], c["frame_decoder_msgs_s"],
              *(modes[mode][key] for key in ("parse_msgs_s", "row_building_rows_s", "questdb_ingest_rows_s")
                for mode in ("double", "decimal")), *(run["rows_s"] for run in r["max_rate"])]
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [3, 1]})
    left.bar(names, [v / 1000 for v in values], color=["#888"] * 8 + ["#1f77b4"] * len(r["max_rate"]))
    left.set_yscale("log")
    left.set_ylabel("thousand messages (rows) per second, log scale")
    left.set_title("ceilings of one Python thread (grey) vs marketfeed end to end (blue), over TLS")
    left.tick_params(axis="x", labelsize=7)
    lat = [x for x in r["latency"] if x.get("reachable", True) and held(x)]
    labels = [f"{x['rate']:,}/s" for x in lat]
    for i, (key, colour) in enumerate((("p50_ms", "#2ca02c"), ("p99_ms", "#ff7f0e"), ("max_ms", "#d62728"))):
        right.bar([j + (i - 1) * 0.27 for j in range(len(lat))], [x[key] or 0 for x in lat], 0.27, label=key[:-3],
                  color=colour)
    right.set_xticks(range(len(lat)), labels)
    right.set_ylabel("send → QuestDB ack, ms")
    right.set_title("latency at fixed rates")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
