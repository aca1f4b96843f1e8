"""Energy and carbon accounting (no Celery here)."""

from carbonedge.carbon.power import RAM_WATTS_PER_GB, PowerModel, carbon_grams

__all__ = ["RAM_WATTS_PER_GB", "PowerModel", "carbon_grams"]
