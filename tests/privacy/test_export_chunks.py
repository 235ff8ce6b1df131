"""A big export is stored and served in pieces: the worker writes the gzip stream in
encrypted chunks as it goes and the download reads them one at a time, so neither holds the
file whole, and no single column has to hold it (PostgreSQL refuses a value over 1 GB)."""

import asyncio
import io
import json
import logging
import secrets
from datetime import timedelta
from io import StringIO

import factory
import pytest
from cryptography.fernet import Fernet
from django.conf import settings as django_settings
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from core import encryption
from privacy import document, services
from privacy.models import AccountExport, AccountExportChunk
from projects.limits import set_plan
from tests.factories import RequestFactory
from tests.privacy.conftest import fill
from tests.privacy.test_export import EXPORT_URL, download_url, downloaded, request_and_build
from tests.test_static_files import fetch

pytestmark = pytest.mark.django_db

CHUNK_BYTES = 1024


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(services, "EXPORT_CHUNK_BYTES", CHUNK_BYTES)
    monkeypatch.setattr(document, "REQUEST_BATCH_SIZE", 50)


def busy(filled, requests: int = 200) -> None:
    """Enough requests (kept by Pro's retention) for the export to span many chunks. Their
    keys and models are random, so they compress little and the compressor gives out its
    blocks all along the build, as a real account's varied requests make it do."""
    set_plan(account=filled.account, plan_code="pro")
    RequestFactory.create_batch(
        requests,
        project=filled.project,
        api_key=filled.api_key,
        status="succeeded",
        idempotency_key=factory.LazyFunction(lambda: secrets.token_hex(120)),
        model=factory.LazyFunction(lambda: secrets.token_hex(100)),
    )


def whole_document(export: AccountExport) -> dict:
    """The export as one piece, written the way the single-column export was."""
    out = io.StringIO()
    document.write_export(
        account=export.account, out=out, now=export.started_at, on_progress=lambda percent: None
    )
    return json.loads(out.getvalue())


def stored_pieces(export: AccountExport) -> list[bytes]:
    chunks = AccountExportChunk.objects.filter(export=export).order_by("sequence")
    assert list(chunks.values_list("sequence", flat=True)) == list(range(chunks.count()))
    return [encryption.decrypt(content) for content in chunks.values_list("content", flat=True)]


def test_a_big_export_is_built_and_downloaded_in_chunks(
    alice_client, filled, small_chunks, monkeypatch
):
    busy(filled)
    record_progress = services.record_progress
    chunks_seen = []

    def chunks_so_far(**kwargs):  # what the database holds at each progress step
        record_progress(**kwargs)
        chunks_seen.append(AccountExportChunk.objects.count())

    monkeypatch.setattr(services, "record_progress", chunks_so_far)
    export = request_and_build(alice_client)
    expected = whole_document(export)  # before the download adds its audit event

    assert export.status == "ready"
    pieces = stored_pieces(export)
    # Chunks were written as the build went, each one full but the last: the worker never
    # held more than one chunk of the compressed file.
    assert len(pieces) >= 5
    assert chunks_seen[0] < chunks_seen[-1] and 0 < chunks_seen[-2] < len(pieces)
    assert {len(piece) for piece in pieces[:-1]} == {CHUNK_BYTES}
    assert 0 < len(pieces[-1]) <= CHUNK_BYTES

    data, _ = downloaded(alice_client, export)
    assert data == expected
    assert len(data["requests"]) == 201


def test_a_build_presumed_lost_adds_nothing_once_another_export_is_built(
    alice_client, filled, small_chunks, monkeypatch
):
    """Its worker was only slow: the build is failed under it and a new export built; the
    old build's later chunks are refused and it stops, the new export holds its own only."""
    busy(filled)
    alice_client.post(EXPORT_URL)
    lost = AccountExport.objects.get()
    record_progress = services.record_progress
    rebuilt = []

    def presumed_lost_half_way(**kwargs):
        record_progress(**kwargs)
        if kwargs["export_pk"] == lost.pk and kwargs["percent"] >= 50 and not rebuilt:
            assert AccountExportChunk.objects.filter(export=lost).exists()
            later = timezone.now() + services.BUILD_STALE_AFTER + timedelta(seconds=1)
            services.recover_exports(now=later)
            alice_client.post(EXPORT_URL)
            rebuilt.append(AccountExport.objects.get(status="pending"))
            services.build_export(export_pk=rebuilt[0].pk)

    monkeypatch.setattr(services, "record_progress", presumed_lost_half_way)

    assert services.build_export(export_pk=lost.pk) is None

    lost.refresh_from_db()
    assert lost.status == "failed" and lost.progress < 100
    assert not AccountExportChunk.objects.filter(export=lost).exists()
    [export] = rebuilt
    export.refresh_from_db()
    assert export.status == "ready"
    expected = whole_document(export)
    assert alice_client.get(download_url(lost)).status_code == 410
    data, _ = downloaded(alice_client, export)
    assert data == expected


