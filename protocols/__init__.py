"""Liquid-property protocols (installed as ``allscaip.protocols``)."""
