"""The end-to-end verdict: the trade ids stored in QuestDB are exactly the simulator's ground truth."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from marketfeed.sim import Simulator
from tests.support.questdb import QuestDB
from tests.support.service import ServiceProcess


def truth(sim: Simulator, exchange: str, symbols: Iterable[str]) -> dict[str, list[int]]:
    """symbol → the ids of every trade that has happened on the exchange's twin, in order."""
    return {symbol: sim.truth(exchange, symbol) for symbol in symbols}


def assert_trade_ids(questdb: QuestDB, table: str, expected: Mapping[str, Sequence[int]], *,
                     exchange: str | None = None, timeout: float = 60.0, log: ServiceProcess | None = None) -> None:
    """Per symbol, the stored ids (repeats included) equal `expected`, once the WAL is applied; each symbol may
    take `timeout` to arrive. The message names, per differing symbol, what is missing, unexpected and doubled,
    with the tail of `log`'s output."""
    differences = []
    for symbol, ids in expected.items():
        want = list(ids)
        stored = questdb.wait_trade_ids(table, want, symbol, timeout, exchange)
        if stored != want:
            missing, unexpected = sorted(set(want) - set(stored)), sorted(set(stored) - set(want))
            differences.append(f"{exchange or 'any exchange'} {symbol}: {len(stored)} stored vs {len(want)} expected; "
                               f"missing {len(missing)} {missing[:10]}, unexpected {len(unexpected)} "
                               f"{unexpected[:10]}, doubled {len(stored) - len(set(stored))}")
    assert not differences, f"{table}:\n" + "\n".join(differences) + (f"\n{log.tail()}" if log else "")
