"""Who may talk to the server, on a real server on loopback: credentials, the Host header, what a web
page of another origin can send, CORS, jobs and the default model kept apart per client, and the
command refusing to expose itself without credentials."""

from __future__ import annotations

import dataclasses
import threading

import httpx
import pytest
from conftest import make_tiny_pipeline
from server_helpers import serve, wait_until

from noisecraft.pipeline import Pipeline
from noisecraft.server.app import create_app
from noisecraft.server.guard import Access, host_name, is_loopback, parse_api_auth
from noisecraft.server.limits import Limits
from noisecraft.server.models import ModelRegistry

LONG = 2000  # steps: ≈ 10 s for the tiny model
ACCESS = Access(
    users={"ann": "pw-a", "bob": "pw:b"}, token="t0ken", allowed_hosts=("gen.example",),
    cors_origins=("https://app.example",),
)  # fmt: skip
ANN, BOB = ("ann", "pw-a"), ("bob", "pw:b")


@pytest.fixture(scope="module")
def url():
    pipe = make_tiny_pipeline()
    other = Pipeline(pipe.net, pipe.text_encoder, dataclasses.replace(pipe.config, name="tiny-b"))
    app = create_app(ModelRegistry({"tiny": pipe, "tiny-b": other}), Limits(max_steps=LONG), ACCESS)
    with serve(app) as base:
        yield base


def _idle(url: str) -> bool:
    status = httpx.get(f"{url}/v1/status", auth=ANN).json()
    return status["queued"] == 0 and not status["running"]


def test_credentials_are_required_on_every_path(url):
    for path in ("/", "/v1/status", "/sdapi/v1/progress", "/openapi.json"):
        response = httpx.get(url + path)
        assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Basic"), path
    assert httpx.post(f"{url}/sdapi/v1/interrupt").status_code == 401
    assert httpx.get(f"{url}/v1/status", auth=("ann", "wrong")).status_code == 401
    assert httpx.get(f"{url}/v1/status", auth=("eve", "pw-a")).status_code == 401
    assert httpx.get(f"{url}/v1/status", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(f"{url}/v1/status", headers={"Authorization": "Basic %%%"}).status_code == 401
    assert httpx.get(f"{url}/v1/status", auth=ANN).status_code == 200
    assert httpx.get(f"{url}/v1/status", auth=BOB).status_code == 200  # a password with a colon
    assert httpx.get(f"{url}/v1/status", headers={"Authorization": "Bearer t0ken"}).status_code == 200


def test_only_this_servers_names_are_answered(url):
    port = url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.2", "gen.example.evil"):
        response = httpx.get(f"{url}/v1/status", auth=ANN, headers={"Host": host})
        assert response.status_code == 400 and "Host" in response.json()["detail"], host
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "gen.example"):
        assert httpx.get(f"{url}/v1/status", auth=ANN, headers={"Host": host}).status_code == 200, host