def test_rotation_re_encrypts_every_chunk(alice_client, filled, small_chunks, settings):
    busy(filled, requests=20)
    export = request_and_build(alice_client)
    chunks = AccountExportChunk.objects.filter(export=export).count()
    assert chunks >= 2
    old_key = settings.REQRUN_ENCRYPTION_KEYS[0]
    new_key = Fernet.generate_key().decode()
    settings.REQRUN_ENCRYPTION_KEYS = [new_key, old_key]

    out = StringIO()
    call_command("rotate_encryption_keys", stdout=out)

    assert f"{chunks} export chunk(s)" in out.getvalue()
    settings.REQRUN_ENCRYPTION_KEYS = [new_key]  # the old key dropped
    data, _ = downloaded(alice_client, export)
    assert len(data["requests"]) == 21


def test_expiry_deletes_every_chunk(alice_client, filled, small_chunks):
    busy(filled, requests=20)
    export = request_and_build(alice_client)
    assert AccountExportChunk.objects.filter(export=export).count() >= 2
    AccountExport.objects.filter(pk=export.pk).update(expires_at=timezone.now())

    assert services.expire_exports() == 1

    assert not AccountExportChunk.objects.exists()
    assert alice_client.get(download_url(export)).status_code == 410


def test_a_ready_export_without_its_file_is_refused_not_sent_empty(alice_client, filled):
    """Ready but without chunks (its file went while the page was open, or it was built by
    code before chunks into the old column): a 410 asking for a new one, not an empty 200."""
    export = request_and_build(alice_client)
    AccountExportChunk.objects.filter(export=export).delete()

    response = alice_client.get(download_url(export))

    assert response.status_code == 410
    assert "Request a new one" in response.content.decode()


def old_content_column() -> list[tuple]:
    """The old file column as the database has it: (nullable, how many rows hold a value)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT is_nullable FROM information_schema.columns"
            " WHERE table_name = 'privacy_accountexport' AND column_name = 'content'"
        )
        columns = cursor.fetchall()
        if not columns:
            return []
        cursor.execute("SELECT count(*) FROM privacy_accountexport WHERE content IS NOT NULL")
        return [(columns[0][0], cursor.fetchone()[0])]


def test_the_old_file_column_is_emptied_in_one_release_and_dropped_in_the_next(
    transactional_db, alice_client, filled
):
    """A rolling deploy runs the previous release's processes beside the new one's, after
    `migrate`. Stop 24's release took the old column off the model but kept it, nullable
    and emptied, for the processes before it, which still selected it; this release drops
    it, as none of stop 24's processes name it. Going back puts it back, nullable."""
    chunks, emptied = (
        ("privacy", "0003_export_chunks"),
        ("privacy", "0004_remove_accountexport_content"),
    )
    executor = MigrationExecutor(connection)
    executor.migrate([chunks])
    try:
        OldExport = executor.loader.project_state([chunks]).apps.get_model(
            "privacy", "AccountExport"
        )
        OldExport.objects.create(
            account_id=filled.account.pk, status="expired", content=b"a previous process's file"
        )
        executor = MigrationExecutor(connection)
        executor.migrate([emptied])
        assert old_content_column() == [("YES", 0)]  # kept for the release before, emptied
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())

    assert old_content_column() == []
    assert "content" not in {field.name for field in AccountExport._meta.get_fields()}
    written = AccountExport.objects.get()
    assert written.status == "expired"
    written.delete()
    # This release's code builds, serves and expires without the column.
    export = request_and_build(alice_client)
    data, _ = downloaded(alice_client, export)
    assert data["account"]["id"] == filled.account.public_id
    AccountExport.objects.filter(pk=export.pk).update(expires_at=timezone.now())
    assert services.expire_exports() == 1
    assert alice_client.get(download_url(export)).status_code == 410

    executor = MigrationExecutor(connection)
    executor.migrate([emptied])
    try:
        assert old_content_column() == [("YES", 0)]  # back as the previous release had it
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())


