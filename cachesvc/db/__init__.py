"""The database layer: everything between a store's SQL and the server that runs it.

- ``pools``: the fixed-size, PgBouncer-safe connection pools and their start-up.
- ``transaction``: the one transaction runner and the request's time budget.
- ``errors`` and ``bounded``: what a failed call means, and awaiting work for a bounded time.
- ``lsn``: WAL positions (consistency tokens) parsed and formatted.
- ``replica``: the read replica's health and lag.
- ``routing``: which server answers a read, and the fallback to the primary.

``cachesvc.cache`` and ``cachesvc.features`` hold SQL and its mapping, on top of this.
"""
