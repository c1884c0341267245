"""The review store: verdicts, tags, drawn regions and the audit trail, in one database a team shares.

SQLAlchemy Core over SQLite (a file, WAL, the embedded default) or PostgreSQL (psycopg 3), named by a path
or a URL: `$PCAM_DB_URL`, else `$PCAM_REVIEW_DB`, else models/reviews.sqlite. The schema is Alembic's
(`migrations/`): a store is brought to the newest revision when opened, once, under a lock (a file lock
for SQLite, an advisory lock for PostgreSQL), so two processes opening an old store upgrade it once. A
store written by the versions before Alembic (sqlite3, with or without drawn regions, even the older
agree/disagree verdicts) is adopted in place with every row kept.

Verdicts and events are append-only, enforced by the database (triggers refuse UPDATE and DELETE): a
changed answer is a new row, and the current verdict of a patch is its latest row.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from pcam_core.atomic import file_lock

VERDICTS = ("tumour", "normal", "unsure")  # the answer to "tumour in the centre 32 x 32?"
ANSWERS = {"tumour": "Yes", "normal": "No", "unsure": "Unsure"}  # how the pages ask it
COLUMNS = ["seq", "dataset", "patch_id", "verdict", "note", "reviewer", "checkpoint", "prob", "created"]
EXPORT_COLUMNS = ["seq", "dataset", "patch_id", "verdict", "note", "reviewer", "reviewer_id", "verified",
                  "blind", "checkpoint", "prob", "created"]
EVENT_COLUMNS = ["seq", "created", "kind", "actor", "actor_id", "verified", "detail"]
MIGRATIONS = Path(__file__).with_name("migrations")
HEAD = "0006"

meta = sa.MetaData()  # the tables as the code reads and writes them (the migrations make them)
TYPES = {"prob": sa.Float, "removes": sa.Integer, "verified": sa.Boolean, "blind": sa.Boolean,
         "active": sa.Boolean, "hide_label": sa.Boolean, "hide_model": sa.Boolean}


def _table(name: str, *columns: str) -> sa.Table:
    return sa.Table(name, meta, sa.Column("seq", sa.Integer, primary_key=True),
                    *(sa.Column(c, TYPES.get(c, sa.Text)) for c in columns))


verdicts = _table("verdicts", "dataset", "patch_id", "verdict", "note", "reviewer", "checkpoint", "prob",
                  "created", "reviewer_id", "verified", "blind")
blind = _table("blind", "dataset", "active", "hide_label", "hide_model", "by_name", "by_id", "created")
tags = _table("tags", "dataset", "patch_id", "tag", "reviewer", "created")
regions = _table("regions", "dataset", "kind", "points", "removes", "reviewer", "created")
events = _table("events", "kind", "actor", "actor_id", "verified", "detail", "created")
users = sa.Table("users", meta, sa.Column("id", sa.Text, primary_key=True), sa.Column("name", sa.Text),
                 sa.Column("email", sa.Text), sa.Column("role", sa.Text), sa.Column("active", sa.Boolean),
                 sa.Column("created", sa.Text), sa.Column("last_seen", sa.Text))

# The sqlite3 versions' schema, created when adopting one of their stores that lacks a part of it.
_LEGACY = """
CREATE TABLE IF NOT EXISTS tags (seq INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL,
    patch_id TEXT NOT NULL, tag TEXT NOT NULL, reviewer TEXT NOT NULL, created TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS tags_dataset ON tags (dataset, tag);
CREATE INDEX IF NOT EXISTS tags_patch ON tags (dataset, tag, patch_id);
CREATE TABLE IF NOT EXISTS regions (seq INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('tumour', 'normal', 'removed')), points TEXT NOT NULL DEFAULT '[]',
    removes INTEGER, reviewer TEXT NOT NULL, created TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS regions_dataset ON regions (dataset, seq);
"""

# Stores written before verdicts meant one thing held "agree" / "disagree" with "the label and the model
# that the centre holds tumour": agree -> the model's call at P 0.5, disagree -> the other one, no P ->
# unsure; the note keeps the old verdict and P, and seq and created are unchanged.
_AGREE_DISAGREE = """
ALTER TABLE verdicts RENAME TO verdicts_v1;
DROP INDEX IF EXISTS verdicts_patch;
CREATE TABLE verdicts (seq INTEGER PRIMARY KEY AUTOINCREMENT, dataset TEXT NOT NULL, patch_id TEXT NOT NULL,
    verdict TEXT NOT NULL CHECK (verdict IN ('tumour', 'normal', 'unsure')), note TEXT NOT NULL DEFAULT '',
    reviewer TEXT NOT NULL, checkpoint TEXT NOT NULL DEFAULT '', prob REAL, created TEXT NOT NULL);
CREATE INDEX verdicts_patch ON verdicts (dataset, patch_id, seq);
INSERT INTO verdicts (seq, dataset, patch_id, verdict, note, reviewer, checkpoint, prob, created)
SELECT seq, dataset, patch_id,
       CASE WHEN verdict = 'unsure' OR prob IS NULL THEN 'unsure'
            WHEN (verdict = 'agree') = (prob >= 0.5) THEN 'tumour' ELSE 'normal' END,
       TRIM(note || ' [was ' || verdict
            || CASE WHEN prob IS NULL THEN '' ELSE ' at P ' || printf('%.3f', prob) END || ']'),
       reviewer, checkpoint, prob, created
FROM verdicts_v1;
DROP TABLE verdicts_v1;
"""


class StoreError(ValueError):
    """The store cannot be reached, read or written (one line for the user: what and which store)."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def default_db() -> str:
    """The store the app and the CLI share: $PCAM_DB_URL, else $PCAM_REVIEW_DB, else models/reviews.sqlite."""
    return os.environ.get("PCAM_DB_URL") or os.environ.get("PCAM_REVIEW_DB") or \
        str(Path(__file__).resolve().parents[2] / "models" / "reviews.sqlite")


def shown(where: str | Path) -> str:
    """A store's name for people: a path, or its URL with the password hidden."""
    if "://" not in str(where):
        return str(where)
    return sa.make_url(str(where)).render_as_string(hide_password=True)


def _url(where: str | Path) -> tuple[sa.URL, Path | None]:
    text = str(where)
    if "://" not in text:
        return sa.make_url(f"sqlite:///{Path(text).resolve()}"), Path(text)
    url = sa.make_url(text)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite":
        return url, Path(url.database) if url.database else None
    if url.get_backend_name() != "postgresql":
        raise StoreError(f"the review store is SQLite (a file) or PostgreSQL (postgresql://...), not "
                         f"{url.get_backend_name()}")
    return url, None


class ReviewStore:
    """Verdicts, tags, drawn regions and events in one database (created and upgraded on first use).

    Args:
        where: an SQLite file (created with its folder when missing) or a database URL
            (sqlite:///path, postgresql://user@host/db).
        timeout: seconds a writer waits for another writer's lock before failing.
    """

    def __init__(self, where: str | Path, timeout: float = 30.0):
        self.url, self.path = _url(where)
        self.timeout = timeout
        self.name = str(self.path) if self.path else self.url.render_as_string(hide_password=True)
        if self.path is not None:
            if self.path.is_dir():
                raise StoreError(f"the verdict store {self.path} is a folder: name a file (an existing "
                                 "store, or a new name to start one)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = self._engine()
        try:
            self._upgrade()
        except (SQLAlchemyError, sqlite3.DatabaseError) as e:  # not a store, damaged, unreachable
            self.engine.dispose()
            raise StoreError(f"{self.name} cannot be opened as a verdict store ({_first_line(e)}): name an "
                             "SQLite store this app wrote, a new file name to start one, or a reachable "
                             "PostgreSQL database") from e

    def _engine(self) -> sa.Engine:
        if self.path is None:
            return sa.create_engine(self.url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool,
                                  connect_args={"timeout": self.timeout})
        wait_ms = int(self.timeout * 1000)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi, _record):
            dbapi.isolation_level = None  # transactions are begun below, not by the driver
            dbapi.execute("PRAGMA journal_mode=WAL")
            dbapi.execute(f"PRAGMA busy_timeout = {wait_ms}")

        @sa.event.listens_for(engine, "begin")
        def _begin(connection):  # a writer takes the write lock at once (it waits its turn, never deadlocks)
            readonly = connection.get_execution_options().get("readonly")
            connection.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine

    # ---- schema ---------------------------------------------------------------------------------------
    def reading(self) -> sa.Connection:
        """A connection for reads (on SQLite it takes no write lock)."""
        return self.engine.connect().execution_options(readonly=True)

    def _upgrade(self) -> None:
        with self.reading() as con:
            if _revision(con) == HEAD:
                return
        if self.path is not None:
            with file_lock(self.path.with_name(self.path.name + ".migrate.lock")):
                self._migrate()
        else:
            with self.engine.connect() as con:
                con.execute(sa.text("SELECT pg_advisory_lock(72730001)"))
                try:
                    self._migrate()
                finally:
                    con.execute(sa.text("SELECT pg_advisory_unlock(72730001)"))
                    con.commit()

    def _migrate(self) -> None:
        from alembic import command
        from alembic.config import Config

        with self.engine.begin() as con:
            if _revision(con) == HEAD:
                return
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = con
            if _revision(con) is None and sa.inspect(con).has_table("verdicts"):
                _adopt(con)  # a store of the versions before Alembic: its schema is revision 0001
                command.stamp(config, "0001")
            command.upgrade(config, "head")

    @contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Turns a database error in the block into a StoreError naming `doing` and the store."""
        try:
            yield
        except (SQLAlchemyError, sqlite3.Error) as e:
            raise StoreError(f"{doing} failed on {self.name}: {_first_line(e)}") from e

    def begin(self):
        """A transaction on the store (SQLAlchemy connection); committed when the block ends."""
        return self.engine.begin()

    # ---- verdicts -------------------------------------------------------------------------------------
    def record(self, dataset: str, patch_id: str, verdict: str, reviewer: str, note: str = "",
               checkpoint: str = "", prob: float | None = None, reviewer_id: str = "",
               verified: bool = False, blind: bool = False) -> int:
        """Appends a verdict and returns its sequence number.

        Args:
            dataset: the dataset key (the app uses the dataset folder's resolved path, or slide:<path>).
            patch_id: the patch id within the dataset.
            verdict: one of VERDICTS.
            reviewer: who gave it, as shown; must not be blank.
            note: free text.
            checkpoint: the model whose prediction was reviewed, if any.
            prob: that model's probability for the patch, if any.
            reviewer_id: the sign-in provider's identity (issuer and subject); "" for a typed name.
            verified: whether a sign-in provider vouched for the reviewer.
            blind: given in blind mode (others' verdicts unseen).
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict {verdict!r} is not one of {list(VERDICTS)}")
        if not reviewer or not reviewer.strip():
            raise ValueError("a verdict needs a reviewer name: enter yours in the sidebar")
        row = dict(dataset=dataset, patch_id=str(patch_id), verdict=verdict, note=note.strip(),
                   reviewer=reviewer.strip(), checkpoint=checkpoint, created=now(), reviewer_id=reviewer_id,
                   prob=None if prob is None else float(prob), verified=bool(verified), blind=bool(blind))
        with self.errors("saving the verdict"), self.engine.begin() as con:
            return int(con.execute(verdicts.insert().values(**row).returning(verdicts.c.seq)).scalar_one())

    def _frame(self, query, columns: list[str]) -> pd.DataFrame:
        with self.errors("reading the store"), self.reading() as con:
            rows = con.execute(query).cursor.fetchall()  # the driver's tuples: no Row objects for 10^5 rows
        return pd.DataFrame.from_records(rows, columns=columns)

    def latest(self, dataset: str) -> pd.DataFrame:
        """The current verdict of every reviewed patch of a dataset, one row per patch."""
        last = sa.select(sa.func.max(verdicts.c.seq).label("seq")).where(verdicts.c.dataset == dataset) \
            .group_by(verdicts.c.patch_id).subquery()
        query = sa.select(*(verdicts.c[c] for c in COLUMNS)).join(last, verdicts.c.seq == last.c.seq) \
            .order_by(verdicts.c.seq)
        return self._frame(query, COLUMNS)

    def history(self, dataset: str, patch_id: str | None = None) -> pd.DataFrame:
        """Every verdict given (for one patch, or the whole dataset), oldest first."""
        query = sa.select(*(verdicts.c[c] for c in COLUMNS)).where(verdicts.c.dataset == dataset)
        if patch_id is not None:
            query = query.where(verdicts.c.patch_id == str(patch_id))
        return self._frame(query.order_by(verdicts.c.seq), COLUMNS)

    def datasets(self) -> pd.DataFrame:
        """Each dataset (or slide, "slide:<path>") with verdicts: dataset, verdicts, patches."""
        patches = sa.func.count(sa.distinct(verdicts.c.patch_id))
        query = sa.select(verdicts.c.dataset, sa.func.count(), patches).group_by(verdicts.c.dataset) \
            .order_by(verdicts.c.dataset)
        return self._frame(query, ["dataset", "verdicts", "patches"])

    def every_verdict(self) -> pd.DataFrame:
        """Every verdict row of every dataset, oldest first (EXPORT_COLUMNS): what `review export` writes."""
        frame = self._frame(sa.select(*(verdicts.c[c] for c in EXPORT_COLUMNS)).order_by(verdicts.c.seq),
                            EXPORT_COLUMNS)
        return frame.astype({"verified": bool, "blind": bool})

    def blind_verdicts(self, dataset: str) -> set[int]:
        """The sequence numbers of the dataset's verdicts given in blind mode."""
        query = sa.select(verdicts.c.seq).where(verdicts.c.dataset == dataset, verdicts.c.blind)
        with self.errors("reading verdicts"), self.reading() as con:
            return set(con.execute(query).scalars())

    # ---- blind review ---------------------------------------------------------------------------------
    def set_blind(self, dataset: str, active: bool, hide_label: bool, hide_model: bool, by: str,
                  by_id: str = "") -> None:
        """Turns blind mode on or off for a dataset (or slide); an event in the audit trail too."""
        row = dict(dataset=dataset, active=bool(active), hide_label=bool(hide_label and active),
                   hide_model=bool(hide_model and active), by_name=by, by_id=by_id, created=now())
        with self.errors("setting blind mode"), self.engine.begin() as con:
            con.execute(blind.insert().values(**row))
        self.log("blind mode", by, {"dataset": dataset, "on": row["active"], "hide label": row["hide_label"],
                                    "hide model": row["hide_model"]}, by_id, bool(by_id))

    def blind_mode(self, dataset: str) -> dict:
        """The blind mode in force on a dataset: active, hide_label, hide_model (all False when never set)."""
        query = sa.select(blind.c.active, blind.c.hide_label, blind.c.hide_model) \
            .where(blind.c.dataset == dataset).order_by(blind.c.seq.desc()).limit(1)
        with self.errors("reading blind mode"), self.reading() as con:
            row = con.execute(query).first()
        return dict(zip(("active", "hide_label", "hide_model"), map(bool, row or (False, False, False)),
                        strict=True))

    # ---- tags -----------------------------------------------------------------------------------------
    def tag(self, dataset: str, patch_ids: Sequence[str], tag: str, reviewer: str) -> int:
        """Tags patches (a selection drawn on the Map page, say) in one transaction; returns how many
        were newly tagged.

        Tags are kept like verdicts: appended, never changed. A patch that already has the tag gets no
        second row, so a form sent twice (Enter, then the button) tags each patch once.
        """
        tag = tag.strip()
        if not tag or len(tag) > 64:
            raise ValueError("a tag is 1 to 64 characters, for example 'stain batch 3' or 'blurred'")
        if not reviewer or not reviewer.strip():
            raise ValueError("a tag needs a reviewer name: enter yours in the sidebar")
        wanted = list(dict.fromkeys(str(p) for p in patch_ids))
        with self.errors("tagging"), self.engine.begin() as con:
            have = set(con.execute(sa.select(tags.c.patch_id).where(tags.c.dataset == dataset,
                                                                    tags.c.tag == tag)).scalars())
            new = [dict(dataset=dataset, patch_id=p, tag=tag, reviewer=reviewer.strip(), created=now())
                   for p in wanted if p not in have]
            if new:
                con.execute(tags.insert(), new)
        return len(new)

    def tags(self, dataset: str) -> pd.DataFrame:
        """Each (patch_id, tag) given on a dataset once, with who tagged it first."""
        first = sa.select(sa.func.min(tags.c.seq)).where(tags.c.dataset == dataset) \
            .group_by(tags.c.patch_id, tags.c.tag).scalar_subquery()
        query = sa.select(tags.c.patch_id, tags.c.tag, tags.c.reviewer).where(tags.c.seq.in_(first)) \
            .order_by(tags.c.tag, tags.c.seq)
        return self._frame(query, ["patch_id", "tag", "reviewer"])

    # ---- the audit trail ------------------------------------------------------------------------------
    def log(self, kind: str, actor: str, detail: dict | None = None, actor_id: str = "",
            verified: bool = False) -> int:
        """Appends an event (an export, a job started or stopped, a label snapshot used for training, ...)."""
        row = dict(kind=kind, actor=actor.strip() or "(nobody)", actor_id=actor_id, verified=bool(verified),
                   detail=json.dumps(detail or {}, sort_keys=True, default=str), created=now())
        with self.errors("writing the audit trail"), self.engine.begin() as con:
            return int(con.execute(events.insert().values(**row).returning(events.c.seq)).scalar_one())

    def events(self, kind: str | None = None) -> pd.DataFrame:
        """The audit trail, oldest first (EVENT_COLUMNS)."""
        query = sa.select(*(events.c[c] for c in EVENT_COLUMNS))
        if kind is not None:
            query = query.where(events.c.kind == kind)
        return self._frame(query.order_by(events.c.seq), EVENT_COLUMNS).astype({"verified": bool})


def _first_line(error: Exception) -> str:
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _revision(con: sa.Connection) -> str | None:
    if not sa.inspect(con).has_table("alembic_version"):
        return None
    return con.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def _adopt(con: sa.Connection) -> None:
    """Brings a store of the sqlite3 versions to revision 0001's shape: the agree/disagree verdicts
    rewritten, the tags and regions tables there."""
    raw = con.connection.driver_connection
    sql = raw.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'verdicts'").fetchone()
    if sql is not None and "'agree'" in sql[0]:
        for statement in filter(str.strip, _AGREE_DISAGREE.split(";")):
            raw.execute(statement)
    for statement in filter(str.strip, _LEGACY.split(";")):
        raw.execute(statement)
