"""Django's PostgreSQL backend, never handing out a pooled connection the server has closed
(`base.py`), and its pool's callers told at once when no connection can be opened
(`pool.py`). Named in DATABASES["default"]["ENGINE"]."""
