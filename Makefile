# The README's two commands: `make demo` (the main job) and `make test`.
# Both create .venv and install what they need from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install tools clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/streamrec demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# promtool and amtool (Debian's prometheus and prometheus-alertmanager packages) check the
# alert rules and Alertmanager's routes in the tests.
tools:
	@(command -v promtool && command -v amtool) >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		prometheus prometheus-alertmanager >/dev/null) || \
		echo "promtool/amtool unavailable: rule and route checks will be skipped"

test: $(STAMP) tools lint
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .streamrec reports
