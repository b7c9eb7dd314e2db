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


def test_served_spec_names_a_usable_server(gateway: Gateway) -> None:
    served = gateway.client.get(f"{gateway.url}/openapi.json")
    assert served.status_code == 200
    assert [server["url"] for server in served.json()["servers"]] == ["/"]
    # The entry resolves against the document's own address to the gateway's routes.
    health = gateway.client.get(f"{gateway.url}{served.json()['servers'][0]['url']}health")
    assert health.status_code == 200, health.text
    ui = gateway.client.get(f"{gateway.url}/docs/")
    assert ui.status_code == 200 and "/openapi.json" in ui.text
