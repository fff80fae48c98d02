"""The openai backend against a loopback server that injects 429, 500, timeouts and garbage: every
record ends done or recorded as failed, none lost or duplicated, and the API key never leaks."""

import pytest

from vialign.generation.base import ChatRequest, GenerationParams, open_backend
from vialign.generation.openai_backend import OpenAIBackend
from vialign.generation.runner import Row, RunnerSettings, run_resumable
from vialign.records import read_jsonl

from .fault_server import FaultServer

SECRET = "sk-test-do-not-log-1234567890"


@pytest.fixture
def server():
    s = FaultServer()
    yield s
    s.close()


def prompt_rows(client):
    """A stage function: records with a prompt in, one row each (text or error) out."""

    def process(batch):
        requests = [ChatRequest(x["id"], [{"role": "user", "content": x["prompt"]}]) for x in batch]
        return [
            Row(r.id, r.texts[0] if r.texts else None, r.error)
            for r in client.generate(requests, GenerationParams())
        ]

    return process


def backend(server, **kw):
    return OpenAIBackend(server.url, "m", api_key_env="VIALIGN_TEST_KEY", timeout_s=0.5, max_retries=3, **kw)


def test_faults_end_done_or_failed_and_nothing_is_lost(server, tmp_path, monkeypatch):
    monkeypatch.setenv("VIALIGN_TEST_KEY", SECRET)
    prompts = [f"plain {i}" for i in range(8)] + [
        "FAULT:429x2 a",
        "FAULT:500x1 b",
        "FAULT:timeoutx1 c",
        "FAULT:garbagex1 d",
        "FAULT:500 e",
        "FAULT:garbagex9 f",
        "FAULT:empty g",
    ]
    items = [{"id": f"r{i}", "prompt": p} for i, p in enumerate(prompts)]
    client = backend(server)

    process = prompt_rows(client)

    out = tmp_path / "out.jsonl"
    report = run_resumable(
        items,
        lambda x: x["id"],
        process,
        out,
        RunnerSettings(batch_size=5),
        show_progress=False,
        finish=lambda item, row: {"id": item["id"], "text": row["value"], "error": row["error"]},
    )
    rows = list(read_jsonl(out))
    assert [r["id"] for r in rows] == [x["id"] for x in items]
    by_prompt = {x["prompt"]: r for x, r in zip(items, rows, strict=True)}
    for prompt in [*prompts[:8], "FAULT:429x2 a", "FAULT:500x1 b", "FAULT:timeoutx1 c", "FAULT:garbagex1 d"]:
        assert by_prompt[prompt]["text"] == f"echo: {prompt}", by_prompt[prompt]
    for prompt in ["FAULT:500 e", "FAULT:garbagex9 f", "FAULT:empty g"]:
        assert by_prompt[prompt]["text"] is None and by_prompt[prompt]["error"]
    assert set(report.failed) == {"r12", "r13", "r14"}
    assert server.attempts["FAULT:429x2 a"] == 3 and server.attempts["FAULT:500 e"] == 4
    assert server.seen_auth == {f"Bearer {SECRET}"}
    text = (
        out.read_text()
        + (tmp_path / "out.jsonl.partial.jsonl").read_text()
        + repr(client)
        + str(client.identity())
    )
    assert SECRET not in text


def test_failed_records_are_retried_on_the_next_run(server, tmp_path):
    client = backend(server)
    items = [{"id": "a", "prompt": "FAULT:500x4 x"}, {"id": "b", "prompt": "fine"}]

    process = prompt_rows(client)

    out = tmp_path / "o.jsonl"
    first = run_resumable(items, lambda x: x["id"], process, out, RunnerSettings(), show_progress=False)
    assert set(first.failed) == {"a"}
    second = run_resumable(items, lambda x: x["id"], process, out, RunnerSettings(), show_progress=False)
    assert not second.failed and second.reused == 1 and second.processed == 1
    assert list(read_jsonl(out)) == ["echo: FAULT:500x4 x", "echo: fine"]


def test_images_travel_as_data_urls_and_n_samples(server, tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "a.png")
    client = open_backend(server.url, model="m", api_key_env="VIALIGN_TEST_KEY")
    (result,) = client.generate(
        [ChatRequest("i", [{"role": "user", "content": "<image>\nWhat?"}], [tmp_path / "a.png"])],
        GenerationParams(n=3, temperature=0.7),
    )
    assert result.texts == ["echo: [image] What?"] * 3
