"""The run store: one SQLite file per output folder that holds everything a run learns, written as work completes.

A run's config is stored once; re-opening the same folder with the same config resumes (finished samples are
not recomputed, nothing is duplicated), with another config it is refused unless ``restart=True`` (or the store holds
no scored sample and no explanation yet: then nothing is lost and it starts again under the new config). SQLite runs
in WAL mode, and every batch is one transaction, so a killed process loses at most the batch in flight.

Tables: ``meta`` (config, timings, counters), ``samples`` (one row per input: id, label, prediction, scores,
flag, error, metadata), ``explanations`` (evidence and explanation JSON per explained sample, or its error) and
``images`` (PNG bytes: the original at model size and each counterfactual, for the report).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["RunStore", "RunStoreError", "config_hash", "png_bytes", "png_tensor"]

FILENAME = "run.sqlite"
LOCKNAME = ".cfx-run.lock"  # held by the one process writing the folder
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    pos INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, label INTEGER, prediction INTEGER, scores TEXT NOT NULL,
    flagged INTEGER NOT NULL, error TEXT, metadata TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS explanations (
    id TEXT PRIMARY KEY, evidence TEXT, explanation TEXT, cause TEXT, error TEXT, seconds REAL);
CREATE TABLE IF NOT EXISTS images (id TEXT NOT NULL, kind TEXT NOT NULL, png BLOB NOT NULL, PRIMARY KEY (id, kind));
"""


