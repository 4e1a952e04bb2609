# Two entry points for a fresh machine: `make demo` and `make test`. Both bootstrap
# their own environment (virtualenv + shaded jar) and are safe to run again.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
JAR := deploy/flink/target/cresta-pipeline-flink-deps.jar
# Flink plugins for local runs (the S3 file system), built with the jar: see deploy/flink/pom.xml.
PLUGINS := deploy/flink/target/plugins
STAMP := $(VENV)/.installed
ARGS ?=
PYTEST_ARGS ?=

.PHONY: demo test test-fast jar package venv clean

demo: $(STAMP) $(JAR)
	$(BIN)/cresta-pipeline demo $(ARGS)

test: $(STAMP) $(JAR)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not e2e" $(PYTEST_ARGS)

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

jar: $(JAR)

# dist/cresta-pipeline-flink.zip (Managed Flink) and dist/cresta-pipeline-lambdas.zip;
# `cresta-pipeline deploy` uploads them (README, "Deploying to AWS").
package: $(STAMP) $(JAR)
	$(BIN)/cresta-pipeline package --out dist

$(JAR): deploy/flink/pom.xml $(shell find deploy/flink/src -name '*.java' 2>/dev/null)
	cd deploy/flink && mvn --batch-mode --quiet package
	test -f $(JAR)
	ls $(PLUGINS)/s3-fs-hadoop/flink-s3-fs-hadoop-*.jar > /dev/null

clean:
	rm -rf $(VENV) deploy/flink/target dist
