"""Django's PostgreSQL backend, with a pool that never hands out a connection the server has
closed (`base.py`). Named in DATABASES["default"]["ENGINE"]."""