class RunStoreError(RuntimeError):
    """The output folder holds a run with another config, or a store that cannot be read."""


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def png_bytes(image: Tensor) -> bytes:
    """``(3, H, W)`` in [0, 1] → PNG bytes (lossless, so a re-rendered report shows exactly what was measured).
    PNG bytes (already encoded, e.g. by a worker process) pass through unchanged."""
    if isinstance(image, (bytes, bytearray)):
        return bytes(image)
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def png_tensor(data: bytes) -> Tensor:
    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _writer_lock(out: Path):
    """An exclusive lock on ``out`` for one writing process (released when the store closes, or by the operating
    system when the process dies): a second ``cfx explain`` or ``cfx audit`` on the same folder is refused instead
    of writing into a store the first one is using, or deleting it under it with ``--restart``."""
    from filelock import FileLock, Timeout

    lock = FileLock(out / LOCKNAME, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunStoreError(f"another cfx process is writing to {out}; wait for it to finish, or use another "
                            "--out") from None
    except OSError as exc:
        raise RunStoreError(f"cannot write to the output folder {out} ({exc.strerror or exc}); choose another "
                            "--out") from None
    return lock


class RunStore:
    """Open (or create) ``out/run.sqlite``. ``config=None`` opens an existing store read-only (for reports)."""

    def __init__(self, out: str | Path, config: dict[str, Any] | None = None, restart: bool = False):
        self.out = Path(out)
        self.path = self.out / FILENAME
        if config is None and not self.path.exists():
            raise RunStoreError(f"no run store at {self.path}; run `cfx explain --out {self.out}` first")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunStoreError(f"cannot make the output folder {self.out} ({exc.strerror or exc}); choose another "
                                "--out") from None
        self._lock = _writer_lock(self.out) if config is not None else None  # one writer per folder
        if restart and self.path.exists():
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._release()
            if not os.access(self.out, os.W_OK) or (self.path.exists() and not os.access(self.path, os.W_OK)):
                raise RunStoreError(f"cannot write the run store {self.path} ({exc}): the folder or the file is not "
                                    "writable; choose another --out") from None
            raise RunStoreError(f"{self.path} is not a readable run store ({exc}); use --restart to start over") \
                from None
        self.resumed = False
        if config is not None:
            digest = config_hash(config)
            stored = self.get_meta("config_hash")
            if stored is not None and stored != digest and self._holds_no_work():
                with self.db:  # a run that stopped before finishing anything (e.g. on a bad option): start it anew
                    self.db.execute("DELETE FROM meta")
                    self.db.execute("DELETE FROM images")
                stored = None
            if stored is None:
                with self.db:
                    self.set_meta("config", config)
                    self.set_meta("config_hash", digest)
                    self.set_meta("created", time.strftime("%Y-%m-%d %H:%M:%S"))
            elif stored != digest:
                old = self.get_meta("config") or {}
                changed = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
                self.db.close()
                self._release()
                raise RunStoreError(
                    f"{self.out} holds a run with another config (changed: {', '.join(changed) or 'unknown'}); "
                    "use another --out folder, or --restart to discard it and start over")
            else:
                self.resumed = True

    def _holds_no_work(self) -> bool:
        """Whether the store has no scored sample and no explanation (nothing a restart would lose)."""
        return not any(self.db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
                       for table in ("samples", "explanations"))

    # ------------------------------------------------------------------ meta
    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, default=str)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    @property
    def config(self) -> dict[str, Any]:
        return self.get_meta("config", {})

    # ------------------------------------------------------------------ samples
    def scored_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT id FROM samples")}

    def add_samples(self, rows: Iterable[dict[str, Any]], images: dict[str, Tensor] | None = None) -> None:
        """One transaction: sample rows (id, label, prediction, scores, flagged, error, metadata) and the images of
        flagged samples. Rows already present are left as they are."""
        with self.db:
            for r in rows:
                self.db.execute(
                    "INSERT OR IGNORE INTO samples (id, label, prediction, scores, flagged, error, metadata) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (r["id"], r.get("label"), r.get("prediction"),
                     json.dumps({k: _finite(v) for k, v in (r.get("scores") or {}).items()}),
                     int(bool(r.get("flagged"))), r.get("error"),
                     json.dumps(r.get("metadata") or {}, default=str)))
            for sid, image in (images or {}).items():
                self.db.execute("INSERT OR IGNORE INTO images VALUES (?, ?, ?)", (sid, "original", png_bytes(image)))

    def samples(self) -> list[dict[str, Any]]:
        """Every sample row in input order (scores as floats, None where not finite)."""
        out = []
        for sid, label, pred, scores, flagged, error, meta in self.db.execute(
                "SELECT id, label, prediction, scores, flagged, error, metadata FROM samples ORDER BY pos"):
            out.append({"id": sid, "label": label, "prediction": pred, "scores": json.loads(scores),
                        "flagged": bool(flagged), "error": error, "metadata": json.loads(meta)})
        return out

    def flagged_ids(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT id FROM samples WHERE flagged = 1 ORDER BY pos")]

    # ------------------------------------------------------------------ explanations
    def explained_ids(self) -> set[str]:
        """The samples with a stored explanation row, except those whose reporter failed ("explanation failed: …"):
        a back-end that was down may answer now, so a resumed run asks again."""
        return {r[0] for r in self.db.execute(
            "SELECT id FROM explanations WHERE error IS NULL OR error NOT LIKE 'explanation failed:%'")}

    def add_explanations(self, rows: Iterable[dict[str, Any]], images: dict[tuple[str, str], Tensor] | None = None
                         ) -> None:
        """One transaction: explanation rows (id, evidence, explanation, cause, error, seconds) and their images
        keyed by (sample id, kind)."""
        with self.db:
            for r in rows:
                self.db.execute("INSERT OR REPLACE INTO explanations VALUES (?, ?, ?, ?, ?, ?)",
                                (r["id"], json.dumps(r["evidence"]) if r.get("evidence") is not None else None,
                                 json.dumps(r["explanation"]) if r.get("explanation") is not None else None,
                                 r.get("cause"), r.get("error"), r.get("seconds")))
            for (sid, kind), image in (images or {}).items():
                self.db.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?)", (sid, kind, png_bytes(image)))

    def explanations(self) -> dict[str, dict[str, Any]]:
        out = {}
        for sid, ev, ex, cause, error, seconds in self.db.execute("SELECT * FROM explanations"):
            out[sid] = {"evidence": json.loads(ev) if ev else None, "explanation": json.loads(ex) if ex else None,
                        "cause": cause, "error": error, "seconds": seconds}
        return out

    def image(self, sid: str, kind: str) -> bytes | None:
        row = self.db.execute("SELECT png FROM images WHERE id = ? AND kind = ?", (sid, kind)).fetchone()
        return row[0] if row else None

    def image_kinds(self, sid: str) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT kind FROM images WHERE id = ? ORDER BY kind", (sid,))]

    def iter_images(self, kind: str) -> Iterator[tuple[str, bytes]]:
        yield from self.db.execute("SELECT id, png FROM images WHERE kind = ?", (kind,))

    def close(self) -> None:
        self.db.close()
        self._release()

    def _release(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
