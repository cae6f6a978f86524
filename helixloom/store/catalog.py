"""Named things on disk: LoRA adapters and datasets, registered by name with the path they live at.

The store records what it is told; checking that a path holds a PEFT folder or a readable
dataset is the job of the code that registers it.
"""

from __future__ import annotations

from pathlib import Path

from helixloom.errors import HelixloomError
from helixloom.store.base import StoreBase
from helixloom.store.records import JSON, AdapterRecord, Dataset, dumps, utc_now


class CatalogMixin(StoreBase):
    def add_adapter(
        self,
        name: str,
        path: Path | str,
        *,
        base_model: str | None = None,
        meta: JSON | None = None,
        replace: bool = False,
    ) -> AdapterRecord:
        """Register an adapter folder under ``name`` and return the record.

        A name already registered raises ``HelixloomError`` unless ``replace`` is true, in which
        case the old record is overwritten.
        """
        if not name:
            raise HelixloomError("an adapter needs a name", param="name")
        with self._write() as conn:
            old = conn.execute("SELECT path FROM adapters WHERE name = ?", (name,)).fetchone()
            if old is not None and not replace:
                raise HelixloomError(
                    f"adapter {name!r} is already registered (at {old['path']})",
                    "replace it (--replace) or remove it first",
                    param="name",
                )
            conn.execute(
                "INSERT OR REPLACE INTO adapters (name, path, base_model, meta, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, str(path), base_model, dumps(meta, "meta"), utc_now()),
            )
            row = conn.execute("SELECT * FROM adapters WHERE name = ?", (name,)).fetchone()
        return AdapterRecord.from_row(row)

    def get_adapter(self, name: str) -> AdapterRecord | None:
        """The adapter registered under ``name``, or ``None``."""
        row = self._fetchone("SELECT * FROM adapters WHERE name = ?", (name,))
        return None if row is None else AdapterRecord.from_row(row)

    def adapter_meta(self, name: str | None) -> JSON:
        """What was registered with adapter ``name`` (a learned adapter's system prompt and document
        sources); empty for no name, an unknown adapter or one registered without metadata."""
        if not name:
            return {}
        record = self.get_adapter(name)
        return dict(record.meta or {}) if record is not None else {}

    def list_adapters(self) -> list[AdapterRecord]:
        """Every registered adapter, by name."""
        return [AdapterRecord.from_row(r) for r in self._fetchall("SELECT * FROM adapters ORDER BY name")]

    def remove_adapter(self, name: str) -> bool:
        """Forget the adapter (its files stay on disk); False if no adapter had that name."""
        with self._write() as conn:
            return conn.execute("DELETE FROM adapters WHERE name = ?", (name,)).rowcount > 0

    def add_dataset(
        self,
        name: str,
        path: Path | str,
        *,
        kind: str | None = None,
        rows: int | None = None,
        meta: JSON | None = None,
        replace: bool = False,
    ) -> Dataset:
        """Register a dataset file under ``name`` and return the record.

        A name already registered raises ``HelixloomError`` unless ``replace`` is true.
        """
        if not name:
            raise HelixloomError("a dataset needs a name", param="name")
        if rows is not None and rows < 0:
            raise HelixloomError(f"a dataset cannot have {rows} rows", param="rows")
        with self._write() as conn:
            old = conn.execute("SELECT path FROM datasets WHERE name = ?", (name,)).fetchone()
            if old is not None and not replace:
                raise HelixloomError(
                    f"dataset {name!r} is already registered (at {old['path']})",
                    "replace it (--replace) or remove it first",
                    param="name",
                )
            conn.execute(
                "INSERT OR REPLACE INTO datasets (name, path, kind, rows, meta, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, str(path), kind, rows, dumps(meta, "meta"), utc_now()),
            )
            row = conn.execute("SELECT * FROM datasets WHERE name = ?", (name,)).fetchone()
        return Dataset.from_row(row)

    def get_dataset(self, name: str) -> Dataset | None:
        """The dataset registered under ``name``, or ``None``."""
        row = self._fetchone("SELECT * FROM datasets WHERE name = ?", (name,))
        return None if row is None else Dataset.from_row(row)

    def list_datasets(self) -> list[Dataset]:
        """Every registered dataset, by name."""
        return [Dataset.from_row(r) for r in self._fetchall("SELECT * FROM datasets ORDER BY name")]

    def remove_dataset(self, name: str) -> bool:
        """Forget the dataset (its file stays on disk); False if no dataset had that name."""
        with self._write() as conn:
            return conn.execute("DELETE FROM datasets WHERE name = ?", (name,)).rowcount > 0
