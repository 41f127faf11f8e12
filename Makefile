# Two set-up commands for a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test ingest-examples lint bench bench-serve bench-export bench-subscriptions bench-security bench-writes bench-views bench-analysis bench-mllp docker-smoke clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python requirements.txt requirements-dev.txt pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# the JavaScript FHIR client the tests drive (fhir-kit-client, pinned by its lock file; Node.js)
JS_CLIENT := tests/js_client/node_modules/.package-lock.json
$(JS_CLIENT): tests/js_client/package-lock.json
	cd tests/js_client && npm ci --no-audit --no-fund --silent

# the HL7 FHIR validator over our resources and responses (tools/hl7-validator; Java 17 + Maven Central)
HL7_VALIDATOR := tools/hl7-validator/target/hl7-validator-1.jar
$(HL7_VALIDATOR): tools/hl7-validator/pom.xml tools/hl7-validator/src/main/java/org/pedall/validator/Validate.java
	bash .ci/system-deps
	cd tools/hl7-validator && mvn -q -B package -DskipTests

## make run: create .venv, ingest every example export into the embedded SQLite store, print the summary and outcomes, serve
run: $(STAMP)
	$(BIN)/adapter init-db
	$(BIN)/adapter ingest examples/hito/hito_seguimiento_blinatumomab.xlsx --site hito --mapping seguimiento
	$(BIN)/adapter ingest examples/hito/hito_erm_citometria.csv --site hito --mapping erm_citometria
	$(BIN)/adapter ingest examples/huanl/huanl_blinatumomab_curso_corto.xlsx --site huanl --mapping curso_corto
	$(BIN)/adapter ingest examples/uk_infants/uk_infant_blinatumomab_registry.csv --site uk-infants --mapping registry
	$(BIN)/adapter ingest examples/uk_infants/uk_mrd_lab_ORU_R01.hl7 --site uk-infants --mapping mrd_lab
	$(BIN)/adapter ingest examples/mx_multicentro/CDMX-A/BlinaLLAMulticentro_DATA_2025-01-15_1032.csv --site cdmx-a --mapping redcap
	$(BIN)/adapter ingest examples/mx_multicentro/CDMX-B/ERM_CDMX-B_ORU_R01.hl7 --site cdmx-b --mapping lab_erm
	$(BIN)/adapter ingest examples/mx_multicentro/CDMX-B/eventos_clinicos_CDMX-B.csv --site cdmx-b --mapping eventos
	$(BIN)/adapter ingest examples/mx_multicentro/CDMX-C/blinatumomab_cohort_CDMX-C.csv --site cdmx-c --mapping cohort_csv
	$(BIN)/adapter ingest examples/mx_multicentro/QRO-A/base_blinatumomab_QRO-A.xlsx --site qro-a --mapping base_xlsx
	$(BIN)/adapter ingest examples/suzhou/suzhou_research_workbook.xlsx --site suzhou --mapping research_workbook
	$(BIN)/adapter summary
	$(BIN)/adapter outcomes
	$(BIN)/adapter serve

## make test: the whole suite (lint, then tests on SQLite and PostgreSQL; .ci/postgres installs and starts
## Debian's PostgreSQL at 127.0.0.1:5432 when none answers there; .ci/system-deps installs Debian's
## Chromium and a Java 17 runtime when missing)
test: $(STAMP) $(JS_CLIENT) $(HL7_VALIDATOR)
	bash .ci/system-deps
	bash .ci/postgres
	$(BIN)/ruff check adapter tests bench examples mappings
	$(BIN)/python -m pytest -n 2 --dist loadfile --ignore=tests/test_concurrency.py
	@# the concurrency suite, 5 times in a row, each time on new databases (races to create included)
	for run in 1 2 3 4 5; do echo "concurrency suite, run $$run of 5"; \
	  $(BIN)/python -m pytest -n 2 --dist loadfile -q -p no:cacheprovider tests/test_concurrency.py || exit 1; done

## make docker-smoke: replay the Dockerfile's install and start commands in a fresh venv, check /health/ready
docker-smoke: $(STAMP)
	$(BIN)/python tests/docker_smoke.py

bench: $(STAMP)
	$(BIN)/python bench/ingest.py

bench-serve: $(STAMP)
	$(BIN)/python bench/serve.py

bench-export: $(STAMP)
	$(BIN)/python bench/export.py

bench-subscriptions: $(STAMP)
	$(BIN)/python bench/subscriptions.py

bench-writes: $(STAMP)
	$(BIN)/python bench/writes.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres

bench-views: $(STAMP)
	$(BIN)/python bench/views.py

bench-mllp: $(STAMP)
	$(BIN)/python bench/mllp.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres

bench-analysis: $(STAMP)
	$(BIN)/python bench/analysis.py

bench-security: $(STAMP)
	$(BIN)/python bench/security.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/postgres

clean:
	rm -rf $(VENV) .adapter-data .pytest_cache .hypothesis
