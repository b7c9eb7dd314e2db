"""GET /v1/async/jobs through real HTTP on PostgreSQL: order, pages, filters, who sees what."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from asyncgate.handlers.listing import LIST_PATH
from asyncgate.kinds import KINDS, Kind
from asyncgate.models.jobs import LIST_FILTERS, LIST_JOBS
from tests.conftest import Gateway
from tests.helpers import (
    CHAT,
    EMBEDDINGS,
    assert_error,
    chat,
    create_key,
    insert_job,
    parse_time,
    submit_ok,
)

Sql = Callable[..., list[tuple[Any, ...]]]
ITEM_KEYS = {"id", "request_type", "status", "created_at", "completed_at", "expires_at"}
ITEM_KEYS |= {"status_code", "url"}


def listing(gateway: Gateway, key: str | None, **params: Any) -> Any:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return gateway.client.get(gateway.url + LIST_PATH, params=params, headers=headers)


def page(gateway: Gateway, key: str, **params: Any) -> dict[str, Any]:
    response = listing(gateway, key, **params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["object"] == "list"
    assert ("next_after" in body) is body["has_more"]
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [item["id"] for item in body["data"]]


def owned_job(database_url: str, sql: Sql, owner: str, **kwargs: Any) -> str:
    job_id = insert_job(database_url, **kwargs)
    sql(
        "UPDATE async_jobs SET owner_key_id = (SELECT id FROM virtual_keys WHERE name = %s) "
        "WHERE id = %s",
        owner,
        job_id,
    )
    return job_id


def test_newest_first_without_bodies(gateway: Gateway, database_url: str, sql: Sql) -> None:
    alice = create_key(database_url, "alice")
    auth = {"x-bf-vk": alice}
    submitted = [submit_ok(gateway, CHAT, json=chat(text=str(i)), headers=auth) for i in range(3)]
    submitted.append(
        submit_ok(gateway, EMBEDDINGS, json={"model": "fake/ok", "input": "x"}, headers=auth)
    )
    done = gateway.wait_terminal(CHAT, submitted[0], headers=auth)
    body = page(gateway, alice)
    assert body["has_more"] is False
    assert sorted(ids(body)) == sorted(submitted)
    order = [(parse_time(i["created_at"]), i["id"]) for i in body["data"]]
    assert order == sorted(order, reverse=True)
    for item in body["data"]:
        assert set(item) <= ITEM_KEYS, item  # no request, result or error
        assert item["url"] == f"{KINDS[Kind(item['request_type'])].path}/{item['id']}"
    finished = next(i for i in body["data"] if i["id"] == submitted[0])
    assert finished["status"] == "completed" and finished["status_code"] == 200
    assert finished["completed_at"] == done["completed_at"]
    assert finished["expires_at"] == done["expires_at"]
    assert {i["request_type"] for i in body["data"]} == {"chat_completion", "embedding"}


def test_pages_have_no_duplicates_or_gaps_while_jobs_arrive(
    gateway: Gateway, database_url: str, sql: Sql
) -> None:
    alice = create_key(database_url, "alice")
    existing = {
        owned_job(database_url, sql, "alice", created_seconds_ago=float(i // 3))
        for i in range(25)  # three jobs share each created_at, as in a group-committed batch
    }
    seen: list[str] = []
    after: str | None = None
    arrived = 0
    while True:
        body = page(gateway, alice, limit=7, **({"after": after} if after else {}))
        seen += ids(body)
        # New jobs arrive between pages; they are newer than every page already read.
        submit_ok(gateway, CHAT, json=chat(), headers={"x-bf-vk": alice})
        arrived += 1
        if not body["has_more"]:
            break
        assert len(body["data"]) == 7
        after = body["next_after"]
    assert len(seen) == len(set(seen)) == 25
    assert set(seen) == existing
    assert arrived == 4
    assert len(ids(page(gateway, alice, limit=100))) == 25 + arrived


def test_filters_by_kind_and_status(gateway: Gateway, database_url: str, sql: Sql) -> None:
    create_key(database_url, "alice")
    key = create_key(database_url, "bob")
    chat_pending = owned_job(database_url, sql, "bob")
    embedding = owned_job(database_url, sql, "bob", kind=Kind.EMBEDDING)
    chat_running = owned_job(
        database_url,
        sql,
        "bob",
        status="processing",
        attempts=1,
        lease_owner="elsewhere",
        lease_expires_in=600,
    )
    assert set(ids(page(gateway, key, kind="chat_completion"))) == {chat_pending, chat_running}
    assert ids(page(gateway, key, kind="embedding")) == [embedding]
    assert ids(page(gateway, key, status="processing")) == [chat_running]
    assert ids(page(gateway, key, kind="embedding", status="processing")) == []
    assert ids(page(gateway, key, kind="ocr")) == []
    assert_error(listing(gateway, key, kind="video"), 400)
    assert_error(listing(gateway, key, status="running"), 400)


def test_limit_is_bounded_by_the_spec(gateway: Gateway, database_url: str, sql: Sql) -> None:
    key = create_key(database_url, "alice")
    for _ in range(25):
        owned_job(database_url, sql, "alice")
    default = page(gateway, key)
    assert len(default["data"]) == 20 and default["has_more"] is True
    assert len(page(gateway, key, limit=100)["data"]) == 25
    assert len(page(gateway, key, limit=1)["data"]) == 1
    for bad in (0, 101, -1, "many"):
        assert_error(listing(gateway, key, limit=bad), 400)
    assert_error(listing(gateway, key, after="not-a-cursor"), 400)
    assert_error(listing(gateway, key, after="x" * 201), 400)


def test_a_key_sees_only_its_own_jobs_and_an_admin_sees_all(
    gateway: Gateway, database_url: str, sql: Sql
) -> None:
    alice, bob = create_key(database_url, "alice"), create_key(database_url, "bob")
    admin = create_key(database_url, "root", admin=True)
    mine = submit_ok(gateway, CHAT, json=chat(), headers={"x-bf-vk": alice})
    theirs = submit_ok(gateway, CHAT, json=chat(), headers={"x-bf-vk": bob})
    public = submit_ok(gateway, CHAT, json=chat())
    assert ids(page(gateway, alice)) == [mine]
    assert ids(page(gateway, bob)) == [theirs]
    assert set(ids(page(gateway, admin))) == {mine, theirs, public}
    # The admin flag widens the list only: polls still follow the job's owner.
    assert gateway.poll(CHAT, mine, headers={"x-bf-vk": admin}).status_code == 404


def test_anonymous_and_unknown_keys_cannot_list(
    gateway_factory: Callable[..., Gateway], database_url: str
) -> None:
    gateway = gateway_factory()
    submit_ok(gateway, CHAT, json=chat())
    body = assert_error(listing(gateway, None), 401)
    assert "public by its id only" in body["error"]["message"]
    assert_error(listing(gateway, "sk-bf-" + "x" * 43), 401)
    required = gateway_factory(auth={"required": True})
    assert_error(listing(required, None), 401)


def test_expired_jobs_are_not_listed(gateway: Gateway, database_url: str, sql: Sql) -> None:
    key = create_key(database_url, "alice")
    live = owned_job(database_url, sql, "alice")
    gone = owned_job(database_url, sql, "alice")
    sql(
        "UPDATE async_jobs SET status = 'failed', error = '{}', completed_at = now(), "
        "expires_at = now() - interval '1 second' WHERE id = %s",
        gone,
    )
    assert ids(page(gateway, key)) == [live]


def test_the_indexes_serve_the_list(database_url: str, sql: Sql) -> None:
    sql("INSERT INTO virtual_keys (name, key_hash) VALUES ('k', sha256('k')) RETURNING id")
    sql(
        "INSERT INTO async_jobs (id, kind, provider, model, request, ttl_seconds, owner_key_id, "
        "created_at) SELECT gen_random_uuid(), 'embedding', 'p', 'p/m', '{}', 60, "
        "CASE WHEN g % 10 = 0 THEN (SELECT id FROM virtual_keys) END, "
        "now() - make_interval(secs => g) FROM generate_series(1, 20000) g RETURNING 1"
    )
    sql("ANALYZE async_jobs")

    def plan(*filters: str, **params: Any) -> str:
        statement = LIST_JOBS.format(filters="".join(LIST_FILTERS[f] for f in filters))
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("EXPLAIN " + statement, {"limit": 21, **params}).fetchall()
        return "\n".join(row[0] for row in rows)

    [(owner,)] = sql("SELECT id FROM virtual_keys")
    [(at, job_id)] = sql(
        "SELECT created_at, id FROM async_jobs ORDER BY created_at LIMIT 1 OFFSET 5000"
    )
    own = plan("owner", "after", owner=owner, after_at=at, after_id=job_id)
    assert "Index Scan Backward using async_jobs_owner_list_idx" in own, own
    assert "Sort" not in own, own
    everyone = plan("after", after_at=at, after_id=job_id)
    assert "Index Scan Backward using async_jobs_list_idx" in everyone, everyone
