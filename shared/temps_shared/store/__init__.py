"""Control-plane PostgreSQL: pool, migrations and repositories."""
