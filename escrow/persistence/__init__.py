"""Storage: SQLAlchemy Core tables, engines, transactions. The schema changes only through Alembic."""
