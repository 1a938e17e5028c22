"""Schemathesis fuzzes every operation of the daemon's own OpenAPI schema: no input may cause a 5xx."""
from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from .conftest import Daemon

# Bounded so the run takes a minute or two on 2 cores: few examples, and generations capped at a few tokens.
MAX_EXAMPLES = 20
FUZZ_MAX_TOKENS = 4


@pytest.fixture(scope="session")
def openapi_schema(daemon: Daemon) -> Any:
    return schemathesis.openapi.from_url(daemon.url + "/openapi.json", headers=daemon.headers)


schema = schemathesis.pytest.from_fixture("openapi_schema")


def _bounded(body: Any) -> Any:
    """Keep fuzzed generations short; every other field stays as the fuzzer made it."""
    if isinstance(body, dict):
        for key in ("max_tokens", "max_completion_tokens"):
            if isinstance(body.get(key), int) and not isinstance(body.get(key), bool) and body[key] > 0:
                body[key] = min(body[key], FUZZ_MAX_TOKENS)
        if "max_tokens" not in body and "max_completion_tokens" not in body:
            body["max_tokens"] = FUZZ_MAX_TOKENS
        options = body.setdefault("options", {})  # the Ollama API's num_predict (/v1 ignores the field)
        if isinstance(options, dict):
            options["num_predict"] = FUZZ_MAX_TOKENS
        # keep_alive is engine-wide (the last request's wins): a fuzzed one would make the session's shared daemon
        # unload between the other tests' requests.
        body.pop("keep_alive", None)
    return body


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_input_causes_a_server_error(case: Any, daemon: Daemon) -> None:
    case.body = _bounded(case.body)
    case.call_and_validate(base_url=daemon.url, headers=daemon.headers, checks=[not_a_server_error],
                           timeout=180)


def test_stateful_chains_of_calls_never_cause_a_server_error(openapi_schema: Any, daemon: Daemon) -> None:
    """Schemathesis follows the schema's OpenAPI links (list models -> get one -> chat / complete with its id)."""
    from schemathesis.checks import not_a_server_error as no_5xx

    base = openapi_schema.as_state_machine()
    assert base.bundles, "the schema has no OpenAPI links to follow"
    found: list[str] = []

    class Machine(base):  # type: ignore[misc, valid-type]
        def before_call(self, case: Any) -> None:
            case.body = _bounded(case.body)

        def after_call(self, response: Any, case: Any) -> None:
            if case.operation.path == "/v1/models/{model_id}" and response.status_code == 200:
                found.append(case.path_parameters["model_id"])  # a real id: only a followed link gives one

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": daemon.url, "headers": daemon.headers, "timeout": 180}

        def validate_response(self, response: Any, case: Any, additional_checks: Any = (), **kwargs: Any) -> None:
            case.validate_response(response, checks=[no_5xx])

    Machine.run(settings=settings(max_examples=10, stateful_step_count=4, deadline=None, derandomize=True,
                                  suppress_health_check=list(HealthCheck)))
    assert found, "no chain followed a link from the model list"
