"""cachesvc: a PostgreSQL-backed cache service for AI-generated content."""

__version__ = "0.1.0"
