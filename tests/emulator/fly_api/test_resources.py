"""Apps, list filters and cursors, metadata (412 on a stale version), secrets and IPs."""

from __future__ import annotations

from typing import Any

from tests.emulator.fly_api.conftest import Fly
from tests.emulator.fly_api.spec_check import checked

APP = "kit-test"


async def test_apps_create_show_list_delete_and_name_taken(fly: Fly) -> None:
    """201 on create; 422 name_taken on a taken name; list by org; delete (202) destroys
    the app's machines and forgets the app."""
    await fly.app(APP)
    r = await fly.http.post("/v1/apps", json={"name": APP, "org_slug": "other"})
    assert checked(r, "Apps_create", 422)["status"] == "name_taken"
    r = await fly.http.post("/v1/apps", json={"org_slug": "personal"})
    checked(r, "Apps_create", 422)
    shown = checked(await fly.http.get(f"/v1/apps/{APP}"), "Apps_show", 200)
    assert shown["name"] == APP
    mid = (await fly.machine(APP))["id"]
    await fly.wait(APP, mid, "started")
    listed = checked(await fly.http.get("/v1/apps", params={"org_slug": "personal"}), "Apps_list")
    assert [a["name"] for a in listed["apps"]] == [APP]
    assert listed["apps"][0]["machine_count"] == 1
    other = checked(await fly.http.get("/v1/apps", params={"org_slug": "nope"}), "Apps_list")
    assert other["apps"] == []
    checked(await fly.http.delete(f"/v1/apps/{APP}"), "Apps_delete", 202)
    checked(await fly.http.get(f"/v1/apps/{APP}"), "Apps_show", 404)
    for _ in range(100):
        if not fly.runner.has_run(mid):
            break
        await fly.http.get("/healthz")
    assert not fly.runner.has_run(mid)


async def _machines(fly: Fly, **params: Any) -> tuple[list[str], str | None]:
    r = await fly.http.get(f"/v1/apps/{APP}/machines", params=params)
    found = checked(r, "Machines_list", 200)
    return [m["id"] for m in found], r.headers.get("fly-next-cursor")


async def test_list_filters_by_state_and_metadata_and_pages_with_a_cursor(fly: Fly) -> None:
    """state= takes a comma list; metadata.k=v filters (all must match); limit pages with
    fly-next-cursor, absent on the last page."""
    await fly.app(APP)
    ids = []
    for n in range(5):
        config = {"image": "kit:test", "metadata": {"role": "sandbox" if n % 2 else "gateway"}}
        ids.append((await fly.machine(APP, config=config, skip_launch=n == 4))["id"])
    for mid in ids[:4]:
        await fly.wait(APP, mid, "started")
    await fly.http.post(f"/v1/apps/{APP}/machines/{ids[0]}/stop", json={})
    await fly.wait(APP, ids[0], "stopped")
    assert sorted((await _machines(fly, state="stopped,created"))[0]) == sorted([ids[0], ids[4]])
    assert (await _machines(fly, state="started"))[0] == ids[1:4]
    assert (await _machines(fly, **{"metadata.role": "sandbox"}))[0] == [ids[1], ids[3]]
    both = {"metadata.role": "gateway", "state": "started"}
    assert (await _machines(fly, **both))[0] == [ids[2]]
    seen, cursor = await _machines(fly, limit=2)
    pages = 1
    while cursor is not None:
        page, cursor = await _machines(fly, limit=2, cursor=cursor)
        seen += page
        pages += 1
        assert pages <= 5
    assert seen == ids
    assert pages == 3
    r = await fly.http.get(f"/v1/apps/{APP}/machines", params={"state": "running"})
    checked(r, "Machines_list", 400)
    r = await fly.http.get(f"/v1/apps/{APP}/machines", params={"limit": 2, "cursor": "bogus"})
    checked(r, "Machines_list", 400)


