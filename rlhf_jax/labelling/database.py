"""The labelling database: its tables, and an engine for a SQLAlchemy URL.

SQLite (WAL journal, `synchronous=FULL`) is the embedded default; a PostgreSQL URL
(`postgresql+psycopg://…`) works unchanged. A unique (task, slot) pair bounds how many
annotators hold a task at once, a unique (task, annotator) pair makes sure nobody is shown the
same task twice, and a partial unique index keeps one open assignment per annotator; the store
(`labelling.store`) relies on them under any number of concurrent servers. A database made by an
earlier version gets the tables and the (nullable) columns added since (`open_database`).
"""
from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()
meta_table = sa.Table(
    "meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False))
annotators = sa.Table(
    "annotators", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("token_issued_at", sa.Float, nullable=True))  # NULL: made before this column
sessions = sa.Table(  # a login opens one; logging out deletes it
    "sessions", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("annotator_id", sa.String(64), sa.ForeignKey("annotators.id"), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Index("sessions_by_annotator", "annotator_id"))
overrides = sa.Table(  # the audit log of what admins (or a screening defence) decided
    "overrides", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("annotator_id", sa.String(64), sa.ForeignKey("annotators.id"), nullable=False),
    sa.Column("action", sa.String(32), nullable=False),  # quarantine | release
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("actor", sa.String(64), nullable=False),  # an admin's id or a defence's name
    sa.Column("at", sa.Float, nullable=False),
    sa.Index("overrides_by_annotator", "annotator_id", "id"))
tasks = sa.Table(
    "tasks", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("uid", sa.String(128), nullable=False, unique=True),
    sa.Column("prompt", sa.Text, nullable=False),
    sa.Column("responses", sa.Text, nullable=False),  # JSON list of strings
    sa.Column("meta", sa.Text, nullable=False),  # JSON object
    sa.Column("created_at", sa.Float, nullable=False))
assignments = sa.Table(
    "assignments", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False),
    sa.Column("annotator_id", sa.String(64), sa.ForeignKey("annotators.id"), nullable=False),
    sa.Column("slot", sa.Integer, nullable=True),  # NULL once skipped or expired
    sa.Column("shown_order", sa.Text, nullable=False),  # JSON: response index at each position
    sa.Column("status", sa.String(16), nullable=False),  # open | done | skipped | expired
    sa.Column("shown_at", sa.Float, nullable=False),
    sa.UniqueConstraint("task_id", "annotator_id", name="one_assignment_per_annotator"),
    sa.UniqueConstraint("task_id", "slot", name="one_annotator_per_slot"),
    sa.Index("assignments_by_annotator", "annotator_id", "status"),
    sa.Index("assignments_by_status", "status", "shown_at"))
_open = assignments.c.status == "open"
sa.Index("one_open_assignment_per_annotator", assignments.c.annotator_id, unique=True,
         sqlite_where=_open, postgresql_where=_open)
labels = sa.Table(
    "labels", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("assignment_id", sa.Integer, sa.ForeignKey("assignments.id"), nullable=False,
              unique=True),
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id"), nullable=False),
    sa.Column("annotator_id", sa.String(64), sa.ForeignKey("annotators.id"), nullable=False),
    sa.Column("ranks", sa.Text, nullable=False),  # JSON: rank of each response, 0 = best
    sa.Column("ratings", sa.Text, nullable=False),  # JSON: Likert rating of each response or null
    sa.Column("rationale", sa.Text, nullable=False),
    sa.Column("shown_at", sa.Float, nullable=False),
    sa.Column("submitted_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=True),
    sa.UniqueConstraint("task_id", "annotator_id", name="one_label_per_annotator"),
    sa.Index("labels_by_annotator", "annotator_id"))


def _sqlite_setup(engine: sa.Engine) -> None:
    """WAL journal, fsync on every commit, foreign keys, and write transactions that take the
    write lock when they begin (`BEGIN IMMEDIATE`), so two writers never deadlock upgrading a
    read lock; readers use plain `BEGIN` and never block in WAL mode."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # SQLAlchemy's begin hook below emits BEGIN
        cur = dbapi_conn.cursor()
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON",
                       "busy_timeout=30000"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):
        write = conn.get_execution_options().get("write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def open_database(url: str) -> sa.Engine:
    """An engine for `url` with every table created; SQLite is set up as `_sqlite_setup` says.
    A URL SQLAlchemy cannot use raises ValueError (its credentials left out of the message)."""
    try:
        engine = sa.create_engine(url, pool_pre_ping=True, future=True)
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as e:
        raise ValueError(f"database URL {url.split('@')[-1]!r} (credentials not shown): "
                         f"{e}") from None
    if engine.dialect.name == "sqlite":
        _sqlite_setup(engine)
    metadata.create_all(engine)
    _add_new_columns(engine)
    return engine


def _add_new_columns(engine: sa.Engine) -> None:
    """Add the nullable columns a table of an older database lacks (create_all makes missing
    tables only). Two servers starting at once may both try: a column that appeared meanwhile
    is fine."""
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in have or not column.nullable:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as c:
                    c.exec_driver_sql(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" '
                                      f"{kind}")
            except sa.exc.DBAPIError:
                fresh = sa.inspect(engine)
                if column.name not in {c["name"] for c in fresh.get_columns(table.name)}:
                    raise
