"""Schemathesis fuzzes the served OpenAPI spec: whatever it sends, the service answers without a 5xx."""

from __future__ import annotations

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings as hypothesis_settings
from schemathesis.checks import not_a_server_error

from altlake.config import Settings
from explore.index import build_index
from explore.service import ServiceConfig, create_app, load_explorers
from tests.explore.conftest import synthetic_metadata, unit_rows, write_shard


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz") / "rel-fuzz"
    rng = np.random.default_rng(5)
    img, txt = unit_rows(rng, 120, 8), unit_rows(rng, 120, 8)
    write_shard(root, 0, img, txt, synthetic_metadata(0, 120, rng, img))
    build_index(str(root))
    config = ServiceConfig(max_body_bytes=256 * 1024)
    return create_app(load_explorers([str(root)], config, Settings.from_env()), config)


def test_no_input_makes_a_server_error(app):
    """Every operation of the spec, fuzzed through schemathesis' hypothesis strategies.

    (Driven by hand rather than `schemathesis.pytest.from_fixture`, whose plugin breaks on pytest 9.)
    """
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/knn-service", "/metadata", "/indices-list", "/indices/{name}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            case.call_and_validate(checks=[not_a_server_error])

        fuzz()

    from fastapi.testclient import TestClient

    served = [line for line in TestClient(app).get("/metrics").text.splitlines() if line.startswith("altlake_explore_requests_total{")]
    knn_calls = sum(float(line.rsplit(" ", 1)[1]) for line in served if 'route="/knn-service"' in line)
    assert knn_calls >= 30, served  # the fuzzing really reached the endpoint
    assert not any('status="5' in line for line in served), served


def test_the_spec_documents_the_protocol(app):
    from fastapi.testclient import TestClient

    spec = TestClient(app).get("/openapi.json").json()
    assert {"/knn-service", "/metadata", "/indices-list", "/healthz", "/metrics"} <= set(spec["paths"])
    body = spec["components"]["schemas"]["KnnRequest"]["properties"]
    assert {"text", "image", "image_url", "embedding_input", "modality", "num_images", "use_mclip", "deduplicate", "use_safety_model"} <= set(body)
