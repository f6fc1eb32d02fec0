#!/usr/bin/env python3
"""Say whether an Acme Outfitters order can still be returned, and which of its items.

Usage::

    python3 eligibility.py 1038
    python3 eligibility.py 1038 --today 2026-11-22

The first line is the verdict for the whole order, for example::

    Order 1038, as of 2026-11-22: returnable until 2026-12-10 (delivered 2026-11-10, ...).

followed, for delivered orders still inside the window, by one line per item. ``--today``
(default: the current date) makes the answer reproducible.

The orders live in the ``order-lookup`` skill's database, found by its path relative to this
file, so both skills must be installed side by side. It is opened read-only and immutable: the
skill bundle is read-only. Exit status: 0 on success; 2 for a malformed or unknown order number
or date; 1 when the database is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DB_PATH = Path(__file__).resolve().parents[2] / "order-lookup" / "data" / "orders.db"
RETURN_WINDOW_DAYS = 30
EXIT_BAD_INPUT = 2
EXIT_NO_DATABASE = 1


@dataclass(frozen=True)
class Item:
    """One line of an order and, if it cannot be returned, why."""

    name: str
    quantity: int
    no_return_reason: str | None


@dataclass(frozen=True)
class Order:
    """The fields of an order that decide whether it can be returned."""

    id: int
    status: str
    carrier: str | None
    shipped_on: dt.date | None
    delivered_on: dt.date | None
    cancelled_on: dt.date | None
    returned_on: dt.date | None
    refund_cents: int
    items: tuple[Item, ...]


def open_db(path: Path) -> sqlite3.Connection:
    """Open the order database read-only; the bundle it lives in is read-only too."""
    if not path.is_file():
        raise FileNotFoundError(
            f"order database not found at {path}; the returns-policy skill needs the"
            " order-lookup skill installed next to it"
        )
    return sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)


def _date(value: str | None) -> dt.date | None:
    return dt.date.fromisoformat(value) if value else None


def fetch_order(conn: sqlite3.Connection, order_id: int) -> Order | None:
    """The order numbered ``order_id``, or ``None`` if there is no such order."""
    row = conn.execute(
        "SELECT status, carrier, shipped_on, delivered_on, cancelled_on, returned_on"
        " FROM orders WHERE id = ?",
        (order_id,),
    ).fetchone()
    if row is None:
        return None
    status, carrier, shipped_on, delivered_on, cancelled_on, returned_on = row
    lines = conn.execute(
        "SELECT name, quantity, unit_price_cents, no_return_reason"
        " FROM items WHERE order_id = ? ORDER BY line",
        (order_id,),
    ).fetchall()
    return Order(
        id=order_id,
        status=status,
        carrier=carrier,
        shipped_on=_date(shipped_on),
        delivered_on=_date(delivered_on),
        cancelled_on=_date(cancelled_on),
        returned_on=_date(returned_on),
        refund_cents=sum(quantity * price for _, quantity, price, _ in lines),
        items=tuple(Item(name, quantity, reason) for name, quantity, _, reason in lines),
    )


def money(cents: int) -> str:
    """``18500`` -> ``"$185.00"``."""
    return f"${cents // 100:,}.{cents % 100:02d}"


def days(n: int) -> str:
    """``1 day``, ``2 days``."""
    return f"{n} day" if n == 1 else f"{n} days"


def assess(order: Order, today: dt.date) -> list[str]:
    """The lines to print: a verdict for the order, then one line per item when it matters."""
    head = f"Order {order.id}, as of {today.isoformat()}:"
    delivered = order.delivered_on
    if order.status == "cancelled":
        return [f"{head} nothing to return; it was cancelled on {order.cancelled_on}."]
    if order.status == "returned":
        return [
            f"{head} already returned on {order.returned_on}; the refund of"
            f" {money(order.refund_cents)} went to the original payment method."
        ]
    if order.status == "processing" or order.shipped_on is None or order.shipped_on > today:
        return [
            f"{head} nothing to return yet; it has not shipped, so it can still be cancelled"
            " for a full refund instead."
        ]
    if delivered is None or delivered > today:
        return [
            f"{head} not returnable yet; it shipped on {order.shipped_on} via {order.carrier}"
            f" and has not been delivered. The {RETURN_WINDOW_DAYS}-day return window starts"
            " on delivery."
        ]
    last_day = delivered + dt.timedelta(days=RETURN_WINDOW_DAYS)
    if today > last_day:
        return [
            f"{head} not returnable; the {RETURN_WINDOW_DAYS}-day return window closed on"
            f" {last_day} (delivered {delivered}). Defective items may still be covered by"
            " the 1-year quality guarantee."
        ]
    item_lines = [
        f"  - {item.quantity} x {item.name}: "
        + (f"not returnable ({item.no_return_reason})" if item.no_return_reason else "returnable")
        for item in order.items
    ]
    if all(item.no_return_reason for item in order.items):
        return [f"{head} not returnable; none of its items can be returned:", *item_lines]
    elapsed = (today - delivered).days
    left = (last_day - today).days
    window = f"{days(left)} left" if left else "today is the last day"
    return [
        f"{head} returnable until {last_day} (delivered {delivered}, {days(elapsed)} ago;"
        f" {window}).",
        *item_lines,
    ]


def order_number(text: str) -> int:
    """Parse ``1042`` or ``#1042``; argparse turns the error into exit status 2."""
    digits = text.strip().removeprefix("#")
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 9):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an order number; order numbers are digits, like 1042"
        )
    return int(digits)


def iso_date(text: str) -> dt.date:
    """Parse ``YYYY-MM-DD``; argparse turns the error into exit status 2."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-22") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="eligibility.py", description="Can this Acme Outfitters order still be returned?"
    )
    parser.add_argument("order_id", type=order_number, help="order number, e.g. 1038")
    parser.add_argument(
        "--today", type=iso_date, help="judge as of this date, YYYY-MM-DD (default: today)"
    )
    args = parser.parse_args(argv)
    order_id: int = args.order_id
    today: dt.date = args.today or dt.date.today()
    try:
        conn = open_db(DB_PATH)
    except FileNotFoundError as exc:
        print(f"eligibility.py: {exc}", file=sys.stderr)
        return EXIT_NO_DATABASE
    with contextlib.closing(conn):
        order = fetch_order(conn, order_id)
    if order is None:
        print(
            f"eligibility.py: no order {order_id} found. Ask the customer to check the number on"
            " their confirmation email.",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    print("\n".join(assess(order, today)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
