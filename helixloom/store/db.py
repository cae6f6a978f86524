"""``Store``: helixloom's SQLite database, one object with every area's methods."""

from __future__ import annotations

from typing import Self

from helixloom import paths
from helixloom.store.catalog import CatalogMixin
from helixloom.store.jobs import JobsMixin
from helixloom.store.ratings import RatingsMixin
from helixloom.store.sessions import SessionsMixin
from helixloom.store.trees import TreesMixin


class Store(SessionsMixin, TreesMixin, RatingsMixin, CatalogMixin, JobsMixin):
    """The database: sessions and messages, tree nodes, ratings, adapters, datasets and jobs.

    ``Store(path)`` opens or creates the file and brings its schema up to date. One instance may
    be shared by threads; several processes may open the same file. Use it as a context manager
    or call ``close()``.
    """

    @classmethod
    def open_default(cls) -> Self:
        """Open ``HELIXLOOM_HOME/helixloom.db``, creating the state folder if needed."""
        paths.ensure_home()
        return cls(paths.db_path())
