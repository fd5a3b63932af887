"""schemathesis against the app's OpenAPI schema, under uvicorn, authenticated, in naive and
tuned mode: generated requests (valid and invalid, for every operation) never get a 5xx,
input the schema forbids is rejected with a 4xx, authentication is never ignored, and every
response has a documented status, the declared content type and a body matching its schema.
Examples are bounded and derandomised so a run is fast and repeatable; a failure prints the
request that reproduces it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from marketplace.app import create_app
from marketplace.settings import Settings
from tests.e2e.harness import TIMEOUT, email, password, serve

if TYPE_CHECKING:
    from collections.abc import Iterator

    from schemathesis import Case

    from tests.e2e.harness import Dataset, Server

EXAMPLES = 10  # per operation and mode


@pytest.fixture(scope="module", params=["naive", "tuned"])
def fuzzed_server(
    request: pytest.FixtureRequest, small_dataset: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    url = small_dataset.copy(tmp_path_factory.mktemp(f"fuzz-{request.param}"))
    with serve(Settings(mode=request.param, database_url=url)) as running:
        yield running


@pytest.fixture(scope="module")
def bearer(fuzzed_server: Server) -> dict[str, str]:
    """A client's token (user 1): writes a client may make get past the role checks."""
    with httpx.Client(base_url=fuzzed_server.base_url, timeout=TIMEOUT) as client:
        response = client.post("/auth/token", json={"email": email(1), "password": password(1)})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


# The schema the app serves at /openapi.json (the same in every mode; test_schema_served
# checks that), read from the app object: collection needs no server and no database.
schema = schemathesis.openapi.from_dict(create_app(Settings(mode="naive")).openapi())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: Case[Any], fuzzed_server: Server, bearer: dict[str, str]) -> None:
    case.call_and_validate(
        base_url=fuzzed_server.base_url,
        headers=bearer,
        timeout=60,
        checks=[
            not_a_server_error,
            negative_data_rejection,  # input the schema forbids is a 4xx
            ignored_auth,  # an operation that declares auth rejects requests without it
            content_type_conformance,
            status_code_conformance,  # every status is one the schema documents
            response_schema_conformance,  # every body matches its documented schema
        ],
    )


def test_schema_served(fuzzed_server: Server) -> None:
    with httpx.Client(base_url=fuzzed_server.base_url, timeout=TIMEOUT) as client:
        served = client.get("/openapi.json").json()
    assert served == create_app(Settings(mode="naive")).openapi()
