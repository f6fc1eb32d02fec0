"""Machine lifecycles over HTTP: each transition, /wait and its 408, updates and versions,
exits and OOM kills in events, exec, destroy."""

from __future__ import annotations

import base64
import ipaddress
import signal
from typing import Any

from tests.emulator.fly_api.conftest import Fly
from tests.emulator.fly_api.spec_check import checked

APP = "kit-test"


def _path(mid: str, tail: str = "") -> str:
    return f"/v1/apps/{APP}/machines/{mid}{tail}"


async def _events(fly: Fly, mid: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = checked(
        await fly.http.get(_path(mid, "/events")), "Machines_list_events", 200
    )
    return found


async def test_create_starts_then_stop_and_start_again_with_a_fresh_root_fs(fly: Fly) -> None:
    """created → starting → started; stop → stopped; start again is a new run whose files
    come from the config, not from the last run."""
    await fly.app(APP)
    files = [{"guest_path": "/etc/kit.toml", "raw_value": base64.b64encode(b"x=1").decode()}]
    made = await fly.machine(APP, config={"image": "kit:test", "files": files})
    mid = made["id"]
    assert made["state"] in ("created", "starting")
    assert len(made["version"]) == 26
    done = await fly.wait(APP, mid, "started")
    assert done["ok"] is True
    assert done["version"] == made["version"]
    assert fly.runner.rootfs(mid) == {"/etc/kit.toml": b"x=1"}
    checked(
        await fly.http.post(_path(mid, "/exec"), json={"command": ["write", "/tmp/n", "1"]}),
        "Machines_exec",
        200,
    )
    first_run = fly.runner.run_number(mid)
    checked(await fly.http.post(_path(mid, "/stop"), json={}), "Machines_stop", 200)
    await fly.wait(APP, mid, "stopped")
    assert fly.runner.signals(mid) == [signal.SIGINT]  # Fly's default stop signal
    assert (await fly.get(APP, mid))["state"] == "stopped"
    started = checked(await fly.http.post(_path(mid, "/start")), "Machines_start", 200)
    assert started["previous_state"] == "stopped"
    await fly.wait(APP, mid, "started")
    assert fly.runner.run_number(mid) != first_run
    assert "/tmp/n" not in fly.runner.rootfs(mid)


async def test_each_machine_has_its_own_loopback_private_ip_in_its_env(fly: Fly) -> None:
    """private_ip is a loopback address, one per machine, given as FLY_PRIVATE_IP with
    the other FLY_* variables and config.env."""
    await fly.app(APP)
    config = {"image": "kit:test", "env": {"KIT_X": "1"}}
    made = [await fly.machine(APP, config=config) for _ in range(2)]
    ips = [m["private_ip"] for m in made]
    assert len(set(ips)) == 2
    assert all(ipaddress.ip_address(ip).is_loopback for ip in ips)
    for m in made:
        await fly.wait(APP, m["id"], "started")
        env = fly.runner.env(m["id"])
        assert env["FLY_PRIVATE_IP"] == m["private_ip"]
        assert env["FLY_MACHINE_ID"] == m["id"]
        assert env["FLY_APP_NAME"] == APP
        assert env["KIT_X"] == "1"


async def test_suspend_then_start_resumes_the_same_run(fly: Fly) -> None:
    """started → suspending → suspended; start resumes the run instead of a new launch."""
    await fly.app(APP)
    mid = (await fly.machine(APP))["id"]
    await fly.wait(APP, mid, "started")
    run = fly.runner.run_number(mid)
    checked(await fly.http.post(_path(mid, "/suspend")), "Machines_suspend", 200)
    await fly.wait(APP, mid, "suspended")
    assert fly.runner.is_suspended(mid)
    checked(await fly.http.post(_path(mid, "/start")), "Machines_start", 200)
    await fly.wait(APP, mid, "started")
    assert fly.runner.run_number(mid) == run
    assert not fly.runner.is_suspended(mid)
    # Stopping a suspended machine discards the snapshot: the next start is a new run.
    await fly.http.post(_path(mid, "/suspend"))
    await fly.wait(APP, mid, "suspended")
    checked(
        await fly.http.post(_path(mid, "/stop"), json={"signal": "SIGTERM", "timeout": "2s"}),
        "Machines_stop",
        200,
    )
    await fly.wait(APP, mid, "stopped")


async def test_the_transient_states_show_while_the_runner_works(fly: Fly) -> None:
    """starting, stopping, suspending and (on resume) starting are what GET and list show
    while the runner is busy; /wait for the settled state answers once it is done."""
    await fly.app(APP)
    mid = (await fly.machine(APP, skip_launch=True))["id"]
    steps = [
        ("/start", "starting", "started"),
        ("/suspend", "suspending", "suspended"),
        ("/start", "starting", "started"),
        ("/stop", "stopping", "stopped"),
    ]
    for action, transient, settled in steps:
        fly.runner.hold()
        r = await fly.http.post(_path(mid, action), json={})
        assert r.status_code == 200, r.text
        assert (await fly.get(APP, mid))["state"] == transient
        r = await fly.http.get(_path(mid, "/wait"), params={"state": settled, "timeout": 0})
        checked(r, "Machines_wait", 408)
        fly.runner.release()
        assert (await fly.wait(APP, mid, settled))["state"] == settled
    checked(await fly.http.delete(_path(mid)), "Machines_delete", 200)
    assert (await fly.wait(APP, mid, "destroyed"))["state"] == "destroyed"


async def test_skip_launch_stays_created_and_settled_wait_sees_it(fly: Fly) -> None:
    """skip_launch leaves the machine created; wait?state=settled answers at once."""
    await fly.app(APP)
    mid = (await fly.machine(APP, skip_launch=True))["id"]
    done = await fly.wait(APP, mid, "settled")
    assert done["state"] == "created"


async def test_wait_times_out_with_408_and_a_reissued_wait_succeeds(fly: Fly) -> None:
    """/wait for a state not reached answers 408 after its timeout; re-issued after the
    change, it answers 200."""
    await fly.app(APP)
    mid = (await fly.machine(APP))["id"]
    await fly.wait(APP, mid, "started")
    r = await fly.http.get(_path(mid, "/wait"), params={"state": "stopped", "timeout": 1})
    body = checked(r, "Machines_wait", 408)
    assert "re-issue" in body["error"]
    await fly.http.post(_path(mid, "/stop"), json={})
    assert (await fly.wait(APP, mid, "stopped"))["state"] == "stopped"


async def test_wait_refuses_bad_input(fly: Fly) -> None:
    """An unknown state or an unknown version is a 400."""
    await fly.app(APP)
    mid = (await fly.machine(APP))["id"]
    r = await fly.http.get(_path(mid, "/wait"), params={"state": "running"})
    checked(r, "Machines_wait", 400)
    r = await fly.http.get(_path(mid, "/wait"), params={"version": "0" * 26, "timeout": 1})
    checked(r, "Machines_wait", 400)


async def test_an_exit_and_an_oom_kill_show_in_events_newest_first(fly: Fly) -> None:
    """A run that exits is recorded with its code; an OOM kill with oom_killed true."""
    await fly.app(APP)
    mid = (await fly.machine(APP))["id"]
    await fly.wait(APP, mid, "started")
    fly.runner.exit(mid, 3)
    await fly.wait(APP, mid, "stopped")
    await fly.http.post(_path(mid, "/start"))
    await fly.wait(APP, mid, "started")
    fly.runner.exit(mid, 137, oom_killed=True)
    await fly.wait(APP, mid, "stopped")
    events = await _events(fly, mid)
    exits = [e["request"]["exit_event"] for e in events if e["type"] == "exit"]
    assert [(e["exit_code"], e["oom_killed"]) for e in exits] == [(137, True), (3, False)]
    assert exits[0]["requested_stop"] is False
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps, reverse=True)
    limited = checked(
        await fly.http.get(_path(mid, "/events"), params={"limit": 2}), "Machines_list_events"
    )
    assert [e["id"] for e in limited] == [e["id"] for e in events[:2]]


