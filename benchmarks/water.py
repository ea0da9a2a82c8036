"""Liquid-water boxes for benchmarks (see allscaip.reference.water)."""

from allscaip.reference.water import water_box

__all__ = ["water_box"]
