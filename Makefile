# Two commands: `make run` answers a prompt with the embedded default model; `make test` runs the tests.
.PHONY: run test lint bench clean
PROMPT ?= What is the capital of France? Answer in one sentence.

run:
	scripts/quickstart.sh "$(PROMPT)"

test:
	scripts/test.sh

lint:
	.venv/bin/python -m ruff check . && .venv/bin/python -m mypy

clean:
	rm -rf .venv build *.egg-info .mypy_cache .ruff_cache .pytest_cache
