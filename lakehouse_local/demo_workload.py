"""The demo "application": an order-management workload that changes the embedded source.

On first use it seeds realistic order documents (ObjectId keys whose timestamps span about six
months, nested customer and address, an ``items`` array with Decimal128 prices, sometimes an Int64
or Binary field) and enables change streams on the collection. Each ``run(n)`` then applies ``n``
changes in a realistic mix: about 60% updates (status changes, items pushed with the total
incremented, address edits, loyalty points), 20% inserts, 10% deletes, 5% replaces and 5% deletes of
an order updated earlier in the same run (the case where an update's ``updateLookup`` finds
nothing).

Deterministic: the changes depend only on the seed, the number of runs already applied (a counter
kept in the source file and advanced in the same commit as the changes) and the source's clock,
which supplies timestamps. With a fixed clock two sources built the same way hold identical data.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from bson import Binary, Decimal128, Int64, ObjectId

from lakehouse_local.embedded_source import EmbeddedChangeStreamSource
from lambda_functions.cdc_capture.positions import from_millis

# The collections the demo workload plays the application of (the default LAKEHOUSE_COLLECTIONS).
# Capture lets it invent documents for these only: any other name must exist in the source, so a
# typo such as ``shop.ordrs`` fails capture instead of growing a collection of its own.
DEMO_COLLECTIONS = ("shop.customers", "shop.orders")

STATUS_FLOW = {"pending": "paid", "paid": "shipped", "shipped": "delivered"}
FIRST_NAMES = ("Ana", "Bruno", "Chen", "Dana", "Emil", "Fatima", "Goran", "Hana", "Ines", "Jonas")
LAST_NAMES = ("Silva", "Keller", "Wang", "Novak", "Haddad", "Rossi", "Sato", "Berg", "Moreau")
PLACES = (
    ("Lisbon", "PT"),
    ("Berlin", "DE"),
    ("Lyon", "FR"),
    ("Osaka", "JP"),
    ("Austin", "US"),
    ("Toronto", "CA"),
    ("Milan", "IT"),
    ("Seville", "ES"),
)
CATALOG = (
    ("SKU-1001", "19.99"),
    ("SKU-1002", "4.50"),
    ("SKU-2001", "129.00"),
    ("SKU-2002", "74.95"),
    ("SKU-3001", "9.99"),
    ("SKU-3002", "0.99"),
    ("SKU-4001", "349.00"),
)
TAGS = ("gift", "express", "b2b", "promo", "fragile", "subscription")
SEED_SPAN = timedelta(days=180)


@dataclass(frozen=True)
class WorkloadRun:
    """What one ``run`` did: its number (1-based), the changes applied by kind, documents after."""

    run: int
    changes: int
    ops: Mapping[str, int] = field(default_factory=dict)
    seeded: int = 0
    documents: int = 0


class DemoWorkload:
    def __init__(
        self,
        source: EmbeddedChangeStreamSource,
        database: str = "shop",
        collection: str = "orders",
        *,
        seed: int = 0,
        initial_documents: int = 500,
    ):
        self.source = source
        self.database = database
        self.collection = collection
        self.seed = seed
        self.initial_documents = initial_documents
        self._counter = f"demo:{database}.{collection}:runs"

    @property
    def runs(self) -> int:
        return self.source.read_counter(self._counter)

    def run(self, n_changes: int) -> WorkloadRun:
        """Seed if this is the first use, then apply ``n_changes`` changes in one commit."""
        source, db, coll = self.source, self.database, self.collection
        with source.bulk():
            seeded = self._seed_once()
            number = self.runs + 1
            rng = _seeded_random(self.seed, db, coll, "run", number)
            ids = source.document_ids(db, coll)
            updated: dict[Any, None] = {}  # updated in this run, in order (for a later delete)
            ops: Counter[str] = Counter()
            for _ in range(n_changes):
                roll = rng.random()
                if roll < 0.60 and ids:
                    _id = rng.choice(ids)
                    if self._update(rng, _id):
                        updated[_id] = None
                        ops["update"] += 1
                elif roll < 0.80 or not ids:
                    ids.append(source.insert_one(db, coll, self._order(rng, self._now())))
                    ops["insert"] += 1
                elif roll < 0.90:
                    victim = ids.pop(rng.randrange(len(ids)))
                    updated.pop(victim, None)
                    source.delete_one(db, coll, {"_id": victim})
                    ops["delete"] += 1
                elif roll < 0.95:
                    _id = rng.choice(ids)
                    source.replace_one(db, coll, {"_id": _id}, self._order(rng, self._now(), _id))
                    ops["replace"] += 1
                else:
                    victim = rng.choice(list(updated) or ids)
                    ids.remove(victim)
                    updated.pop(victim, None)
                    source.delete_one(db, coll, {"_id": victim})
                    ops["delete_after_update"] += 1
            source.write_counter(self._counter, number)
        return WorkloadRun(
            run=number, changes=n_changes, ops=dict(ops), seeded=seeded, documents=len(ids)
        )

    # -- pieces --------------------------------------------------------------------------------
    def _now(self) -> datetime:
        return from_millis(int(self.source.clock() * 1000))

    def _seed_once(self) -> int:
        seeded_key = f"demo:{self.database}.{self.collection}:seeded"
        if self.source.read_counter(seeded_key):
            return 0
        self.source.enable_change_streams(self.database, self.collection)
        rng = _seeded_random(self.seed, self.database, self.collection, "seed")
        now = self._now()
        orders = [
            self._order(rng, now - SEED_SPAN * rng.random()) for _ in range(self.initial_documents)
        ]
        orders.sort(key=lambda order: order["_id"].binary)
        self.source.insert_many(self.database, self.collection, orders)
        self.source.write_counter(seeded_key, 1)
        return len(orders)

    def _order(self, rng: random.Random, created: datetime, _id: Any = None) -> dict[str, Any]:
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        city, country = rng.choice(PLACES)
        items = [_item(rng) for _ in range(rng.randint(1, 4))]
        created = created.replace(microsecond=created.microsecond // 1000 * 1000)
        order: dict[str, Any] = {
            "_id": _id if _id is not None else _object_id(rng, created),
            "customer": {
                "name": f"{first} {last}",
                "email": f"{first}.{last}{rng.randint(1, 99)}@example.com".lower(),
                "address": {"city": city, "country": country},
            },
            "items": items,
            "total": _total(items),
            "status": rng.choice(("pending", "pending", "paid", "shipped", "delivered")),
            "created_at": created,
            "updated_at": created,
            "tags": rng.sample(TAGS, rng.randint(0, 2)),
        }
        if rng.random() < 0.3:
            order["loyalty_points"] = Int64(rng.randint(0, 5_000_000_000))
        if rng.random() < 0.1:
            order["signature"] = Binary(rng.randbytes(16), 0)
        return order

    def _update(self, rng: random.Random, _id: Any) -> bool:
        current = self.source.find_one(self.database, self.collection, _id)
        if current is None:
            return False
        now = self._now()
        kind = rng.random()
        if kind < 0.45:
            status = current.get("status")
            new_status = STATUS_FLOW.get(status, "cancelled" if rng.random() < 0.2 else status)
            update: dict[str, dict[str, Any]] = {"$set": {"status": new_status, "updated_at": now}}
        elif kind < 0.70:
            item = _item(rng)
            update = {
                "$push": {"items": item},
                "$inc": {"total": Decimal128(item["price"].to_decimal() * item["qty"])},
                "$set": {"updated_at": now},
            }
        elif kind < 0.85:
            city, country = rng.choice(PLACES)
            update = {
                "$set": {
                    "customer.address.city": city,
                    "customer.address.country": country,
                    "updated_at": now,
                }
            }
        elif kind < 0.95:
            update = {"$inc": {"loyalty_points": Int64(rng.randint(10, 500))}}
        else:
            update = {"$unset": {"tags": ""}, "$set": {"updated_at": now}}
        return self.source.update_one(self.database, self.collection, {"_id": _id}, update)


def _item(rng: random.Random) -> dict[str, Any]:
    sku, price = rng.choice(CATALOG)
    return {"sku": sku, "qty": rng.randint(1, 5), "price": Decimal128(price)}


def _total(items: list[dict[str, Any]]) -> Decimal128:
    return Decimal128(sum((i["price"].to_decimal() * i["qty"] for i in items), Decimal("0")))


def _object_id(rng: random.Random, created: datetime) -> ObjectId:
    return ObjectId(struct.pack(">I", int(created.timestamp())) + rng.randbytes(8))


def _seeded_random(*parts: object) -> random.Random:
    """A ``random.Random`` whose sequence depends only on ``parts`` (not on PYTHONHASHSEED)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


__all__ = ["DemoWorkload", "WorkloadRun"]
