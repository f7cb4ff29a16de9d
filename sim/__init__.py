"""Exchange simulator: real wire formats over real sockets, from deterministic ground truth.

    from marketfeed.sim import Simulator
    with Simulator(["binance"], ["BTCUSDT", "ETHUSDT"], rate=100, seed=1) as sim:
        url = sim.url("binance")                    # ws://127.0.0.1:PORT; REST on the same port
        conn = sim.wait_connections("binance", 1)[0]
        conn.skip_next(3)                           # lost in transit, still served over REST
        sim.truth("binance", "BTCUSDT")             # ids that have happened so far

Rooms: market.py (pure ground truth: trade i of a symbol), faults.py (pure fault plans), limits.py
(pure rate gates, the Refusal record), twin.py (the twin contract), <exchange>.py (one twin per
exchange), server.py (the asyncio shell: loop thread, one port per exchange, market clock,
connections, limits, listing changes, fault injection), cli.py.

Whole markets: Simulator(symbols={"binance": universe("binance", 3000)}) serves thousands of symbols
(the listing endpoints list them: Binance exchangeInfo, Kraken AssetPairs, Coinbase products, Polygon
T.*); sim.list_symbol(ex, s) / sim.delist_symbol(ex, s) change the listing during a run (truth() of a
delisted symbol ends at its last trade). The exchanges' documented connection limits are always
enforced (Binance 1024 streams, 5 messages/s per connection, 300 connections per 5 min per IP;
Coinbase connection and message rates, 10 subscriptions per product and channel; Polygon one
connection per cluster and key), with twin_options to change the numbers; sim.refusals(ex) lists
every refusal as Refusal(limit, detail, connection_id, time), so a test can assert there was none.

Adding an exchange = one file sim/<exchange>.py defining TWIN, a subclass of sim.twin.Twin:
  exchange: str; ping_interval, pong_timeout: float (server keepalive); id_block: int (trade ids)
  open_session(path) -> Session            parse the WS request path; raise Rejected(status, body) to refuse
  on_message(session, message) -> [bytes]  client messages (subscribe…): mutate session, return replies
  trade_frame(trade, style) -> bytes       one trade's frame, encoded once per style, broadcast as is
  batches_trades, batch_frame(frames)      optional: a clock tick's trades go out as one frame (Polygon's arrays)
  greeting(session) -> [bytes]             optional: frames sent as soon as a connection opens (status messages)
  connection_frames(trade, session, frame) optional: per-connection extra frames for a trade (Kraken ohlc, klines)
  subscribed(session, symbols, emitted)    optional: frames after a subscribe adds symbols (Coinbase last_match)
  snapshots(session, emitted)              optional: frames after every reply (Kraken snapshots)
  heartbeat(session, emitted), heartbeat_interval   optional: periodic frames on quiet connections
  shutdown_frames(session)                 optional: what Connection.announce_shutdown() sends (Binance serverShutdown)
  route(session)                           set session.symbols from its subscriptions and the symbols listed now
  generated_symbol(k)                      the k-th symbol of a generated universe (twin.universe(exchange, n))
  connection_limit, message_limit          documented limits (sim.limits); connection_refused(), messages_exceeded()
  refuse(Refused(session, limit, …))       enforce a limit on a live connection; closed(session), delisted(symbol, …)
  rest(path, query, emitted) -> RestResponse  plain GETs on the same port; trades < emitted have happened
  rest_limited(retry_after_s), rest_server_error(status, retry_after_s)   the documented answers REST faults ask for
  rest_banned(until_ms, retry_after_s), weights, rest_weight(path, query), weight_header   (Binance: 418, weights)
REST faults (Simulator, any thread): rest_throttle(exchange, count, retry_after_s=None) → the next count
requests get the exchange's rate-limit answer; rest_ban(exchange, seconds) → Binance 418 until it ends;
rest_errors(exchange, count, status=503, retry_after_s=None) → server errors. rest_log(exchange) → every
REST request as RestLogEntry(time (monotonic), path, query, status), e.g. to check a client kept to Retry-After.
Binance also budgets request weights per minute (X-MBX-USED-WEIGHT-1M; 429, then 418 when 429s are ignored).
Simulator options worth knowing: clock_paused (tests subscribe before trade 0, then start_clock()),
max_connection_age (the exchange's connection lifetime cut, e.g. Binance's 24 h), ssl_context (wss/https).
Session(style, streams, symbols): `symbols` routes trades to the connection; `style` picks the rendering.
The server provides the clock, history, connection tracking and every fault, for every twin.
"""
from marketfeed.sim.limits import Limit, Refusal
from marketfeed.sim.server import Connection, ConnectionCounters, ExchangeFaults, RestLogEntry, Simulator
from marketfeed.sim.twin import universe

__all__ = ["Connection", "ConnectionCounters", "ExchangeFaults", "Limit", "Refusal", "RestLogEntry", "Simulator",
           "universe"]
