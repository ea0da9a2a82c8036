"""AllScAIP-MD: the AllScAIP interatomic potential for production molecular dynamics."""

__version__ = "0.1.0"
__all__ = ["AllScAIPCalculator", "load_model"]


def __getattr__(name):
    # Lazy: `import allscaip` stays cheap; ASE and the model load on first use.
    if name == "AllScAIPCalculator":
        from allscaip.calculator import AllScAIPCalculator

        return AllScAIPCalculator
    if name == "load_model":
        from allscaip.io import load_model

        return load_model
    raise AttributeError(f"module 'allscaip' has no attribute {name!r}")
