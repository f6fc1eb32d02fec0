"""The support-bot skills' scripts, run as the agent runs them: a subprocess per call."""

from __future__ import annotations

import shutil
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SKILLS = Path(__file__).resolve().parents[1] / "skills"
LOOKUP = Path("order-lookup") / "scripts" / "lookup.py"
ELIGIBILITY = Path("returns-policy") / "scripts" / "eligibility.py"
GENERATOR = SKILLS / "order-lookup" / "data" / "make_orders_db.py"
DB = SKILLS / "order-lookup" / "data" / "orders.db"

ORDER_1042 = (
    "Order 1042: shipped on 2026-11-18 via UPS, tracking 1Z999AA10123456784;"
    " items: 1 x Ridgeline Rain Jacket (navy, M), 2 x Merino Trail Socks; total $185.00."
)
ELIGIBILITY_1038 = (
    "Order 1038, as of 2026-11-22: returnable until 2026-12-10"
    " (delivered 2026-11-10, 12 days ago; 18 days left).\n"
    "  - 1 x Summit Daypack 22L: returnable\n"
    "  - 1 x Wool Cuff Beanie (clearance): not returnable (final sale)\n"
)


def run(
    script: Path, *args: str, skills: Path = SKILLS, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one skill script with this interpreter, as the agent's Bash tool would."""
    return subprocess.run(
        [sys.executable, str(skills / script), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        check=False,
        timeout=60,
    )


def dump(db: Path) -> list[str]:
    """The database's full logical content as SQL statements."""
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def test_lookup_prints_an_order_line() -> None:
    """An order number prints that order's status, carrier, tracking, items and total."""
    result = run(LOOKUP, "1042")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ORDER_1042 + "\n"


def test_lookup_accepts_a_hash_prefix() -> None:
    """``#1042`` is read as order 1042."""
    assert run(LOOKUP, "#1042").stdout == ORDER_1042 + "\n"


@pytest.mark.parametrize(
    ("order_id", "expected"),
    [
        ("1038", "Order 1038: delivered on 2026-11-10 (shipped 2026-11-06 via USPS"),
        ("1043", "Order 1043: processing, placed on 2026-11-20, not shipped yet;"),
        ("1034", "Order 1034: cancelled on 2026-10-19, before it shipped;"),
        ("1032", "Order 1032: returned on 2026-10-14 (delivered 2026-09-26), refund of $119.00"),
    ],
)
def test_lookup_describes_each_status(order_id: str, expected: str) -> None:
    """Every order status gets its own wording."""
    result = run(LOOKUP, order_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(expected)


def test_lookup_by_email_lists_the_customers_orders() -> None:
    """``--email`` (any case) prints a header and the customer's orders, oldest first."""
    result = run(LOOKUP, "--email", "Dana.Whitfield@Example.com")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "Customer Dana Whitfield <dana.whitfield@example.com>: 3 orders"
    assert [line.split(":")[0] for line in lines[1:]] == ["Order 1033", "Order 1038", "Order 1042"]
    assert lines[3] == ORDER_1042


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["9999"], "no order 9999 found"),
        (["abc"], "'abc' is not an order number"),
        (["--email", "nobody@example.com"], "no customer with email 'nobody@example.com'"),
        ([], "give either an order number or --email"),
        (["1042", "--email", "dana.whitfield@example.com"], "not both"),
    ],
)
def test_lookup_rejects_bad_input_with_status_2(args: list[str], message: str) -> None:
    """Unknown or malformed input exits 2 with a message on stderr and nothing on stdout."""
    result = run(LOOKUP, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr


def test_eligibility_lists_items_inside_the_window() -> None:
    """A delivered order inside the window gets its last day and a verdict per item."""
    result = run(ELIGIBILITY, "1038", "--today", "2026-11-22")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ELIGIBILITY_1038


@pytest.mark.parametrize(
    ("order_id", "today", "expected"),
    [
        ("1038", "2026-12-10", "returnable until 2026-12-10 (delivered 2026-11-10, 30 days ago;"),
        ("1038", "2026-12-11", "not returnable; the 30-day return window closed on 2026-12-10"),
        ("1042", "2026-11-22", "not returnable yet; it shipped on 2026-11-18 via UPS"),
        ("1043", "2026-11-22", "nothing to return yet; it has not shipped"),
        ("1034", "2026-11-22", "nothing to return; it was cancelled on 2026-10-19."),
        ("1032", "2026-11-22", "already returned on 2026-10-14; the refund of $119.00"),
        ("1036", "2026-11-22", "not returnable; none of its items can be returned:"),
    ],
)
def test_eligibility_verdicts(order_id: str, today: str, expected: str) -> None:
    """The verdict follows the order's status and the 30-day window, last day included."""
    result = run(ELIGIBILITY, order_id, "--today", today)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"Order {order_id}, as of {today}: {expected}")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["9999", "--today", "2026-11-22"], "no order 9999 found"),
        (["x1"], "'x1' is not an order number"),
        (["1038", "--today", "22/11/2026"], "'22/11/2026' is not a date"),
    ],
)
def test_eligibility_rejects_bad_input_with_status_2(args: list[str], message: str) -> None:
    """Unknown orders and malformed numbers or dates exit 2 with a message on stderr."""
    result = run(ELIGIBILITY, *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_eligibility_defaults_to_today() -> None:
    """Without ``--today`` the verdict is dated with the current date."""
    result = run(ELIGIBILITY, "1042")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Order 1042, as of 20")


@pytest.fixture
def read_only_skills(tmp_path: Path) -> Iterator[Path]:
    """A copy of the skills folder with the database 0444 and every directory 0555."""
    skills = tmp_path / "bundle" / "skills"
    shutil.copytree(SKILLS, skills, ignore=shutil.ignore_patterns("__pycache__"))
    (skills / "order-lookup" / "data" / "orders.db").chmod(0o444)
    directories = sorted((p for p in skills.rglob("*") if p.is_dir()), reverse=True)
    for directory in [*directories, skills]:
        directory.chmod(0o555)
    yield skills
    for directory in [skills, *directories]:
        directory.chmod(stat.S_IRWXU)


def test_scripts_work_from_a_read_only_bundle(read_only_skills: Path, tmp_path: Path) -> None:
    """Both scripts run from a read-only copy and leave it exactly as it was."""
    # Root ignores permission bits, so compare the files too: opening the database for
    # writing would leave a journal next to it or change its bytes.
    before = {p: p.read_bytes() for p in read_only_skills.rglob("*") if p.is_file()}
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    lookup = run(LOOKUP, "1042", skills=read_only_skills, cwd=workspace)
    eligibility = run(ELIGIBILITY, "1038", "--today", "2026-11-22", skills=read_only_skills)
    assert (lookup.returncode, lookup.stdout) == (0, ORDER_1042 + "\n")
    assert (eligibility.returncode, eligibility.stdout) == (0, ELIGIBILITY_1038)
    after = {p: p.read_bytes() for p in read_only_skills.rglob("*") if p.is_file()}
    assert after == before
    assert list(workspace.iterdir()) == []


def test_a_missing_database_is_reported_not_created(tmp_path: Path) -> None:
    """Without orders.db both scripts exit 1 and do not create an empty database."""
    skills = tmp_path / "skills"
    shutil.copytree(SKILLS, skills, ignore=shutil.ignore_patterns("__pycache__"))
    db = skills / "order-lookup" / "data" / "orders.db"
    db.unlink()
    for script in (LOOKUP, ELIGIBILITY):
        result = run(script, "1042", skills=skills)
        assert result.returncode == 1
        assert "order database not found" in result.stderr
    assert not db.exists()


def test_generator_reproduces_the_committed_database(tmp_path: Path) -> None:
    """Regenerating orders.db gives exactly the committed tables and rows."""
    out = tmp_path / "orders.db"
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "6 customers, 15 orders, 22 items" in result.stdout
    assert dump(out) == dump(DB)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["orders.db"]
