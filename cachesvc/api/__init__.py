"""The HTTP service."""

from cachesvc.api.app import create_app

__all__ = ["create_app"]
