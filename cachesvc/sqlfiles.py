"""SQL bodies under ``sql/``, loaded by exact versioned name.

A file is named ``<object>.v<N>.sql`` and is never edited once a migration has loaded it:
a new version of an object is a new file and a new migration, so upgrading or downgrading
to any revision always recreates exactly what that revision meant.
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def path(name: str) -> Path:
    return SQL_DIR / name


def read(name: str) -> str:
    file = path(name)
    if not file.is_file():
        raise FileNotFoundError(f"migration asks for sql/{name}, which does not exist")
    return file.read_text()


def execute(sql_text: str) -> None:
    """Run SQL text inside the migration's transaction, verbatim.

    It goes straight to the psycopg connection with no parameters, so ``%`` in function
    bodies (``format('%I', …)``) is not taken for a placeholder, and several statements
    may share one file.
    """
    op.get_bind().connection.driver_connection.execute(sql_text)


def run(name: str) -> None:
    execute(read(name))
