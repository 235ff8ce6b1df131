"""The dashboard's request and usage pages, the selectors that feed them, and the docs."""
