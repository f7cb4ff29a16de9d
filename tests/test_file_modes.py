"""What the service writes is its owner's alone (service.umask, default 077): files 0600, directories 0700."""
import stat

from tests.support.polling import poll
from tests.support.service import sim_feed


def test_status_pid_log_ledger_and_spool_are_created_owner_only(service, tmp_path):
    sim = service.simulator(["binance"], {"binance": ["BTCUSDT"]}, rate=200, seed=51)
    log = tmp_path / "marketfeed.log"
    running = service([sim_feed("binance", sim, ["BTCUSDT"])], service={"log_file": str(log)})
    journal = tmp_path / "ledger" / "journal"
    poll(lambda: journal.exists() and (tmp_path / "status.json").exists(), 30, "journal and status written")
    files = [tmp_path / "status.json", tmp_path / "marketfeed.pid", log, journal]
    directories = [tmp_path / "ledger"]  # the spool and dead letters are made on first use, by the same process
    modes = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files + directories}
    assert modes == {**{str(p.relative_to(tmp_path)): "0o600" for p in files},
                     **{str(p.relative_to(tmp_path)): "0o700" for p in directories}}
    assert running.stop() == 0
