"""Deletes whose ``_id`` came without its type: find the record they mean.

AWS DMS writes key-only delete rows whose ``_id`` column holds the bare value (``42``,
``9000000001``, 24 hex digits), so capture cannot tell ``42`` (a number) from ``"42"`` (a string)
or an ObjectId from the string of its hex digits. It stores such a delete with every key the value
may be (``record_key.bare_key_candidates``, in ``doc`` as ``{"$keyCandidates": [...]}``).

``resolve_key_candidates`` picks, per such delete, the candidate that names a live record: one the
table holds (as a live row, not a tombstone) or one an earlier change of the same commit upserts.
Exactly one such candidate: the delete gets that key. None: the record is not there (deleted
already, or never loaded); the delete keeps its likeliest key, which is harmless. More than one
(the collection holds both ``42`` and ``"42"``): the delete cannot be attributed, so it is
not applied and is reported (``ambiguous``), rather than deleting a document the source kept;
the source audit shows the surviving row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from lambda_functions.lake.record_key import KEY_CANDIDATES
from lambda_functions.merge.layout import key_bucket

__all__ = ["CandidateResolution", "resolve_key_candidates"]


@dataclass
class CandidateResolution:
    """How the deletes with candidate keys were attributed."""

    resolved: int = 0  # attributed to the one live candidate
    unmatched: int = 0  # no candidate is live: kept with the likeliest key
    ambiguous: list[str] = field(default_factory=list)  # candidate lists with several live keys


def resolve_key_candidates(
    changes: pa.Table, live_keys: Callable[[list[str]], set[str]]
) -> tuple[pa.Table, CandidateResolution]:
    """``changes`` with each delete that carries candidate keys given its key (see the module
    docstring); unattributable deletes are removed.

    Args:
        changes: change rows with the lake columns (``_id``, ``_bucket``, ``doc``, ``_op``, ...),
            in the order they were captured.
        live_keys: given partition names, the keys of live rows the table holds there.

    Returns:
        The rows to merge (same schema; candidate deletes re-keyed, ``doc`` null) and counts.
    """
    outcome = CandidateResolution()
    docs = changes.column("doc")
    ops = changes.column("_op")
    marked = pc.and_(
        pc.equal(ops, "delete"),
        pc.fill_null(pc.starts_with(docs, '{"' + KEY_CANDIDATES), False),
    )
    where = [i for i, flag in enumerate(marked.to_pylist()) if flag]
    if not where:
        return changes, outcome
    candidate_lists = [json.loads(docs[i].as_py())[KEY_CANDIDATES] for i in where]
    buckets = sorted({key_bucket(k) for keys in candidate_lists for k in keys})
    held = live_keys(buckets)
    ids = changes.column("_id").to_pylist()
    upserted_before = _upserted_before(ids, ops.to_pylist(), where)
    keep = [True] * changes.num_rows
    for index, candidates in zip(where, candidate_lists, strict=True):
        live = [k for k in candidates if k in held or k in upserted_before[index]]
        if len(live) == 1:
            ids[index] = live[0]
            outcome.resolved += 1
        elif not live:
            outcome.unmatched += 1
        else:
            keep[index] = False
            outcome.ambiguous.append(", ".join(live))
    rekeyed = changes.set_column(
        changes.column_names.index("_id"), "_id", pa.array(ids, pa.string())
    )
    buckets_out = changes.column("_bucket").to_pylist()
    for index in where:
        buckets_out[index] = key_bucket(ids[index])
    rekeyed = rekeyed.set_column(
        rekeyed.column_names.index("_bucket"), "_bucket", pa.array(buckets_out, pa.string())
    )
    cleared = pc.if_else(marked, pa.scalar(None, pa.string()), rekeyed.column("doc"))
    rekeyed = rekeyed.set_column(rekeyed.column_names.index("doc"), "doc", cleared)
    return rekeyed.filter(pa.array(keep)), outcome


def _upserted_before(ids: list[str], ops: list[str], where: list[int]) -> dict[int, set[str]]:
    """For each marked row, the keys live because of earlier rows of the same commit."""
    live: set[str] = set()
    found: dict[int, set[str]] = {}
    marked = set(where)
    for index, (key, op) in enumerate(zip(ids, ops, strict=True)):
        if index in marked:
            found[index] = set(live)
        elif op == "delete":
            live.discard(key)
        else:
            live.add(key)
    return found
