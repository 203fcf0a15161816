"""One router per resource under ``/api/v1``."""

__all__: list[str] = []
