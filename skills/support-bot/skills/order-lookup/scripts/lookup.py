#!/usr/bin/env python3
"""Look up Acme Outfitters orders by order number or by customer email.

Usage::

    python3 lookup.py 1042
    python3 lookup.py --email dana.whitfield@example.com

Prints one line per order, for example::

    Order 1042: shipped on 2026-11-18 via UPS, tracking 1Z999AA10123456784; items: ...

Exit status: 0 on success; 2 when the order number or email is malformed or unknown (the
reason is printed on stderr); 1 when the order database is missing.

The database is opened read-only and immutable: skills run from a read-only bundle, so nothing
may be written next to this script, not even a SQLite journal.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DB_PATH = Path(__file__).resolve().parents[1] / "data" / "orders.db"
EXIT_BAD_INPUT = 2
EXIT_NO_DATABASE = 1


@dataclass(frozen=True)
class Item:
    """One line of an order."""

    name: str
    quantity: int
    unit_price_cents: int
    no_return_reason: str | None


@dataclass(frozen=True)
class Order:
    """An order with its items, as stored in ``orders.db``."""

    id: int
    placed_on: str
    status: str
    carrier: str | None
    tracking: str | None
    shipped_on: str | None
    delivered_on: str | None
    cancelled_on: str | None
    returned_on: str | None
    items: tuple[Item, ...]

    @property
    def total_cents(self) -> int:
        """The sum of the order's lines."""
        return sum(item.quantity * item.unit_price_cents for item in self.items)


def open_db(path: Path) -> sqlite3.Connection:
    """Open the order database read-only; the bundle it lives in is read-only too."""
    if not path.is_file():
        raise FileNotFoundError(f"order database not found at {path}")
    return sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)


def fetch_order(conn: sqlite3.Connection, order_id: int) -> Order | None:
    """The order numbered ``order_id``, or ``None`` if there is no such order."""
    row = conn.execute(
        "SELECT id, placed_on, status, carrier, tracking, shipped_on, delivered_on,"
        " cancelled_on, returned_on FROM orders WHERE id = ?",
        (order_id,),
    ).fetchone()
    if row is None:
        return None
    items = tuple(
        Item(name, quantity, price, reason)
        for name, quantity, price, reason in conn.execute(
            "SELECT name, quantity, unit_price_cents, no_return_reason"
            " FROM items WHERE order_id = ? ORDER BY line",
            (order_id,),
        )
    )
    id_, placed_on, status, carrier, tracking, shipped, delivered, cancelled, returned = row
    return Order(
        id=id_,
        placed_on=placed_on,
        status=status,
        carrier=carrier,
        tracking=tracking,
        shipped_on=shipped,
        delivered_on=delivered,
        cancelled_on=cancelled,
        returned_on=returned,
        items=items,
    )


def fetch_customer_orders(
    conn: sqlite3.Connection, email: str
) -> tuple[str, str, list[Order]] | None:
    """``(name, email, orders)`` for the customer with ``email``, or ``None`` if unknown."""
    row = conn.execute(
        "SELECT id, name, email FROM customers WHERE lower(email) = lower(?)", (email.strip(),)
    ).fetchone()
    if row is None:
        return None
    customer_id, name, stored_email = row
    ids = conn.execute("SELECT id FROM orders WHERE customer_id = ? ORDER BY id", (customer_id,))
    orders = [order for (order_id,) in ids.fetchall() if (order := fetch_order(conn, order_id))]
    return name, stored_email, orders


def money(cents: int) -> str:
    """``18500`` -> ``"$185.00"``."""
    return f"${cents // 100:,}.{cents % 100:02d}"


def describe_items(items: Sequence[Item]) -> str:
    """``1 x Jacket, 2 x Socks [final sale]``: the item list of an order line."""
    parts = []
    for item in items:
        note = f" [{item.no_return_reason}]" if item.no_return_reason else ""
        parts.append(f"{item.quantity} x {item.name}{note}")
    return ", ".join(parts) if parts else "none"


def describe(order: Order) -> str:
    """The one-line summary printed for an order."""
    shipment = f"via {order.carrier}, tracking {order.tracking}"
    if order.status == "processing":
        state = f"processing, placed on {order.placed_on}, not shipped yet"
    elif order.status == "shipped":
        state = f"shipped on {order.shipped_on} {shipment}"
    elif order.status == "delivered":
        state = f"delivered on {order.delivered_on} (shipped {order.shipped_on} {shipment})"
    elif order.status == "cancelled":
        state = f"cancelled on {order.cancelled_on}, before it shipped"
    elif order.status == "returned":
        state = (
            f"returned on {order.returned_on} (delivered {order.delivered_on}),"
            f" refund of {money(order.total_cents)} issued to the original payment method"
        )
    else:
        state = order.status
    return (
        f"Order {order.id}: {state}; items: {describe_items(order.items)};"
        f" total {money(order.total_cents)}."
    )


def order_number(text: str) -> int:
    """Parse ``1042`` or ``#1042``; argparse turns the error into exit status 2."""
    digits = text.strip().removeprefix("#")
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 9):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an order number; order numbers are digits, like 1042"
        )
    return int(digits)


def build_parser() -> argparse.ArgumentParser:
    """The command line: an order number, or ``--email``."""
    parser = argparse.ArgumentParser(
        prog="lookup.py", description="Look up Acme Outfitters orders (read-only)."
    )
    parser.add_argument("order_id", nargs="?", type=order_number, help="order number, e.g. 1042")
    parser.add_argument("--email", help="list every order placed with this email address")
    return parser


def show_order(conn: sqlite3.Connection, order_id: int) -> int:
    """Print one order's line; exit status 2 if there is no such order."""
    order = fetch_order(conn, order_id)
    if order is None:
        print(
            f"lookup.py: no order {order_id} found. Ask the customer to check the number on"
            " their confirmation email, or look up their orders with --email.",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    print(describe(order))
    return 0


def show_customer(conn: sqlite3.Connection, email: str) -> int:
    """Print a customer's orders; exit status 2 if no customer has that email."""
    found = fetch_customer_orders(conn, email)
    if found is None:
        print(
            f"lookup.py: no customer with email {email!r}. Ask the customer for the email"
            " address they used at checkout, or for an order number.",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    name, stored_email, orders = found
    plural = "order" if len(orders) == 1 else "orders"
    print(f"Customer {name} <{stored_email}>: {len(orders)} {plural}")
    for order in orders:
        print(describe(order))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    order_id: int | None = args.order_id
    email: str | None = args.email
    try:
        conn = open_db(DB_PATH)
    except FileNotFoundError as exc:
        print(f"lookup.py: {exc}", file=sys.stderr)
        return EXIT_NO_DATABASE
    with contextlib.closing(conn):
        if order_id is not None and email is None:
            return show_order(conn, order_id)
        if email is not None and order_id is None:
            return show_customer(conn, email)
    parser.error("give either an order number or --email EMAIL, not both")


if __name__ == "__main__":
    raise SystemExit(main())
