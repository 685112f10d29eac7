"""clipperd's admin client (Clipper's clipper_admin, for clipperd)."""

from clipperd_admin.applications import AdminError, ApplicationAdmin

__all__ = ["AdminError", "ApplicationAdmin"]
