"""Property-based run against the backend's own OpenAPI schema: generated requests never get a 5xx.

Schemathesis turns /openapi.json into Hypothesis strategies (valid and deliberately invalid requests for every
operation) and checks each response against the schema; the run is bounded in examples and in time.
Schemathesis's own "schema-valid data is accepted" is replaced by a stricter reading of it: the schema declares the
limits (pairs per request, no empty file; the bytes per image in words, as schemathesis cannot negate a binary's
maxLength), so a schema-valid request may be refused only for what no JSON schema can say, which the OpenAPI
description states: ``before``, ``after`` and ``tile_ids`` of unequal lengths, or a file that is not a decodable
image (any bytes are a valid ``format: binary`` string). Data past a declared limit may get 413. Every refusal
carries the JSON error body.
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
from schemathesis.config import SchemathesisConfig
from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES
from schemathesis.core.failures import AcceptedNegativeData, FailureGroup
from schemathesis.specs.openapi.checks import positive_data_acceptance

from ccexpert_core import protocol

from backend_server import TOKEN, auth_server, bearer

MAX_EXAMPLES = 300
#: Wall-clock budget: examples past it are drawn but not sent, so the test ends soon after.
BUDGET_S = 60.0


def _invisible_in_a_form(failure: Exception) -> bool:
    """A "schema-violating request accepted" that only broke the type of ``tile_ids``: a form sends every value as
    text, so a number or an object there arrives as one valid id, and the backend rightly accepts it."""
    if not isinstance(failure, AcceptedNegativeData):
        return False
    violations = [line for line in failure.message.splitlines() if "violates" in line]
    return bool(violations) and all(f"/properties/{protocol.FIELD_TILE_IDS}" in line for line in violations)


def _refused_for_what_no_schema_says(status: int, body: dict) -> bool:
    if status != 422:
        return False
    if body["error"] == protocol.ERROR_INVALID_IMAGE:
        # Schema-valid bytes that are not a PNG, JPEG or TIFF image; an empty file is not schema-valid (minLength).
        return "is empty" not in body["detail"]
    counts = body["error"] == protocol.ERROR_INVALID_REQUEST and body.get("field") in (
        protocol.FIELD_AFTER,
        protocol.FIELD_TILE_IDS,
        protocol.FIELD_IMAGE,
    )
    if counts and ("images" in body["detail"] or "tile ids" in body["detail"]):
        return True
    # A series' intervals must name dates of its tiles in time order ("0-1,1-2"): no schema says which numbers.
    return body.get("field") == protocol.FIELD_INTERVALS


def test_generated_requests_never_get_a_server_error(request, tiny_model_dir: Path) -> None:
    server = auth_server(request, tiny_model_dir)
    # Data past a declared limit (more items than maxItems) is rightly refused with 413. The token goes in as the
    # schema's bearer scheme, so schemathesis itself leaves it out when a negative case drops the header.
    rejection = [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]
    config = SchemathesisConfig.from_dict(
        {
            "auth": {"openapi": {"HTTPBearer": {"bearer": TOKEN}}},
            "checks": {"negative_data_rejection": {"expected-statuses": rejection}},
        }
    )
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", config=config)
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))
    end = time.monotonic() + BUDGET_S
    sent: list[int] = []
    accepted: list[str] = []

    @given(case=cases)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case) -> None:
        if time.monotonic() > end:
            return
        response = case.call(timeout=60)
        try:
            case.validate_response(response, excluded_checks=[positive_data_acceptance])
        except FailureGroup as group:
            real = [failure for failure in group.exceptions if not _invisible_in_a_form(failure)]
            if real:
                raise FailureGroup(real) from None
        sent.append(response.status_code)
        if response.status_code >= 400:
            body = response.json()
            assert body["error"] and body["detail"], body
            if case.meta.generation.mode.is_positive:
                assert _refused_for_what_no_schema_says(response.status_code, body), (case.as_curl_command(), body)
        else:
            accepted.append(case.operation.label)

    run()
    assert len(sent) >= 50, "too few requests within the time budget to mean anything"
    assert protocol.CAPTIONS_PATH in " ".join(accepted), "no generated captions request was ever accepted"
    assert all(status < 500 for status in sent)
    assert server.alive()
    assert requests.get(server.url + protocol.HEALTH_PATH, timeout=30).status_code == 200
    info = requests.get(server.url + protocol.INFO_PATH, headers=bearer(TOKEN), timeout=30).json()
    assert info["internal_errors"] == 0