async def test_on_failure_restarts_a_crashed_machine(fly: Fly) -> None:
    """With the default restart policy, a non-zero exit restarts the machine (a new run)
    and the exit event says restarting."""
    await fly.app(APP)
    mid = (await fly.machine(APP, config={"image": "kit:test"}))["id"]
    await fly.wait(APP, mid, "started")
    run = fly.runner.run_number(mid)
    fly.runner.exit(mid, 1)
    for _ in range(200):
        exits = [e for e in await _events(fly, mid) if e["type"] == "exit"]
        if exits and fly.runner.run_number(mid) != run:
            break
        await fly.wait(APP, mid, "started")
    assert exits[0]["request"]["exit_event"]["restarting"] is True
    assert (await fly.wait(APP, mid, "started"))["state"] == "started"


async def test_update_makes_a_new_version_restarts_and_refuses_a_stale_one(fly: Fly) -> None:
    """Every update is a new 26-char version; a running machine restarts on the new config;
    a stale current_version is a 409 that changes nothing."""
    await fly.app(APP)
    made = await fly.machine(APP)
    mid, v1 = made["id"], made["version"]
    await fly.wait(APP, mid, "started")
    run = fly.runner.run_number(mid)
    config = {"image": "kit:test2", "env": {"A": "1"}, "restart": {"policy": "no"}}
    r = await fly.http.post(_path(mid), json={"config": config, "current_version": v1})
    updated = checked(r, "Machines_update", 200)
    v2 = updated["version"]
    assert len(v2) == 26
    assert v2 != v1
    done = await fly.wait(APP, mid, "started")
    assert done["version"] == v2
    assert fly.runner.run_number(mid) != run
    assert (await fly.get(APP, mid))["config"]["image"] == "kit:test2"
    r = await fly.http.post(_path(mid), json={"config": {"image": "x"}, "current_version": v1})
    body = checked(r, "Machines_update", 409)
    assert v2 in body["error"]
    assert (await fly.get(APP, mid))["version"] == v2
    versions = checked(await fly.http.get(_path(mid, "/versions")), "Machines_list_versions")
    assert [v["version"] for v in versions] == [v2, v1]


