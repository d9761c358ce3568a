"""Lab tasks: synthetic data generators with programmatic gold rewards (sentiment, arithmetic)."""

from alignlab.lab.tasks import arithmetic, sentiment

__all__ = ["arithmetic", "sentiment"]
