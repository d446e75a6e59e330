# Quick start:  make demo   (live demo: simulated Biên Hòa sensors through the whole pipeline)
#               make test   (the test suite, on private Mosquitto and InfluxDB instances)
VENV ?= .venv
export VENV

.PHONY: setup demo test bench bench-nab fuzz
setup:
	@scripts/setup.sh

demo: setup
	$(VENV)/bin/citywatch demo

# pytest exits 5 when it collected no tests: for this suite that is a failure, said plainly.
test: setup
	@$(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: treating as a failure" >&2; exit 1; fi; exit $$rc

bench: setup
	$(VENV)/bin/python benchmarks/detector_bench.py
	$(VENV)/bin/python benchmarks/ingest_bench.py --allowed-lateness 0
	$(VENV)/bin/python benchmarks/notify_bench.py
	$(VENV)/bin/python benchmarks/sources_bench.py
	@$(VENV)/bin/python -c "import river" 2>/dev/null || $(VENV)/bin/python -m pip install -q -e ".[bench]"
	$(VENV)/bin/python benchmarks/river_bench.py

# NAB benchmark: make bench-nab NAB_DIR=path/to/nab (data/<category>/<file>.csv, labels/windows.json)
bench-nab: setup
	@test -n "$(NAB_DIR)" || { echo "usage: make bench-nab NAB_DIR=path/to/nab" >&2; exit 2; }
	$(VENV)/bin/python benchmarks/nab_bench.py "$(NAB_DIR)"

# Coverage-guided fuzzing of the decoders, the validator and the line-protocol encoder (atheris);
# FUZZ_ARGS e.g. "--runs 1000000 --harness payloads".
fuzz: setup
	$(VENV)/bin/pip install -q -e '.[fuzz]'
	$(VENV)/bin/python fuzz/run.py $(FUZZ_ARGS)
