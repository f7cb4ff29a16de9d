# The two README commands: `make demo` and `make test`.
.PHONY: demo test bench venv questdb-stop clean

venv:
	bin/bootstrap

demo: venv
	bin/marketfeed demo

test: venv
	bin/questdb fetch >/dev/null
	bin/test-deps
	.venv/bin/python -m pytest $(PYTEST_ARGS)

bench: venv
	bin/questdb fetch >/dev/null
	.venv/bin/python -m bench

questdb-stop:
	bin/questdb stop

clean:
	rm -rf .venv .questdb