def test_under_asgi_the_download_is_sent_as_it_is_read(
    transactional_db, alice, alice_account, client, small_chunks
):
    """Django's ASGI handler reads a synchronous streaming body whole before sending it (and
    warns): the download must hand it the chunks asynchronously."""
    filled = fill(alice_account, alice)
    busy(filled, requests=20)
    client.force_login(alice)
    export = request_and_build(client)
    expected = whole_document(export)
    session = client.cookies[django_settings.SESSION_COOKIE_NAME].value

    response, caught = fetch(
        download_url(export), Cookie=f"{django_settings.SESSION_COOKIE_NAME}={session}"
    )

    assert response.status_code == 200, response.text
    assert json.loads(response.content) == expected
    assert int(response.headers["content-length"]) == len(response.content)
    assert not [w for w in caught if "synchronous iterators" in str(w.message)]


@pytest.fixture
def asgi_application():
    """The ASGI application, imported before the test runs: the import sets Django up, and
    so its logging, again, which would drop caplog's handler in the middle of the test."""
    from reqrun.asgi import application

    return application


def served_over_asgi(
    application, path: str, cookie: str, *, after_first_piece
) -> tuple[list[dict], Exception | None]:
    """GET `path` from `application` as the server would, calling `after_first_piece`
    (in a thread) once the first piece of the body is sent. Returns what the application
    sent and what it raised: the server then aborts the connection, so the client sees
    an incomplete transfer instead of the body's end."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"cookie", cookie.encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 443),
    }
    sent = []
    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive():
        if requests:
            return requests.pop()
        await asyncio.Event().wait()  # the client stays connected

    def in_a_thread_of_its_own():  # as the sweep would; its connection closed after
        try:
            after_first_piece()
        finally:
            connection.close()

    async def send(message):
        sent.append(message)
        if message["type"] == "http.response.body" and len(sent) == 2:
            await asyncio.to_thread(in_a_thread_of_its_own)

    async def serve() -> Exception | None:
        try:
            await application(scope, receive, send)
        except Exception as error:
            return error
        return None

    return sent, asyncio.run(serve())


def pooled_connections_in_use() -> int:
    stats = connection.pool.get_stats()
    return stats["pool_size"] - stats["pool_available"]


def test_a_download_cut_by_expiry_fails_rather_than_looking_complete(
    transactional_db, alice, alice_account, client, small_chunks, asgi_application, caplog
):
    """The sweep expires the export (its chunks deleted) while its download runs: the
    download stops with an error the server turns into an aborted transfer, shorter than
    the Content-Length it announced, never a clean end of a truncated file."""
    filled = fill(alice_account, alice)
    busy(filled, requests=20)
    client.force_login(alice)
    export = request_and_build(client)
    chunks = AccountExportChunk.objects.filter(export=export).count()
    assert chunks >= 2
    session = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    in_use = pooled_connections_in_use()

    with caplog.at_level(logging.WARNING, logger="privacy.services"):
        sent, raised = served_over_asgi(
            asgi_application,
            download_url(export),
            f"{django_settings.SESSION_COOKIE_NAME}={session}",
            after_first_piece=lambda: services.expire_exports(now=export.expires_at),
        )

    start, *bodies = sent
    assert start["status"] == 200
    assert isinstance(raised, services.ExportCut), raised
    assert not [body for body in bodies if not body.get("more_body")]  # never the body's end
    served = b"".join(body["body"] for body in bodies)
    assert dict(start["headers"])[b"Content-Length"] == str(export.size_bytes).encode()
    assert 0 < len(served) < export.size_bytes
    [cut] = [r for r in caplog.records if r.getMessage() == "export download cut"]
    assert (cut.export_id, cut.chunks_served, cut.chunks) == (export.public_id, 1, chunks)
    # The request's database connection went back to the pool, though Django's handler
    # sends no request_finished when a body fails.
    assert pooled_connections_in_use() == in_use
