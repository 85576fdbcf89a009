"""/metrics: Prometheus text that counts requests by route and status, forward passes, images and the model's
load time; behind the API key exactly as /predict is, while /health stays open. The app runs in-process
(Starlette's TestClient runs its lifespan), each with a registry of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from imgclf.inference.predictor import Predictor
from imgclf.inference.server import ServerSettings, create_app

KEY = "metrics-key"


@pytest.fixture(scope="module")
def predictor(checkpoint: Path) -> Predictor:
    return Predictor.load(checkpoint=str(checkpoint), device="cpu")


def client(predictor: Predictor, api_key: str | None = None) -> Iterator[TestClient]:
    with TestClient(create_app(predictor, ServerSettings(api_key=api_key, max_wait_ms=1))) as c:
        yield c


@pytest.fixture
def open_client(predictor: Predictor) -> Iterator[TestClient]:
    yield from client(predictor)


@pytest.fixture
def keyed_client(predictor: Predictor) -> Iterator[TestClient]:
    yield from client(predictor, KEY)


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """sample name -> [(labels, value)], from the Prometheus text (which must parse)."""
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    return found


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for got, v in found.get(name, []) if all(got.get(k) == w for k, w in labels.items()))


def test_metrics_count_requests_batches_and_images(open_client: TestClient, photos: dict[str, Path]) -> None:
    png = photos["png"].read_bytes()
    for _ in range(3):
        assert open_client.post("/predict", files={"file": ("a.png", png, "image/png")}).status_code == 200
    bad = open_client.post("/predict", files={"file": ("a.txt", b"not an image at all", "text/plain")})
    assert bad.status_code == 415

    r = open_client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    found = samples(r.text)
    assert value(found, "imgclf_requests_total", route="/predict", status="200") == 3
    assert value(found, "imgclf_requests_total", route="/predict", status="415") == 1
    assert value(found, "imgclf_request_seconds_count", route="/predict") == 4
    assert value(found, "imgclf_request_seconds_sum", route="/predict") > 0
    assert value(found, "imgclf_batch_size_count") >= 1
    assert value(found, "imgclf_batch_size_sum") == 3
    assert value(found, "imgclf_images_total") == 3
    assert value(found, "imgclf_queue_depth") == 0
    assert value(found, "imgclf_model_load_seconds") > 0
    [(build, one)] = found["imgclf_build_info"]
    assert one == 1 and build["model"] == "tiny" and build["version"]

    open_client.get("/no/such/path/1")
    open_client.get("/no/such/path/2")
    found = samples(open_client.get("/metrics").text)
    assert value(found, "imgclf_requests_total", route="other", status="404") == 2  # unknown paths: one label
    assert value(found, "imgclf_requests_total", route="/metrics", status="200") == 1  # the scrape before


def test_metrics_obey_the_api_key(keyed_client: TestClient, photos: dict[str, Path]) -> None:
    assert keyed_client.get("/health").status_code == 200  # liveness needs no key
    for headers in ({}, {"X-API-Key": "wrong"}):
        r = keyed_client.get("/metrics", headers=headers)
        assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
    png = photos["png"].read_bytes()
    assert keyed_client.post("/predict", files={"file": ("a.png", png, "image/png")}).status_code == 401
    r = keyed_client.get("/metrics", headers={"X-API-Key": KEY})
    assert r.status_code == 200
    found = samples(r.text)
    assert value(found, "imgclf_requests_total", route="/metrics", status="401") == 2  # the Guard's refusals count
    assert value(found, "imgclf_requests_total", route="/predict", status="401") == 1
    assert value(found, "imgclf_requests_total", route="/health", status="200") == 1


def test_metrics_in_openapi_with_the_key_scheme(keyed_client: TestClient) -> None:
    operation = keyed_client.get("/openapi.json").json()["paths"]["/metrics"]["get"]
    assert "text/plain" in operation["responses"]["200"]["content"]
    assert "401" in operation["responses"] and operation.get("security")


def test_apps_in_one_process_keep_their_own_counts(predictor: Predictor) -> None:
    for _ in range(2):  # a second app's registry starts at zero (no clash with the global registry either)
        with TestClient(create_app(predictor)) as c:
            c.get("/health")
            found = samples(c.get("/metrics").text)
            assert value(found, "imgclf_requests_total", route="/health", status="200") == 1
