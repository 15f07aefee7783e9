"""The package version, in a module of its own: any module may import it without importing the package's
public API (``detflow/__init__.py`` imports the runtime)."""

__version__ = "0.1.0"
