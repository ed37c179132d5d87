"""``ccexpert serve --ray ADDRESS --replicas 2`` on a real Ray cluster (a head node started by the module, 4 logical
CPUs: two replicas, the UI's replica and room to spare): one URL answers 8 concurrent clients with the in-process
Captioner's results, tokens are enforced, /v1/info reports the replicas, the Gradio UI works through Serve's proxy,
and an address nobody listens on is one line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

import ccexpert_cli as cli
from ccexpert_core import protocol
from ccexpert_core.defaults import default_model

from backend_server import TOKEN, bearer, encode, multipart, random_image, serve_command
from ray_cluster import Cluster, start_cluster
from serve_process import ServeProcess, start_serve

AUTH = bearer(TOKEN)
CLIENTS = 8
READY = "CCExpert backend on Ray"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    head = start_cluster(num_cpus=4)
    yield head
    head.stop()


@pytest.fixture(scope="module")
def server(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """The backend on the cluster, once every replica runs (its /v1/health answers as soon as one does)."""
    folder = tmp_path_factory.mktemp("serve-ray")
    tokens = folder / "tokens.txt"
    tokens.write_text(f"{TOKEN}\n", encoding="utf-8")
    args = ["--ray", cluster.address, "--replicas", "2", "--token-file", str(tokens), "--max-wait-ms", "200"]
    server = start_serve(Path(serve_command()[0]), args, folder / "serve.log", timeout_s=300)
    try:
        deadline = time.monotonic() + 300
        while READY not in server.log.read_text() and time.monotonic() < deadline and server.alive():
            time.sleep(0.5)
        assert READY in server.log.read_text(), server.log.read_text()[-3000:]
        yield server
    finally:
        server.stop()
    log = server.log.read_text()
    assert server.process.returncode == 0 and "taking the deployments down" in log, log[-3000:]


def info(server: ServeProcess) -> protocol.InfoBody:
    response = requests.get(server.url + protocol.INFO_PATH, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_two_replicas_answer_concurrent_clients_with_the_in_process_results(server: ServeProcess) -> None:
    from ccexpert_core.inference import Captioner

    pairs = [(random_image(2 * i), random_image(2 * i + 1)) for i in range(CLIENTS)]
    expected = Captioner.load(default_model(), device="cpu").caption(pairs, batch_size=CLIENTS)
    answers: dict[int, requests.Response] = {}

    def client(index: int) -> None:
        before, after = pairs[index]
        answers[index] = requests.post(server.url + protocol.CAPTIONS_PATH, headers=AUTH, timeout=300,
                                       **multipart([(encode(before), encode(after))], [f"t{index}"]))

    threads = [threading.Thread(target=client, args=(index,)) for index in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert sorted(answers) == list(range(CLIENTS))
    for index, response in answers.items():
        assert response.status_code == 200, response.text
        [item] = response.json()["results"]
        result = expected[index]
        assert (item["tile_id"], item["caption"], item["change_detected"]) == (
            f"t{index}", result.caption, result.change_detected)
        # Each replica batches what it holds: batches of other sizes change float rounding a little.
        assert item["confidence"] == pytest.approx(result.confidence, rel=1e-4)
    assert info(server)["internal_errors"] == 0


def test_tokens_are_enforced_through_the_proxy(server: ServeProcess) -> None:
    assert requests.get(server.url + protocol.HEALTH_PATH, timeout=30).status_code == 200
    assert requests.get(server.url + protocol.INFO_PATH, timeout=30).status_code == 401
    wrong = requests.get(server.url + protocol.INFO_PATH, headers=bearer("not-the-token"), timeout=30)
    assert wrong.status_code == 401 and wrong.json()["error"] == protocol.ERROR_UNAUTHORIZED
    pair = [(encode(random_image(1)), encode(random_image(2)))]
    refused = requests.post(server.url + protocol.CAPTIONS_PATH, timeout=30, **multipart(pair))
    assert refused.status_code == 401


def test_info_reports_the_replicas_and_the_model_as_a_plain_backend_does(server: ServeProcess) -> None:
    from ccexpert_core.model_card import describe_model

    body = info(server)
    card = describe_model(default_model())
    assert body["replicas"] == 2
    assert (body["model_id"], body["model_name"], body["api_version"]) == (card.model_id, card.name,
                                                                           protocol.API_VERSION)


def test_the_gradio_ui_works_through_serve(server: ServeProcess, tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    before, after = tmp_path / "before.png", tmp_path / "after.png"
    before.write_bytes(encode(random_image(200)))
    after.write_bytes(encode(random_image(201)))
    client = Client(server.url + protocol.UI_PATH + "/", headers=AUTH, verbose=False, analytics_enabled=False)
    caption, changed, confidence = client.predict(
        handle_file(str(before)), handle_file(str(after)), api_name=protocol.UI_API_NAME
    )
    response = requests.post(server.url + protocol.CAPTIONS_PATH, headers=AUTH, timeout=300,
                             **multipart([(before.read_bytes(), after.read_bytes())]))
    [item] = response.json()["results"]
    assert (caption, changed) == (item["caption"], item["change_detected"])
    assert confidence == pytest.approx(item["confidence"], rel=1e-4)


def test_serve_on_an_address_nobody_listens_on_is_one_line(capsys) -> None:
    assert cli.main(["serve", "--ray", "127.0.0.1:9", "--no-ui"]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error" in line]
    assert "no Ray cluster answers at 127.0.0.1:9" in line and "Traceback" not in err
    assert cli.main(["serve", "--replicas", "2"]) == 2
    assert "--replicas goes with --ray" in capsys.readouterr().err
