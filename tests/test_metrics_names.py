"""The names people see for feeds and buffers: configured names in reports and metric labels, never child ids."""
from prometheus_client import REGISTRY

from marketfeed.actors.health import export_gauges
from marketfeed.telemetry.names import known_name
from marketfeed.telemetry.report import HealthLevel


def test_a_feed_is_known_by_its_configured_name_and_a_buffer_by_its_table():
    assert known_name("feed-binance-sim") == "binance-sim"
    assert known_name("feed-buffer-x") == "buffer-x"  # only the child id's own prefix goes
    assert known_name("buffer-trades") == "trades"
    assert [known_name(i) for i in ("feeds", "sinks", "root", "health", "ledger")] == [
        "feeds", "sinks", "root", "health", "ledger"]


def test_the_health_gauges_label_actors_and_tables_by_the_names_people_configured():
    children = {"feed-names-feed": {"state": "running", "restarts": 0, "last_failure": ""}}
    buffers = {"names_table": {"spool_bytes": 4096, "breaker": "open"}}
    supervisors = {"feeds": {"name": "feeds", "strategy": "one_for_one", "restarts_in_window": 0, "gave_up": False,
                             "children": children},
                   "sinks": {"name": "sinks", "strategy": "one_for_one", "restarts_in_window": 0, "gave_up": False,
                             "children": {"buffer-names_table": {"state": "running", "restarts": 0,
                                                                 "last_failure": ""}}}}
    export_gauges({"status": HealthLevel.OK, "alerts": [], "supervisors": supervisors,  # type: ignore[typeddict-item]
                   "buffers": buffers})

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    # Each supervised actor's restarts exist at 0 before the first, under the name its metrics and logs use.
    assert value("marketfeed_actor_restarts_total", supervisor="feeds", actor="names-feed") == 0.0
    assert value("marketfeed_actor_restarts_total", supervisor="sinks", actor="names_table") == 0.0
    assert value("marketfeed_actor_restarts_total", supervisor="feeds", actor="feed-names-feed") is None
    assert value("marketfeed_spool_bytes", table="names_table") == 4096.0
    assert value("marketfeed_breaker_state", table="names_table") == 2.0


def test_connection_state_series_are_every_feed_state():
    from marketfeed.telemetry.metrics import CONNECTION_STATES
    from marketfeed.telemetry.report import FeedState

    assert set(CONNECTION_STATES) == {s.value for s in FeedState}
