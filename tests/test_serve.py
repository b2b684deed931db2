"""The HTTP service: auth, limits, error items, truncation, parity with the library, micro-batching,
and one real uvicorn process on a loopback port."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from twinnet.calibration import fit_calibrator
from twinnet.errors import TwinnetError
from twinnet.serve import MicroBatcher, ServeSettings, check_bind, create_app, load_api_keys

from conftest import synthetic_pairs

KEY = "test-key-123"
HEADERS = {"X-API-Key": KEY}


@pytest.fixture
def calibrated(tiny_model):
    pairs = synthetic_pairs(12)
    tiny_model.calibration_ = fit_calibrator(tiny_model.score_pairs(pairs), pairs.labels)
    return tiny_model


@pytest.fixture
def client(calibrated):
    app = create_app(calibrated, api_keys={KEY}, settings=ServeSettings(max_items=8, max_chars=200))
    with TestClient(app) as c:
        yield c


def test_auth_is_required_and_checked(client):
    body = {"inputs": ["sony tv"]}
    assert client.post("/v1/embed", json=body).status_code == 401
    assert client.post("/v1/embed", json=body, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/v1/embed", json=body, headers=HEADERS).status_code == 200
    assert client.post("/v1/embed", json=body, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert client.get("/v1/model").status_code == 401
    assert client.get("/v1/health").json()["status"] == "ok"  # probes need no key


def test_verify_equals_the_library(client, calibrated):
    pairs = synthetic_pairs(3)
    body = {"pairs": [{"left": a, "right": b} for a, b in zip(pairs.left, pairs.right)]}
    answer = client.post("/v1/verify", json=body, headers=HEADERS).json()
    expected = calibrated.verify(list(pairs.left), list(pairs.right))
    assert answer["threshold"] == pytest.approx(calibrated.calibration_.threshold_)
    for got, want in zip(answer["results"], expected):
        assert got["same"] == want.same
        assert got["score"] == pytest.approx(want.score, abs=1e-6)
        assert got["probability"] == pytest.approx(want.probability, abs=1e-6)


def test_embed_equals_the_library_and_accepts_records(client, calibrated):
    items = ["sony tv xr100", {"name": "lg speaker", "price": 12.5}]
    answer = client.post("/v1/embed", json={"inputs": items}, headers=HEADERS).json()
    assert answer["dimension"] == 32
    np.testing.assert_allclose(np.asarray(answer["embeddings"]), calibrated.embed(items), atol=1e-6)


@pytest.mark.parametrize("bad, item, fragment", [
    (["ok", ""], 1, "empty"),
    (["ok", "fine", "\ud800 broken"], 2, "surrogate"),
    (["ok", {"name": float("nan")}], 1, "finite"),
    (["ok", None], 1, None),
    (["ok", 5], 1, None),
    (["hello", float("nan")], 1, None),  # case C10: a missing value in a batch
    (["hello", "   "], 1, "empty"),      # case C11: empty after stripping
])
def test_bad_items_give_422_naming_the_item(client, bad, item, fragment):
    payload = json.dumps({"inputs": bad}, allow_nan=True)  # JSON with NaN / lone surrogate, as a client may send
    response = client.post("/v1/embed", content=payload, headers={**HEADERS, "content-type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["item"] == item
    if fragment:
        assert fragment in error["message"]


def test_bad_pair_names_the_pair(client):
    body = {"pairs": [{"left": "a", "right": "b"}, {"left": "sony", "right": "   "}]}
    error = client.post("/v1/verify", json=body, headers=HEADERS).json()["error"]
    assert error["item"] == 1 and "right" in error["message"]


def test_limits_and_unknown_fields(client):
    too_many = client.post("/v1/embed", json={"inputs": ["x"] * 9}, headers=HEADERS)
    assert too_many.status_code == 413 and "limit is 8" in too_many.json()["error"]["message"]
    too_long = client.post("/v1/embed", json={"inputs": ["ok", "y" * 201]}, headers=HEADERS)
    assert too_long.status_code == 413 and too_long.json()["error"]["item"] == 1
    unknown = client.post("/v1/embed", json={"inputs": ["x"], "normalise": True}, headers=HEADERS)
    assert unknown.status_code == 422 and "normalise" in unknown.json()["error"]["message"]
    assert client.post("/v1/embed", json={"inputs": []}, headers=HEADERS).status_code == 422


def test_long_inputs_report_truncation(client):
    long = "sony bravia television " * 8  # 184 characters (under the limit), over 32 tokens
    answer = client.post("/v1/embed", json={"inputs": ["short", long]}, headers=HEADERS).json()
    assert [t["item"] for t in answer["truncated"]] == [1]
    assert answer["truncated"][0]["tokens_cut"] > 0
    verdict = client.post("/v1/verify", json={"pairs": [{"left": "a", "right": long}]}, headers=HEADERS).json()
    assert verdict["truncated"][0]["side"] == "right"


def test_model_endpoint_shows_calibration(client, calibrated):
    info = client.get("/v1/model", headers=HEADERS).json()
    assert info["calibration"]["threshold"] == pytest.approx(calibrated.calibration_.threshold_)
    assert "validation_curve" not in info["calibration"]


def test_uncalibrated_model_cannot_verify_but_can_embed(tiny_model):
    with TestClient(create_app(tiny_model, api_keys=None)) as c:
        assert c.post("/v1/verify", json={"pairs": [{"left": "a", "right": "b"}]}).status_code == 409
        assert c.post("/v1/verify", json={"pairs": [{"left": "a", "right": "b"}], "threshold": 0.5}).status_code == 200
        assert c.post("/v1/embed", json={"inputs": ["a"]}).status_code == 200


def test_micro_batching_joins_concurrent_requests(calibrated):
    async def scenario():
        batcher = MicroBatcher(calibrated, max_batch=64, max_wait_ms=50)
        batcher.start()
        results = await asyncio.gather(*(batcher.embed([f"item {i}", f"other {i}"]) for i in range(10)))
        await batcher.stop()
        return batcher.passes, results

    passes, results = asyncio.run(scenario())
    assert passes < 10  # ten requests, fewer forward passes
    np.testing.assert_allclose(results[3][0], calibrated.embed(["item 3", "other 3"]), atol=1e-6)


def test_binding_rules(tmp_path, monkeypatch):
    with pytest.raises(TwinnetError, match="loopback"):
        check_bind("0.0.0.0", auth=False, keys=set())
    with pytest.raises(TwinnetError, match="no API key"):
        check_bind("127.0.0.1", auth=True, keys=set())
    check_bind("127.0.0.1", auth=False, keys=set())
    keys = tmp_path / "keys"
    keys.write_text("# team keys\nalpha\n\nbeta\n")
    assert load_api_keys(keys) == {"alpha", "beta"}
    monkeypatch.setenv("TWINNET_API_KEY", "one, two")
    assert load_api_keys() == {"one", "two"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_uvicorn_process_serves_and_shuts_down_gracefully(tmp_path, calibrated):
    import httpx

    folder = calibrated.save(tmp_path / "model")
    port = _free_port()
    env = {**os.environ, "TWINNET_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "twinnet", "serve", str(folder), "--port", str(port),
                             "--threads", "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("server did not start: " + proc.stdout.read() if proc.stdout else "")
        answer = httpx.post(f"{url}/v1/verify", headers={**HEADERS, "X-Request-ID": "req-42"}, timeout=10,
                            json={"pairs": [{"left": "sony tv xr100", "right": "xr100 tv set from sony"}]})
        assert answer.status_code == 200 and answer.headers["x-request-id"] == "req-42"
        assert answer.json()["results"][0]["score"] == pytest.approx(
            calibrated.verify("sony tv xr100", "xr100 tv set from sony").score, abs=1e-5)
        assert httpx.post(f"{url}/v1/verify", json={"pairs": []}, timeout=10).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=30)[0]
    # uvicorn finishes in-flight work and shutdown hooks, then re-raises SIGTERM: exit by that signal
    assert proc.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    access = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert {"path": "/v1/verify", "status": 200, "items": 1, "request_id": "req-42"}.items() <= next(
        a for a in access if a["request_id"] == "req-42").items()
    assert any(a["path"] == "/v1/verify" and a["status"] == 401 for a in access)  # refusals are logged too
    assert "Traceback" not in output


def test_search_endpoint_with_an_index(calibrated):
    from twinnet.index import VectorIndex

    import pandas as pd

    records = ["sony tv xr100", "lg speaker kd250", "bose camera mz380", "canon tv set pq420"]
    index = VectorIndex.build(calibrated, records, ids=["s", "l", "b", "c"])
    index.set_metadata(pd.DataFrame({"id": ["s"], "name": ["sony tv xr100"]}))
    app = create_app(calibrated, api_keys={KEY}, settings=ServeSettings(max_items=8, max_chars=200), index=index)
    with TestClient(app) as c:
        answer = c.post("/v1/search", json={"queries": ["sony tv xr100", {"name": "lg speaker kd250"}], "k": 10},
                        headers=HEADERS)
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        assert [r[0]["id"] for r in results] == ["s", "l"] and len(results[0]) == 4  # k > size: 4 real hits
        assert results[0][0]["score"] == pytest.approx(1.0, abs=1e-5) and results[0][0]["metadata"]["name"]
        expected = calibrated.predict_proba_scores(np.array([results[0][1]["score"]]))[0]
        assert results[0][1]["probability"] == pytest.approx(expected, abs=1e-9)
        by_id = c.post("/v1/search", json={"ids": ["b"], "k": 1}, headers=HEADERS).json()
        assert by_id["results"][0][0]["id"] == "b"
        unknown = c.post("/v1/search", json={"ids": ["b", "zz"]}, headers=HEADERS)
        assert unknown.status_code == 404 and unknown.json()["error"]["item"] == 1
        assert c.post("/v1/search", json={"queries": ["x"], "ids": ["b"]}, headers=HEADERS).status_code == 422
        assert c.post("/v1/search", json={"queries": ["ok", ""]}, headers=HEADERS).json()["error"]["item"] == 1
    no_index = create_app(calibrated, api_keys={KEY})
    with TestClient(no_index) as c:
        assert c.post("/v1/search", json={"queries": ["x"]}, headers=HEADERS).status_code == 404


def test_an_app_whose_startup_did_not_run_answers_503_not_a_crash(calibrated):
    c = TestClient(create_app(calibrated))  # used outside `with`: the lifespan never starts the batcher
    answer = c.post("/v1/embed", json={"inputs": ["x"]})
    assert answer.status_code == 503 and "has not started" in answer.json()["error"]["message"]


def test_image_models_are_refused_because_requests_would_name_server_files():
    from twinnet import SiameseModel

    with pytest.raises(TwinnetError, match="the service answers text models; this model encodes images"):
        create_app(SiameseModel.for_image("koch", image_size=16, widths=[4, 4], embedding_dim=4))
