"""The store's schema migrations (Alembic): ``env.py``, the revision template and
``versions/``. Run them through :mod:`store.migrate` (``collector store migrate``, or the start
of ``collector store run``); docs/store.md, "Schema migrations", says how to write one."""
