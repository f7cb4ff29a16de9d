"""results.json, results.md (the README table) and results.png from one run's results."""
from __future__ import annotations

from pathlib import Path

import orjson

TARGETS = {"ratio_to_raw_receive": 0.80, "p99_ms_at_10k": 250.0, "rss_steady_mb": 150.0}


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


def markdown(r: dict) -> str:
    m, c = r["machine"], r["ceilings"]
    one, four = r["max_rate"]
    lines = [
        (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}, Python {m['python']}, "
         f"QuestDB {m['questdb']}; load average at start {', '.join(f'{x:.2f}' for x in m['load_average'])} "
         "(shared machine: compare ratios within one run)."),
        "",
        "| measurement | value | target |",
        "| --- | --- | --- |",
        (f"| ceiling: raw websocket-client receive (no parsing) | {_n(c['raw_receive_msgs_s'])} msgs/s"
         f"{_runs(c.get('raw_receive_runs_msgs_s', []))} | |"),
        f"| ceiling: orjson parse of the same frames | {_n(c['orjson_parse_msgs_s'])} msgs/s | |",
        f"| ceiling: Binance parser (orjson + row) | {_n(c['binance_parser_msgs_s'])} msgs/s | |",
        f"| ceiling: questdb row building | {_n(c['row_building_rows_s'])} rows/s | |",
        f"| ceiling: QuestDB ingest of pre-built buffers | {_n(c['questdb_ingest_rows_s'])} rows/s | |",
    ]
    for run in (one, four):
        ok = "" if run["ids_complete"] else " (ids NOT complete)"
        target = f"≥ {TARGETS['ratio_to_raw_receive']:.0%} of raw receive" if run is one else ""
        lines.append(f"| marketfeed end to end, {run['feeds']} feed(s), max rate | {_n(run['rows_s'])} rows/s = "
                     f"{run['ratio_to_raw_receive']:.0%} of raw receive{ok}{_runs(run.get('rows_s_runs', []))} | "
                     f"{target} |")
    for run in (one, four):
        lines.append(f"| RSS at max rate, {run['feeds']} feed(s): steady / peak | {_n(run['rss_steady_mb'])} / "
                     f"{_n(run['rss_peak_mb'])} MB | steady ≤ {TARGETS['rss_steady_mb']:.0f} MB |")
        lines.append(f"| CPU per 1000 msgs, {run['feeds']} feed(s), max rate | {_n(run['cpu_s_per_1000'], 3)} s | |")
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
    o = r["outage"]
    lines.append(f"| RSS during a {o['outage_s']:.0f} s QuestDB outage at {o['rate']:,} msgs/s: steady / peak | "
                 f"{_n(o['rss_steady_mb'])} / {_n(o['rss_peak_mb'])} MB (before: {_n(o['rss_before_mb'])} MB); "
                 f"ids complete after recovery: {'yes' if o['ids_complete_after'] else 'NO'} | |")
    f = r["flush_settings"]
    lines += ["", "Flush settings (the defaults): " + ", ".join(f"`{k} = {v}`" for k, v in f.items()) + ". "
              "Latency is from the time the paced simulator was due to send a trade (it sends pre-rendered "
              "frames on that schedule, at most 2 ms late, so a late sender counts against marketfeed) to the "
              "return of the writer's flush carrying it (QuestDB's HTTP acknowledgement).", ""]
    return "\n".join(lines)


def chart(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = r["ceilings"]
    names = ["raw receive", "orjson parse", "Binance parser", "row building", "QuestDB ingest",
             "marketfeed\n1 feed", "marketfeed\n4 feeds"]
    values = [c["raw_receive_msgs_s"], c["orjson_parse_msgs_s"], c["binance_parser_msgs_s"], c["row_building_rows_s"],
              c["questdb_ingest_rows_s"], *(run["rows_s"] for run in r["max_rate"])]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
    left.bar(names, [v / 1000 for v in values], color=["#888"] * 5 + ["#1f77b4"] * 2)
    left.set_yscale("log")
    left.set_ylabel("thousand messages (rows) per second, log scale")
    left.set_title("ceilings of one Python process vs marketfeed end to end")
    left.tick_params(axis="x", labelsize=8)
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
