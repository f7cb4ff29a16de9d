# The two README commands: `make demo` and `make test`; `make test-fast` runs the tests that need no QuestDB
# and no service process (those marked integration by tests/conftest.py are left out).
.PHONY: demo test test-fast bench venv test-venv questdb-stop clean

# The demo's venv has the runtime dependencies only; the tests' adds the test and bench extras.
venv:
	bin/bootstrap run

test-venv:
	bin/bootstrap test

demo: venv
	bin/marketfeed demo

# Test processes, each with its own QuestDB; a module's tests stay in one (module fixtures). TEST_WORKERS=0: serial.
TEST_WORKERS ?= 3

test: test-venv
	bin/questdb fetch >/dev/null
	bin/test-deps
	.venv/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: test-venv
	bin/test-deps
	.venv/bin/python -m pytest -m "not integration" $(PYTEST_ARGS)

bench: test-venv
	bin/questdb fetch >/dev/null
	.venv/bin/python -m bench
	.venv/bin/python -m bench.whole_market

questdb-stop:
	bin/questdb stop

clean:
	rm -rf .venv .questdb
