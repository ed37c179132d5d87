"""Property-based run against the backend's own OpenAPI schema: generated requests never get a 5xx.

Schemathesis turns /openapi.json into Hypothesis strategies (valid and deliberately invalid requests for every
operation) and checks each response against the schema; the run is bounded in examples and in time.
One check is left out: "schema-valid data is accepted". Any bytes are a schema-valid ``format: binary`` image, but
random bytes are not a PNG, and the backend rightly answers 422.
(Its pytest integration does not work with pytest 9 yet, hence Hypothesis's ``@given`` used directly.)
"""

from __future__ import annotations

import time
from pathlib import Path

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from backend_server import TOKEN, auth_server, bearer
from ccexpert_core import protocol

MAX_EXAMPLES = 300
#: Wall-clock budget: examples past it are drawn but not sent, so the test ends soon after.
BUDGET_S = 60.0


def test_generated_requests_never_get_a_server_error(request, tiny_model_dir: Path) -> None:
    server = auth_server(request, tiny_model_dir)
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))
    end = time.monotonic() + BUDGET_S
    sent: list[int] = []

    @given(case=cases)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case) -> None:
        if time.monotonic() > end:
            return
        response = case.call_and_validate(headers=bearer(TOKEN), timeout=60, excluded_checks=[positive_data_acceptance])
        sent.append(response.status_code)

    run()
    assert len(sent) >= 50, "too few requests within the time budget to mean anything"
    assert all(status < 500 for status in sent)
    assert server.alive()
    assert requests.get(server.url + protocol.HEALTH_PATH, timeout=30).status_code == 200
    info = requests.get(server.url + protocol.INFO_PATH, headers=bearer(TOKEN), timeout=30).json()
    assert info["internal_errors"] == 0
