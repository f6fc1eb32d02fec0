#!/usr/bin/env python3
"""Build ``orders.db``, the demo order database, from the rows embedded below.

Run it after editing the rows (a development step; skills never run it)::

    python3 make_orders_db.py            # rewrites orders.db next to this file
    python3 make_orders_db.py --out /tmp/orders.db

The output is deterministic: the same rows always give the same tables and rows in the same
order, so ``iterdump()`` of a regenerated database equals that of the committed one. Dates are
ISO ``YYYY-MM-DD`` strings and money is in integer cents.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().with_name("orders.db")

SCHEMA = """
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers (id),
    placed_on TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('processing', 'shipped', 'delivered', 'cancelled', 'returned')),
    carrier TEXT,
    tracking TEXT,
    shipped_on TEXT,
    delivered_on TEXT,
    cancelled_on TEXT,
    returned_on TEXT
);
CREATE TABLE items (
    order_id INTEGER NOT NULL REFERENCES orders (id),
    line INTEGER NOT NULL,
    sku TEXT NOT NULL,
    name TEXT NOT NULL,
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    unit_price_cents INTEGER NOT NULL CHECK (unit_price_cents >= 0),
    -- NULL: returnable under the normal 30-day policy; otherwise why it is not.
    no_return_reason TEXT,
    PRIMARY KEY (order_id, line)
);
CREATE INDEX orders_by_customer ON orders (customer_id);
"""

# id, name, email
CUSTOMERS: list[tuple[int, str, str]] = [
    (1, "Dana Whitfield", "dana.whitfield@example.com"),
    (2, "Marcus Oyelaran", "marcus.o@example.com"),
    (3, "Priya Raman", "priya.raman@example.net"),
    (4, "Tomas Herrera", "tomas.herrera@example.org"),
    (5, "Grace Liu", "grace.liu@example.com"),
    (6, "Ben Okafor", "ben.okafor@example.com"),
]

# id, customer, placed, status, carrier, tracking, shipped, delivered, cancelled, returned
Order = tuple[
    int, int, str, str, str | None, str | None, str | None, str | None, str | None, str | None
]
ORDERS: list[Order] = [
    (1031, 2, "2026-09-02", "delivered", "USPS", "9400111899223345678901",
     "2026-09-04", "2026-09-09", None, None),
    (1032, 3, "2026-09-20", "returned", "UPS", "1Z999AA10123450012",
     "2026-09-22", "2026-09-26", None, "2026-10-14"),
    (1033, 1, "2026-10-05", "delivered", "FedEx", "794612345678",
     "2026-10-07", "2026-10-11", None, None),
    (1034, 4, "2026-10-18", "cancelled", None, None, None, None, "2026-10-19", None),
    (1035, 5, "2026-10-22", "delivered", "UPS", "1Z999AA10123451123",
     "2026-10-23", "2026-10-27", None, None),
    (1036, 6, "2026-11-01", "delivered", "USPS", "9400111899223345679012",
     "2026-11-02", "2026-11-06", None, None),
    (1037, 2, "2026-11-03", "delivered", "USPS", "9400111899223345680123",
     "2026-11-04", "2026-11-08", None, None),
    (1038, 1, "2026-11-04", "delivered", "USPS", "9400111899223345681234",
     "2026-11-06", "2026-11-10", None, None),
    (1039, 3, "2026-11-09", "delivered", "FedEx", "794612349012",
     "2026-11-11", "2026-11-14", None, None),
    (1040, 4, "2026-11-12", "delivered", "UPS", "1Z999AA10123452234",
     "2026-11-14", "2026-11-19", None, None),
    (1041, 5, "2026-11-14", "shipped", "FedEx", "794612350123",
     "2026-11-17", None, None, None),
    (1042, 1, "2026-11-16", "shipped", "UPS", "1Z999AA10123456784",
     "2026-11-18", None, None, None),
    (1043, 6, "2026-11-20", "processing", None, None, None, None, None, None),
    (1044, 2, "2026-11-19", "cancelled", None, None, None, None, "2026-11-19", None),
    (1045, 3, "2026-11-21", "processing", None, None, None, None, None, None),
]  # fmt: skip

# order, line, sku, name, quantity, unit price (cents), why it cannot be returned
ITEMS: list[tuple[int, int, str, str, int, int, str | None]] = [
    (1031, 1, "FLC-PUL-GRY-L", "Basecamp Fleece Pullover (grey, L)", 1, 6900, None),
    (1032, 1, "DWN-VST-BLK-S", "Alpine Down Vest (black, S)", 1, 11900, None),
    (1033, 1, "BOOT-TRL-W8", "Trailhead Hiking Boots (women's 8)", 1, 15900, None),
    (1033, 2, "WAX-BOOT", "Boot Waterproofing Wax", 1, 900, None),
    (1034, 1, "PACK-SUM-22", "Summit Daypack 22L", 1, 8900, None),
    (1035, 1, "MER-TOP-M", "Merino Base Layer Top (M)", 2, 6400, None),
    (1036, 1, "GIFT-50", "Acme Gift Card $50", 1, 5000, "gift card"),
    (1037, 1, "SUN-HOOD-L", "Packable Sun Hoodie (L)", 1, 5400, None),
    (1037, 2, "CAP-CNV", "Canvas Field Cap", 1, 2800, None),
    (1038, 1, "PACK-SUM-22", "Summit Daypack 22L", 1, 8900, None),
    (1038, 2, "BEANIE-CLR", "Wool Cuff Beanie (clearance)", 1, 1200, "final sale"),
    (1039, 1, "BTL-1L-ENG", "Insulated Water Bottle 1L, engraved", 1, 3400, "personalised"),
    (1039, 2, "BTL-BRUSH", "Bottle Cleaning Brush", 1, 600, None),
    (1040, 1, "RAIN-RDG-FOR-L", "Ridgeline Rain Jacket (forest, L)", 1, 14900, None),
    (1041, 1, "HAM-CAMP", "Camp Hammock", 1, 5900, None),
    (1041, 2, "HAM-STRAP", "Tree Straps", 1, 2400, None),
    (1042, 1, "RAIN-RDG-NVY-M", "Ridgeline Rain Jacket (navy, M)", 1, 14900, None),
    (1042, 2, "SOCK-MER-TRL", "Merino Trail Socks", 2, 1800, None),
    (1043, 1, "POLE-TRK", "Trekking Poles (pair)", 1, 7900, None),
    (1044, 1, "FLC-PUL-NVY-L", "Basecamp Fleece Pullover (navy, L)", 1, 6900, None),
    (1045, 1, "SUN-HOOD-S", "Packable Sun Hoodie (S)", 1, 5400, None),
    (1045, 2, "GIFT-25", "Acme Gift Card $25", 1, 2500, "gift card"),
]


def build(out: Path) -> None:
    """Write the database to ``out``, replacing any file already there."""
    tmp = out.with_name(out.name + ".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    try:
        with conn:
            conn.executescript(SCHEMA)
            conn.executemany("INSERT INTO customers VALUES (?, ?, ?)", CUSTOMERS)
            conn.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", ORDERS)
            conn.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)", ITEMS)
        conn.execute("VACUUM")
    finally:
        conn.close()
    os.replace(tmp, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"where to write (default: {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)
    out: Path = args.out
    build(out)
    print(f"Wrote {len(CUSTOMERS)} customers, {len(ORDERS)} orders, {len(ITEMS)} items to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
