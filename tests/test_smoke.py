from __future__ import annotations

from tests.conftest import Gateway

CHAT = "/v1/async/chat/completions"


def test_chat_job_completes(gateway: Gateway) -> None:
    response = gateway.submit(
        CHAT, {"model": "fake/ok", "messages": [{"role": "user", "content": "hello"}]}
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"{CHAT}/{job['id']}"
    done = gateway.wait_terminal(CHAT, job["id"])
    assert done["status"] == "completed", done
    assert "hello" in done["result"]["choices"][0]["message"]["content"]
