"""AllScAIP-MD: the AllScAIP interatomic potential for production molecular dynamics."""

__version__ = "0.1.0"