def test_state_changes_take_json_only_and_no_foreign_pages(url):
    post = lambda path, **kw: httpx.post(url + path, auth=ANN, **kw)  # noqa: E731
    for path in ("/sdapi/v1/interrupt", "/sdapi/v1/txt2img", "/v1/generate", "/sdapi/v1/options"):
        text = post(path, content=b"{}", headers={"Content-Type": "text/plain"})
        assert text.status_code == 415, (path, text.text)
        form = post(path, data={"prompt": "x"})  # application/x-www-form-urlencoded
        assert form.status_code == 415, path
        no_type = post(path, content=b'{"prompt": "x"}', headers={"Content-Type": ""})
        assert no_type.status_code == 415, path
    foreign = post("/sdapi/v1/interrupt", headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403 and "evil.example" in foreign.json()["detail"]
    assert post("/sdapi/v1/interrupt", headers={"Origin": "null"}).status_code == 403
    assert post("/sdapi/v1/interrupt").status_code == 200  # no body, no origin: a script
    same = post("/sdapi/v1/interrupt", headers={"Origin": url})  # this server's own page
    assert same.status_code == 200
    allowed = post("/sdapi/v1/interrupt", headers={"Origin": "https://app.example"})
    assert (
        allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == "https://app.example"
    )


def test_cors_preflight_only_for_allowed_origins(url):
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    good = httpx.options(f"{url}/v1/generate", headers={"Origin": "https://app.example", **ask})
    assert good.status_code == 200 and good.headers["access-control-allow-origin"] == "https://app.example"
    bad = httpx.options(f"{url}/v1/generate", headers={"Origin": "https://evil.example", **ask})
    assert "access-control-allow-origin" not in bad.headers


def test_progress_and_interrupt_follow_the_user_who_sent_the_job(url):
    wait_until(lambda: _idle(url), 15, "an idle server")
    result: dict = {}
    body = {"prompt": "x", "steps": LONG, "sampler_name": "Euler"}
    thread = threading.Thread(
        target=lambda: result.update(r=httpx.post(f"{url}/sdapi/v1/txt2img", json=body, auth=ANN, timeout=30))
    )
    thread.start()
    progress = lambda auth: httpx.get(f"{url}/sdapi/v1/progress", auth=auth).json()  # noqa: E731
    wait_until(lambda: progress(BOB)["state"]["sampling_step"] > 3, 10, "sampling")
    seen_by_bob = progress(BOB)
    assert seen_by_bob["current_image"] is None and seen_by_bob["current_task"] is None
    assert httpx.post(f"{url}/sdapi/v1/interrupt", auth=BOB).status_code == 200
    seen_by_ann = progress(ANN)  # Bob's interrupt did nothing; Ann sees her own job
    assert not seen_by_ann["state"]["interrupted"] and seen_by_ann["current_image"] is not None
    token = {"Authorization": "Bearer t0ken"}  # another caller again
    assert httpx.get(f"{url}/sdapi/v1/progress", headers=token).json()["current_image"] is None
    assert httpx.post(f"{url}/sdapi/v1/interrupt", auth=ANN).status_code == 200
    thread.join(10)
    assert not thread.is_alive() and result["r"].status_code == 200
    assert '"Interrupted": true' in result["r"].json()["info"]


def test_the_default_model_is_each_callers_own(url):
    title = lambda auth: httpx.get(f"{url}/sdapi/v1/options", auth=auth).json()["sd_model_checkpoint"]  # noqa: E731
    assert title(ANN).startswith("tiny [") and title(BOB).startswith("tiny [")
    assert (
        httpx.post(f"{url}/sdapi/v1/options", auth=ANN, json={"sd_model_checkpoint": "tiny-b"}).status_code
        == 200
    )
    assert title(ANN).startswith("tiny-b [") and title(BOB).startswith("tiny [")
    made = lambda auth: httpx.post(  # noqa: E731
        f"{url}/sdapi/v1/txt2img", auth=auth, json={"steps": 1, "width": 8, "height": 8}
    ).json()["info"]
    assert '"sd_model_name": "tiny-b"' in made(ANN) and '"sd_model_name": "tiny"' in made(BOB)
    native = httpx.get(f"{url}/v1/models", auth=ANN).json()  # the native API's default is the server's
    assert [m["name"] for m in native if m["default"]] == ["tiny"]


def test_guard_pieces():
    assert parse_api_auth("a:1, b:x:y") == {"a": "1", "b": "x:y"}
    for bad in ("a", "a:", ":p", "a:1,,b:2"):
        with pytest.raises(ValueError, match="--api-auth"):
            parse_api_auth(bad)
    assert [is_loopback(h) for h in ("127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost")] == [True] * 5
    assert [is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.2", "example.com", "")] == [False] * 5
    assert [host_name(h) for h in ("A.b:80", "[::1]:7860", "::1", "x")] == ["a.b", "::1", "::1", "x"]


def test_serve_refuses_to_expose_itself_without_credentials(tmp_path, capsys):
    from noisecraft.cli import main

    missing = str(tmp_path / "no-model")  # the refusal comes before any model is loaded
    for host in ("0.0.0.0", "::", "192.0.2.1", "example.com"):
        assert main(["serve", "--host", host, "--model", missing]) == 2
        err = capsys.readouterr().err
        assert "--api-auth" in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert main(["serve", "--host", "0.0.0.0", "--api-token", "t", "--model", missing]) == 2
    assert "unknown model" in capsys.readouterr().err  # got past the check
    assert main(["serve", "--api-auth", "nopassword", "--model", missing]) == 2
    assert "--api-auth" in capsys.readouterr().err
