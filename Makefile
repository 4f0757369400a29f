# Two entry points for a fresh clone: `make demo` and `make test`.
# Each makes the virtual environment and installs what it needs first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# A Debian package installed where apt can, quietly; the package lists refreshed once if needed.
apt_install = (command -v apt-get >/dev/null && export DEBIAN_FRONTEND=noninteractive && \
  (apt-get install -y -q $(1) >/dev/null 2>&1 || \
   (apt-get update -q >/dev/null && apt-get install -y -q $(1) >/dev/null 2>&1)))

.PHONY: demo test check bench bench-ledger bench-reads bench-memory database browser build-deps clean

# setup.py and the C it builds too: an editable install compiles ledger/_binary_rows.c only when installed.
$(STAMP): pyproject.toml setup.py ledger/_binary_rows.c | build-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The ledger's C row writer needs a C compiler and OpenSSL's headers. Fetch the headers where
# apt can; without them the install goes on, the ledger writes the same rows in Python, and
# the test that the writer was built says so.
build-deps:
	@test -f /usr/include/openssl/evp.h || $(call apt_install,libssl-dev) || \
	  echo "OpenSSL's headers (Debian: libssl-dev) are missing: the ledger's C row writer is not built" >&2

# PostgreSQL is only needed by the tests and by a demo pointed at it
# (ACCORD_LEDGER_URL); start the local cluster if it is installed but down.
database:
	@pg_isready -q -h 127.0.0.1 -p 5432 || \
	  (command -v pg_ctlcluster >/dev/null && \
	   pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | head -1) main start && \
	   for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done) || \
	  (echo "PostgreSQL is not reachable on 127.0.0.1:5432" >&2; exit 1)

# The browser tests drive Debian's Chromium (Playwright's own browser download cannot
# work offline); install it when it is missing and the machine lets us.
browser:
	@command -v chromium >/dev/null || $(call apt_install,chromium) || \
	  (echo "Chromium is needed for the browser tests: apt-get install chromium" >&2; exit 1)

demo: $(STAMP)
	$(BIN)/accord demo

# Four pytest workers on two cores: most integration tests wait on a broker, a database or a
# child process, and with two workers the cores sat about half idle (suite 731 s; 485 s with four).
test: $(STAMP) database browser
	$(BIN)/pytest -q -n 4 --dist loadfile --durations=15

# Lint, format, types and the import layers; CI runs it before the tests.
check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/accord schemas check

# raw Kafka, the I/O floor and the pipeline (PostgreSQL as the app role, SQLite; 1 and 2
# workers) on one broker and the same records, then latency at steady loads (~5 minutes).
bench: $(STAMP) database
	$(BIN)/python bench/pipeline.py

# ledger.append (100,000 entries, 1,000 per transaction) against a raw COPY of the same rows.
bench-ledger: $(STAMP) database
	$(BIN)/python bench/ledger_append.py

# Proofs, a subject report and an export on a 1,000,000-entry ledger (built once, kept in schema bench_ledger_reads).
bench-reads: $(STAMP) database
	$(BIN)/python bench/ledger_reads.py

# The processor's memory over 1,000,000 events, and while it retracts a suspended agreement.
bench-memory: $(STAMP) database
	$(BIN)/python bench/processor_memory.py

clean:
	-$(BIN)/accord dev down
	rm -rf $(VENV) .accord
