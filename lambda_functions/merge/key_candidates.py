"""Deletes whose ``_id`` came without its type: find the record they mean.

AWS DMS writes key-only delete rows whose ``_id`` column holds the bare value (``42``,
``9000000001``, 24 hex digits), so capture cannot tell ``42`` (a number) from ``"42"`` (a string)
or an ObjectId from the string of its hex digits. It stores such a delete with every key the value
may be (``record_key.bare_key_candidates``, in ``doc`` as ``{"$keyCandidates": [...]}``).

``resolve_key_candidates`` picks, per such delete, the candidate that names a live record just
before it: one the table holds (as a live row, not a tombstone) or one a change of the same commit
upserts, net of the changes of the commit, taken in position order (``_pos``, then ``_batch``,
``_seq``: MongoDB's ``clusterTime`` order), not in delivery order (a late DMS CDC file brings
older changes after newer ones).
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
from lambda_functions.lake.table_layout import key_bucket, stream_order

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
    op_list = ops.to_pylist()
    candidates_at = dict(zip(where, candidate_lists, strict=True))
    keep = [True] * changes.num_rows
    live_now = set(held)  # live keys just before the change being walked, in position order
    for index in _position_order(changes):
        candidates = candidates_at.get(index)
        if candidates is None:
            if op_list[index] == "delete":
                live_now.discard(ids[index])
            else:
                live_now.add(ids[index])
            continue
        live = [k for k in candidates if k in live_now]
        if len(live) == 1:
            ids[index] = live[0]
            live_now.discard(live[0])
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


def _position_order(changes: pa.Table) -> list[int]:
    """Row indices of ``changes`` in MongoDB's order: ``_pos`` (clusterTime or commit time),
    then the resume-token order, ``_batch`` and ``_seq`` (the merge's tie-break:
    ``table_layout.stream_order``)."""
    numbered = pa.table(
        {
            "_pos": changes.column("_pos"),
            "_batch": changes.column("_batch"),
            "_seq": changes.column("_seq"),
            "_row": pa.array(range(changes.num_rows), pa.int64()),
        }
    )
    ordered = stream_order(numbered)
    return ordered.column("_row").to_pylist()
