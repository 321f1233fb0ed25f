"""Async engine construction and schema migration (Alembic), for PostgreSQL and SQLite alike."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from orchestrator.settings import DatabaseSettings

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def create_engine(settings: DatabaseSettings) -> AsyncEngine:
    if settings.is_sqlite:
        engine = create_async_engine(settings.url, connect_args={"timeout": 30})
        _tune_sqlite(engine)
        return engine
    return create_async_engine(
        settings.url,
        pool_size=settings.pool_size,
        max_overflow=settings.pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: object, _record: object) -> None:
        cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
        # WAL lets the status reads run beside the single writer; FK checks are off by default.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()


def _alembic_config(url: str) -> object:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` with Alembic over the given engine's connection."""
    from alembic import command

    cfg = _alembic_config(engine.url.render_as_string(hide_password=False))

    def _upgrade(connection: Connection) -> None:
        cfg.attributes["connection"] = connection  # type: ignore[attr-defined]
        command.upgrade(cfg, revision)  # type: ignore[arg-type]

    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    from alembic import command

    cfg = _alembic_config(engine.url.render_as_string(hide_password=False))

    def _down(connection: Connection) -> None:
        cfg.attributes["connection"] = connection  # type: ignore[attr-defined]
        command.downgrade(cfg, revision)  # type: ignore[arg-type]

    async with engine.begin() as conn:
        await conn.run_sync(_down)
