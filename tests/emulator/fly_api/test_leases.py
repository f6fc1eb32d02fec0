"""Leases: the wrapped answer, 409 while held, every mutation refused without the nonce,
refresh and release with it, and an expired lease taken by another."""

from __future__ import annotations

from tests.emulator.fly_api.conftest import Fly
from tests.emulator.fly_api.spec_check import checked

APP = "kit-test"
NONCE = "fly-machine-lease-nonce"


async def _leased(fly: Fly) -> tuple[str, str]:
    await fly.app(APP)
    mid = (await fly.machine(APP))["id"]
    await fly.wait(APP, mid, "started")
    r = await fly.http.post(f"/v1/apps/{APP}/machines/{mid}/lease", params={"ttl": 30})
    lease = checked(r, "Machines_create_lease", 201)
    assert lease["status"] == "success"
    return mid, str(lease["data"]["nonce"])


async def test_a_held_lease_is_409_for_others_and_refreshed_by_its_holder(fly: Fly) -> None:
    """A second lease is refused with 409 naming the holder; the holder's POST with its
    nonce refreshes it (a later expires_at, the same nonce)."""
    mid, nonce = await _leased(fly)
    path = f"/v1/apps/{APP}/machines/{mid}/lease"
    shown = checked(await fly.http.get(path), "Machines_show_lease", 200)
    assert shown["data"]["nonce"] == nonce
    refused = checked(await fly.http.post(path, json={"ttl": 10}), "Machines_create_lease", 409)
    assert "lease currently held by" in refused["error"]
    fly.clock.advance(20)
    r = await fly.http.post(path, params={"ttl": 60}, headers={NONCE: nonce})
    refreshed = checked(r, "Machines_create_lease", 201)
    assert refreshed["data"]["nonce"] == nonce
    assert refreshed["data"]["expires_at"] > shown["data"]["expires_at"]


async def test_every_mutation_without_the_nonce_is_refused(fly: Fly) -> None:
    """While leased: update, start, stop, suspend, signal, delete and metadata writes
    without the nonce get 409 and change nothing; with it they go through."""
    mid, nonce = await _leased(fly)
    base = f"/v1/apps/{APP}/machines/{mid}"
    attempts = [
        ("POST", base, "Machines_update", {"config": {"image": "other"}}),
        ("POST", base + "/stop", "Machines_stop", {}),
        ("POST", base + "/suspend", "Machines_suspend", None),
        ("POST", base + "/start", "Machines_start", None),
        ("POST", base + "/signal", "Machines_signal", {"signal": "SIGTERM"}),
        ("DELETE", base + "?force=true", "Machines_delete", None),
        ("PATCH", base + "/metadata", "Machines_update_metadata", {"metadata": {"a": "b"}}),
        ("POST", base + "/metadata/a", "Machines_upsert_metadata", {"value": "b"}),
        ("DELETE", base + "/metadata/a", "Machines_delete_metadata", None),
    ]
    for method, url, operation, body in attempts:
        for headers in ({}, {NONCE: "not-the-nonce"}):
            r = await fly.http.request(method, url, json=body, headers=headers)
            refused = checked(r, operation, 409)
            assert f"machine ID {mid} lease currently held by" in refused["error"]
    machine = await fly.get(APP, mid)
    assert machine["state"] == "started"
    assert machine["config"]["image"] == "kit:test"
    r = await fly.http.patch(
        base + "/metadata", json={"metadata": {"a": "b"}}, headers={NONCE: nonce}
    )
    checked(r, "Machines_update_metadata", 204)
    r = await fly.http.post(base + "/stop", json={}, headers={NONCE: nonce})
    checked(r, "Machines_stop", 200)
    await fly.wait(APP, mid, "stopped")


async def test_release_needs_the_nonce_and_frees_the_machine(fly: Fly) -> None:
    """DELETE …/lease without the nonce is refused; with it the lease is gone and a
    mutation without a nonce goes through."""
    mid, nonce = await _leased(fly)
    path = f"/v1/apps/{APP}/machines/{mid}/lease"
    checked(await fly.http.delete(path), "Machines_release_lease", 400)
    r = await fly.http.delete(path, headers={NONCE: "wrong"})
    checked(r, "Machines_release_lease", 409)
    checked(await fly.http.delete(path, headers={NONCE: nonce}), "Machines_release_lease", 200)
    checked(await fly.http.get(path), "Machines_show_lease", 404)
    r = await fly.http.post(f"/v1/apps/{APP}/machines/{mid}/suspend")
    checked(r, "Machines_suspend", 200)


async def test_an_expired_lease_binds_no_one_and_is_taken_over(fly: Fly) -> None:
    """Past expires_at the old nonce is not needed, and another caller gets a new lease."""
    mid, nonce = await _leased(fly)
    path = f"/v1/apps/{APP}/machines/{mid}/lease"
    fly.clock.advance(31)
    r = await fly.http.post(path, json={"ttl": 10, "description": "takeover"})
    taken = checked(r, "Machines_create_lease", 201)
    assert taken["data"]["nonce"] != nonce
    assert taken["data"]["description"] == "takeover"
    r = await fly.http.post(f"/v1/apps/{APP}/machines/{mid}/stop", headers={NONCE: nonce})
    checked(r, "Machines_stop", 409)
    fly.clock.advance(11)
    r = await fly.http.post(f"/v1/apps/{APP}/machines/{mid}/stop", json={})
    checked(r, "Machines_stop", 200)


async def test_lease_ttl_on_create_returns_a_nonce_and_listings_show_a_stripped_lease(
    fly: Fly,
) -> None:
    """lease_ttl on create answers a nonce; include_leases shows owner and expiry only."""
    await fly.app(APP)
    made = await fly.machine(APP, lease_ttl=30)
    mid, nonce = made["id"], made["nonce"]
    assert nonce
    r = await fly.http.get(f"/v1/apps/{APP}/machines/{mid}", params={"include_leases": "true"})
    shown = checked(r, "Machines_show", 200)
    assert "nonce" not in shown["lease"]
    assert shown["lease"]["expires_at"] > 0
    r = await fly.http.get(f"/v1/apps/{APP}/machines", params={"include_leases": "true"})
    assert checked(r, "Machines_list", 200)[0]["lease"]["owner"]
    r = await fly.http.post(f"/v1/apps/{APP}/machines/{mid}/lease", headers={NONCE: nonce})
    checked(r, "Machines_create_lease", 201)
