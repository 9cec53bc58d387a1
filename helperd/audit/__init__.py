"""The audit trail: one JSON record a line, HMAC-chained across size-rotated files, fsync'd.

Only the helper writes it (one writer thread, group commit). A change's records are on disk
before it is answered; reads and refusals are written once per key and window, then counted
(one `summary` record per key when the window closes). The chain, seq and head show any edit.

Modules: record (format + chain), files (names, head, key, reading back), trail (the
synchronous append), writer (group commit + counting), call (one request's records),
reading (queries), verifier (`audit verify`), forward (journald copy), cli (`lwp-admin audit`).
"""
from __future__ import annotations

from helperd.audit.call import REFUSAL_CODES, Call
from helperd.audit.files import (
                                 CURRENT,
                                 HEAD,
                                 ROTATED,
                                 ROTATED_RE,
                                 load_key,
                                 read_bytes,
                                 read_head,
                                 records_after,
                                 trail_files,
)
from helperd.audit.reading import file_bounds, files_in_time, lookup_error, query
from helperd.audit.record import (
                                 GENESIS,
                                 OUTCOME_OF_CODE,
                                 AuditError,
                                 args_of,
                                 blank_record,
                                 canonical,
                                 next_chain,
                                 parse_line,
                                 utc_now,
                                 utc_text,
)
from helperd.audit.trail import Pending, Trail, proc_stat
from helperd.audit.verifier import Verdict, verify
from helperd.audit.writer import COARSE_KEY_FIELDS, KEY_FIELDS, Aggregator, AuditWriter, open_trail

__all__ = [
    "COARSE_KEY_FIELDS", "CURRENT", "GENESIS", "HEAD", "KEY_FIELDS", "OUTCOME_OF_CODE",
    "REFUSAL_CODES", "ROTATED", "ROTATED_RE", "Aggregator", "AuditError", "AuditWriter", "Call",
    "Pending", "Trail", "Verdict", "args_of", "blank_record", "canonical", "file_bounds",
    "files_in_time", "load_key", "lookup_error", "next_chain", "open_trail", "parse_line",
    "proc_stat", "query", "read_bytes", "read_head", "records_after", "trail_files", "utc_now",
    "utc_text", "verify",
]
