"""Django's PostgreSQL backend, never handing out a pooled connection the server has closed
(`base.py`). Named in DATABASES["default"]["ENGINE"]."""
