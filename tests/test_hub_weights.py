"""Hub weights, offline by default: `imgclf weights fetch timm:NAME` against a local fake Hugging Face Hub (an
http.server thread answering the HEAD and GET /{repo}/resolve/{revision}/{file} that huggingface_hub sends),
then runs with the network blocked that read only imgclf's cache. Nothing here downloads real weights."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from helpers import run_cli

ARCH = "test_efficientnet"  # timm's own 0.1M-parameter test network; its config names timm/test_efficientnet.r160_in1k
NAME = f"{ARCH}.r160_in1k"
REPO = f"timm/{NAME}"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FETCH = f"imgclf weights fetch timm:{ARCH}"


class FakeHub:
    """Serves `files` ({"repo/filename": bytes}) at revision main and COMMIT, with the headers huggingface_hub
    reads (X-Repo-Commit, ETag = the sha256 as the hub gives LFS files, Content-Length) and its X-Error-Code
    404s; `etags` overrides a file's ETag (a hub that disagrees with the bytes). Logs (method, path)."""

    def __init__(self, files: dict[str, bytes], etags: dict[str, str] | None = None) -> None:
        self.files, self.etags, self.requests = files, etags or {}, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
                hub.answer(self, body=False)

            def do_GET(self) -> None:  # noqa: N802
                hub.answer(self, body=True)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, handler: BaseHTTPRequestHandler, body: bool) -> None:
        self.requests.append((handler.command, handler.path))
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", handler.path)
        repo, revision, filename = match.groups() if match else ("", "", "")
        key = f"{repo}/{filename}"
        if not any(k.startswith(repo + "/") for k in self.files):
            return self.refuse(handler, "RepoNotFound")
        if revision not in ("main", COMMIT):
            return self.refuse(handler, "RevisionNotFound")
        if key not in self.files:
            return self.refuse(handler, "EntryNotFound")
        data = self.files[key]
        handler.send_response(200)
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("ETag", f'"{self.etags.get(key, hashlib.sha256(data).hexdigest())}"')
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if body:
            handler.wfile.write(data)

    @staticmethod
    def refuse(handler: BaseHTTPRequestHandler, code: str) -> None:
        handler.send_response(404)
        handler.send_header("X-Error-Code", code)
        handler.send_header("X-Repo-Commit", COMMIT)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def state_of(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A timm network's full state (its 1000-class classifier included, as on the hub) with non-default
    values everywhere, BatchNorm statistics too, so a load that kept the random init would show."""
    import timm

    torch.manual_seed(seed)
    net = timm.create_model(arch, pretrained=False)
    def changed(key: str, value: torch.Tensor) -> torch.Tensor:
        if not value.is_floating_point():
            return value
        return torch.rand_like(value) + 0.5 if key.endswith("running_var") else value + 0.05 * torch.randn_like(value)

    return {k: changed(k, v).contiguous() for k, v in net.state_dict().items()}


def safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(state)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of this test's own (the session's shared one must not see these weights)."""
    monkeypatch.setenv("IMGCLF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return tmp_path / "cache"


@pytest.fixture
def hub_state() -> dict[str, torch.Tensor]:
    return state_of(ARCH)


@pytest.fixture
def hub(hub_state: dict[str, torch.Tensor]) -> Iterator[FakeHub]:
    fake = FakeHub({f"{REPO}/model.safetensors": safetensors_bytes(hub_state)})
    yield fake
    fake.close()


def block_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every socket connect in this process raises (and is logged): what 'offline' means in these tests."""
    tries: list[Any] = []

    def refuse(sock: socket.socket, address: Any) -> None:
        tries.append(address)
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return tries


def test_fetch_then_a_run_with_the_network_blocked_uses_the_cache(
        cache: Path, hub: FakeHub, hub_state: dict[str, torch.Tensor], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    served = hub.files[f"{REPO}/model.safetensors"]
    code, out, err = run_cli(["weights", "fetch", f"timm:{ARCH}", "--hub-url", hub.url], capsys)
    assert code == 0, err
    record = json.loads(out)
    entry = cache / "weights" / "timm" / NAME
    assert Path(record["path"]) == entry / "model.safetensors"
    assert (entry / "model.safetensors").read_bytes() == served
    assert json.loads((entry / "provenance.json").read_text()) == {k: v for k, v in record.items() if k != "path"}
    assert record["sha256"] == hashlib.sha256(served).hexdigest() and record["size"] == len(served)
    assert record["repo_id"] == REPO and record["revision"] == "main" and record["commit"] == COMMIT
    assert record["url"] == f"{hub.url}/{REPO}/resolve/{COMMIT}/model.safetensors" and record["fetched_at"]
    assert hub.requests[0] == ("HEAD", f"/{REPO}/resolve/main/model.safetensors")  # then pinned to the commit
    assert ("GET", f"/{REPO}/resolve/{COMMIT}/model.safetensors") in hub.requests
    assert not [e for e in entry.parent.iterdir() if e.name.startswith(".")], "a staging folder was left behind"

    hub.close()
    tries = block_network(monkeypatch)
    code, out, err = run_cli(["weights", "fetch", f"timm:{ARCH}"], capsys)  # cached: answered without a network
    assert code == 0 and "already cached" in err and json.loads(out)["sha256"] == record["sha256"], err
    code, out, _ = run_cli(["weights", "list"], capsys)
    assert code == 0 and f"timm:{NAME}" in out and record["sha256"][:16] in out and COMMIT[:12] in out
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0 and f"--model timm:{NAME} --pretrained" in out

    from imgclf.models import build_model

    backbone = build_model(f"timm:{ARCH}", 10, pretrained=True).features.state_dict()
    for key, value in backbone.items():  # every backbone tensor is the fetched one (the classifier is dropped)
        assert torch.equal(value, hub_state[key]) or key.endswith("num_batches_tracked"), key

    out_dir = tmp_path / "run"
    code, out, err = run_cli(["train", "--data", "digits", "--model", f"timm:{ARCH}", "--pretrained", "--strategy",
                              "linear_probe", "--epochs", "1", "--subset", "200", "--image-size", "32", "--batch-size",
                              "32", "--device", "cpu", "--out", str(out_dir), "--quiet"], capsys)
    assert code == 0, err
    assert tries == [], f"the run tried the network: {tries}"
    plan = yaml.safe_load((out_dir / "config.yaml").read_text())
    noted = plan["extra"]["pretrained_weights"]
    assert noted["sha256"] == record["sha256"] and noted["commit"] == COMMIT and noted["url"] == record["url"]
    trained = torch.load(out_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    for key, value in trained["model"].items():  # a linear probe leaves the fetched backbone as it came
        if key.startswith("features.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(value, hub_state[key.removeprefix("features.")]), key


def test_not_cached_and_offline_is_one_line_naming_the_fetch(
        cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    tries = block_network(monkeypatch)
    code, _, err = run_cli(["train", "--data", "digits", "--model", f"timm:{ARCH}", "--pretrained", "--epochs", "1",
                            "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert f"no cached weights for timm:{ARCH}; run `{FETCH}` where there is a network, or pass --weights FILE" in err
    assert tries == [] and not (tmp_path / "run" / "checkpoints").exists()

    code, _, err = run_cli(["weights", "fetch", f"timm:{ARCH}", "--hub-url", "http://127.0.0.1:9"], capsys)
    assert code == 2 and err.count("\n") == 1 and "where there is a network" in err and tries, err
    assert not (cache / "weights" / "timm" / NAME).exists()


def test_pickle_file_when_the_hub_has_no_safetensors(
        cache: Path, hub_state: dict[str, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save(hub_state, tmp_path / "pytorch_model.bin")
    fake = FakeHub({f"{REPO}/pytorch_model.bin": (tmp_path / "pytorch_model.bin").read_bytes()})
    try:
        code, out, err = run_cli(["weights", "fetch", f"timm:{ARCH}", "--hub-url", fake.url], capsys)
    finally:
        fake.close()
    assert code == 0, err
    assert json.loads(out)["filename"] == "pytorch_model.bin"
    assert [p for m, p in fake.requests if m == "HEAD"][0].endswith("/model.safetensors")  # tried first, as timm


def test_a_file_that_does_not_check_out_is_refused_and_nothing_cached(
        cache: Path, hub_state: dict[str, torch.Tensor], capsys: pytest.CaptureFixture[str]) -> None:
    wrong = FakeHub({f"{REPO}/model.safetensors": safetensors_bytes(state_of("test_resnet"))})
    lying = FakeHub({f"{REPO}/model.safetensors": safetensors_bytes(hub_state)},
                    etags={f"{REPO}/model.safetensors": "0" * 64})
    empty = FakeHub({"timm/other/model.safetensors": b"x"})
    try:
        for fake, message in ((wrong, f"model.safetensors) does not match timm's {ARCH} backbone"), (lying, "sha256"),
                              (empty, f"has no repository {REPO}")):
            code, _, err = run_cli(["weights", "fetch", f"timm:{ARCH}", "--hub-url", fake.url], capsys)
            assert code == 2 and err.count("\n") == 1 and message in err, err
    finally:
        for fake in (wrong, lying, empty):
            fake.close()
    assert not (cache / "weights" / "timm" / NAME).exists()
    assert [e.name for e in (cache / "weights" / "timm").iterdir()] == []  # no staging folder left either


def test_a_cached_file_changed_after_the_fetch_is_refused(
        cache: Path, hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["weights", "fetch", f"timm:{ARCH}", "--hub-url", hub.url], capsys)[0] == 0
    path = cache / "weights" / "timm" / NAME / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    from imgclf.errors import UserError
    from imgclf.models import build_model

    with pytest.raises(UserError, match="changed since they were fetched.*--force"):
        build_model(f"timm:{ARCH}", 3, pretrained=True)
    code, out, err = run_cli(["weights", "fetch", f"timm:{ARCH}", "--hub-url", hub.url, "--force"], capsys)
    assert code == 0 and "fetched and checked" in err, err
    assert build_model(f"timm:{ARCH}", 3, pretrained=True) is not None


def test_weights_command_refusals_are_one_line(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in ((["weights", "fetch"], "needs a model"),
                          (["weights", "fetch", "resnet18"], "takes timm:NAME"),
                          (["weights", "fetch", "timm:resnet81"], "unknown timm model"),
                          (["weights", "fetch", "timm:lcnet_035"], "no Hugging Face Hub weights"),
                          (["weights", "list", "timm:resnet18"], "weights list takes no model"),
                          (["weights", "fetch", "timm:resnet18", "--hub-url", "ftp://x"], "http(s) URL"),
                          (["weights", "pull"], "invalid choice")):
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, (argv, err)
