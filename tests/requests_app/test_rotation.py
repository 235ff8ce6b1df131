import threading
from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection, transaction

from core import encryption
from projects.upstreams import provider_key_of, set_provider_key
from requests_app.engine.accept import rotate_request_bodies
from requests_app.models import Request
from tests.factories import ProjectFactory, RequestFactory

pytestmark = pytest.mark.django_db


def raw_column(table: str, column: str, pk: int) -> bytes:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE id = %s", [pk])  # noqa: S608
        return bytes(cursor.fetchone()[0])


def test_rotation_lets_the_old_key_be_dropped(settings):
    old_key = settings.REQRUN_ENCRYPTION_KEYS[0]
    project = ProjectFactory()
    set_provider_key(project=project, provider_key="sk-live-rotation-secret")
    request = Request.objects.create(
        account=project.account,
        project=project,
        endpoint="/v1/chat/completions",
        body_sha256="0" * 64,
        request_body=encryption.encrypt(b'{"prompt": "rotate me"}'),
        response_body=encryption.encrypt(b'{"answer": 42}'),
        deadline_at=project.created_at,
        max_attempts=1,
    )
    assert b"rotate me" not in raw_column("requests_app_request", "request_body", request.pk)

    new_key = Fernet.generate_key().decode()
    settings.REQRUN_ENCRYPTION_KEYS = [new_key, old_key]
    out = StringIO()
    call_command("rotate_encryption_keys", stdout=out)
    assert "1 provider key(s) and 1 request record(s) and 0 export chunk(s)" in out.getvalue()

    settings.REQRUN_ENCRYPTION_KEYS = [new_key]
    project.refresh_from_db()
    request.refresh_from_db()
    assert provider_key_of(project) == "sk-live-rotation-secret"
    assert encryption.decrypt(request.request_body) == b'{"prompt": "rotate me"}'
    assert encryption.decrypt(request.response_body) == b'{"answer": 42}'


@pytest.mark.django_db(transaction=True)
def test_a_row_locked_during_rotation_is_waited_for_not_skipped(settings):
    old_key = settings.REQRUN_ENCRYPTION_KEYS[0]
    project = ProjectFactory()
    busy = RequestFactory(project=project, request_body=encryption.encrypt(b"busy"))
    settings.REQRUN_ENCRYPTION_KEYS = [Fernet.generate_key().decode(), old_key]
    locked, release = threading.Event(), threading.Event()

    def worker_holding_the_row():  # e.g. a worker concluding an attempt on it
        try:
            with transaction.atomic():
                Request.objects.select_for_update().get(pk=busy.pk)
                locked.set()
                release.wait(timeout=10)
        finally:
            connection.close()

    holder = threading.Thread(target=worker_holding_the_row)
    holder.start()
    assert locked.wait(timeout=10)
    threading.Timer(0.5, release.set).start()

    assert rotate_request_bodies() == 1
    holder.join(timeout=10)

    settings.REQRUN_ENCRYPTION_KEYS = settings.REQRUN_ENCRYPTION_KEYS[:1]
    busy.refresh_from_db()
    assert encryption.decrypt(busy.request_body) == b"busy"