async def test_updating_a_stopped_machine_keeps_it_stopped_and_a_stop_before_launch_is_clean(
    fly: Fly,
) -> None:
    """An update of a stopped machine gives a new version and leaves it stopped; a stop
    that lands before the launch ran settles at stopped with no failure event."""
    await fly.app(APP)
    mid = (await fly.machine(APP))["id"]
    await fly.wait(APP, mid, "started")
    await fly.http.post(_path(mid, "/stop"), json={})
    await fly.wait(APP, mid, "stopped")
    r = await fly.http.post(_path(mid), json={"config": {"image": "kit:test3"}})
    checked(r, "Machines_update", 200)
    assert (await fly.wait(APP, mid, "settled"))["state"] == "stopped"
    fly.runner.hold()
    await fly.http.post(_path(mid, "/start"))
    await fly.http.post(_path(mid, "/stop"), json={})
    fly.runner.release()
    assert (await fly.wait(APP, mid, "settled"))["state"] == "stopped"
    assert all(e["status"] != "failed" for e in await _events(fly, mid))


async def test_exec_answers_200_even_when_the_command_fails(fly: Fly) -> None:
    """exec gives exit_code, stdout and stderr with HTTP 200 whatever the code."""
    await fly.app(APP)
    mid = (await fly.machine(APP))["id"]
    await fly.wait(APP, mid, "started")
    r = await fly.http.post(_path(mid, "/exec"), json={"command": ["exit", "2"], "timeout": 5})
    done = checked(r, "Machines_exec", 200)
    assert done["exit_code"] == 2
    r = await fly.http.post(_path(mid, "/exec"), json={"command": "not a list"})
    checked(r, "Machines_exec", 400)


async def test_signal_reaches_the_run(fly: Fly) -> None:
    """signal delivers the named signal; SIGTERM ends the in-process run, which stops."""
    await fly.app(APP)
    mid = (await fly.machine(APP))["id"]
    await fly.wait(APP, mid, "started")
    r = await fly.http.post(_path(mid, "/signal"), json={"signal": "SIGUSR1"})
    checked(r, "Machines_signal", 200)
    assert fly.runner.signals(mid) == [signal.SIGUSR1]
    r = await fly.http.post(_path(mid, "/signal"), json={"signal": "SIGNOPE"})
    checked(r, "Machines_signal", 400)


async def test_delete_needs_force_while_running_then_destroys(fly: Fly) -> None:
    """Deleting a started machine without force=true is refused; with it the machine goes
    destroying → destroyed, leaves the list, and shows with include_deleted."""
    await fly.app(APP)
    mid = (await fly.machine(APP))["id"]
    await fly.wait(APP, mid, "started")
    body = checked(await fly.http.delete(_path(mid)), "Machines_delete", 412)
    assert "force=true" in body["error"]
    checked(await fly.http.delete(_path(mid), params={"force": "true"}), "Machines_delete", 200)
    assert (await fly.wait(APP, mid, "destroyed"))["state"] == "destroyed"
    listed = checked(await fly.http.get(f"/v1/apps/{APP}/machines"), "Machines_list", 200)
    assert listed == []
    r = await fly.http.get(f"/v1/apps/{APP}/machines", params={"include_deleted": "true"})
    assert [m["id"] for m in checked(r, "Machines_list", 200)] == [mid]
    checked(await fly.http.post(_path(mid, "/start")), "Machines_start", 404)


async def test_a_stopped_machine_deletes_without_force(fly: Fly) -> None:
    """A stopped machine needs no force."""
    await fly.app(APP)
    mid = (await fly.machine(APP))["id"]
    await fly.wait(APP, mid, "started")
    await fly.http.post(_path(mid, "/stop"), json={"signal": "SIGTERM"})
    await fly.wait(APP, mid, "stopped")
    checked(await fly.http.delete(_path(mid)), "Machines_delete", 200)
    await fly.wait(APP, mid, "destroyed")
