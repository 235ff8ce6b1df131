"""The /v1 HTTP surface: views, header parsing, waiting for an answer, relaying streams."""