async def test_metadata_patch_removes_with_null_or_empty_and_refuses_a_stale_version(
    fly: Fly,
) -> None:
    """PATCH sets and removes keys (null or ""), leaves absent keys alone, and answers 412
    to a stale machine_version; per-key GET/POST/DELETE work."""
    await fly.app(APP)
    made = await fly.machine(APP, config={"image": "kit:test", "metadata": {"a": "1", "b": "2"}})
    mid, version = made["id"], made["version"]
    base = f"/v1/apps/{APP}/machines/{mid}/metadata"
    r = await fly.http.patch(
        base, json={"metadata": {"a": None, "b": "", "c": "3"}, "machine_version": version}
    )
    checked(r, "Machines_update_metadata", 204)
    assert checked(await fly.http.get(base), "Machines_show_metadata") == {"c": "3"}
    r = await fly.http.post(f"/v1/apps/{APP}/machines/{mid}", json={"config": made["config"]})
    checked(r, "Machines_update", 200)
    r = await fly.http.patch(base, json={"metadata": {"d": "4"}, "machine_version": version})
    body = checked(r, "Machines_update_metadata", 412)
    assert version in body["error"]
    r = await fly.http.post(base + "/k", json={"value": "v"})
    checked(r, "Machines_upsert_metadata", 204)
    got = checked(await fly.http.get(base + "/k"), "Machines_get_metadata_key", 200)
    assert got == {"value": "v"}
    checked(await fly.http.delete(base + "/k"), "Machines_delete_metadata", 204)
    checked(await fly.http.get(base + "/k"), "Machines_get_metadata_key", 404)
    r = await fly.http.patch(base, json={"metadata": {"x": 1}})
    checked(r, "Machines_update_metadata", 400)


async def test_secrets_never_show_values_and_ips_are_listed_and_released(fly: Fly) -> None:
    """Secrets answer names and digests only; setting the same value twice keeps the
    digest (so a deploy can tell nothing changed); IPs are assigned, listed, released."""
    await fly.app(APP)
    r = await fly.http.post(f"/v1/apps/{APP}/secrets", json={"values": {"API_KEY": "s3cret"}})
    first = checked(r, "Secrets_update", 200)
    assert "s3cret" not in r.text
    listed = checked(await fly.http.get(f"/v1/apps/{APP}/secrets"), "Secrets_list", 200)
    assert [s["name"] for s in listed["secrets"]] == ["API_KEY"]
    assert "value" not in listed["secrets"][0]
    r = await fly.http.post(f"/v1/apps/{APP}/secrets/API_KEY", json={"value": "s3cret"})
    again = checked(r, "Secret_create", 201)
    assert again["digest"] == first["secrets"][0]["digest"]
    assert again["version"] > first["version"]
    checked(await fly.http.get(f"/v1/apps/{APP}/secrets/API_KEY"), "Secret_get", 200)
    checked(await fly.http.delete(f"/v1/apps/{APP}/secrets/API_KEY"), "Secret_delete", 200)
    checked(await fly.http.delete(f"/v1/apps/{APP}/secrets/API_KEY"), "Secret_delete", 404)
    r = await fly.http.post(f"/v1/apps/{APP}/ip_assignments", json={"type": "shared_v4"})
    ip = checked(r, "App_IPAssignments_create", 200)["ip"]
    r = await fly.http.post(f"/v1/apps/{APP}/ip_assignments", json={"type": "v6"})
    checked(r, "App_IPAssignments_create", 200)
    ips = checked(await fly.http.get(f"/v1/apps/{APP}/ip_assignments"), "App_IPAssignments_list")
    assert len(ips["ips"]) == 2
    r = await fly.http.delete(f"/v1/apps/{APP}/ip_assignments/{ip}")
    checked(r, "App_IPAssignments_delete", 204)
    ips = checked(await fly.http.get(f"/v1/apps/{APP}/ip_assignments"), "App_IPAssignments_list")
    assert ip not in [e["ip"] for e in ips["ips"]]


async def test_a_create_retried_with_its_idempotency_key_answers_the_same_app(fly: Fly) -> None:
    """The same key and name give the first app back (no name_taken); the same key with
    another name is refused."""
    body = {"name": APP, "org_slug": "personal", "idempotency_key": "k1"}
    first = checked(await fly.http.post("/v1/apps", json=body), "Apps_create", 201)
    again = checked(await fly.http.post("/v1/apps", json=body), "Apps_create", 201)
    assert again["id"] == first["id"]
    other = {**body, "name": "kit-other"}
    checked(await fly.http.post("/v1/apps", json=other), "Apps_create", 422)
