"""The dashboard's static files, served by the web process itself under ASGI."""

import asyncio
import warnings

import httpx
from django.conf import settings
from django.templatetags.static import static


def fetch(path: str, **headers: str) -> tuple[httpx.Response, list[warnings.WarningMessage]]:
    from reqrun.asgi import application

    async def get():
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
            return await client.get(path, headers=headers)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        response = asyncio.run(get())
    return response, caught


def test_a_static_file_is_served_whole_without_django_s_sync_iterator_fallback():
    """Django reads a synchronous streaming body whole, in a thread, and warns each time;
    the file is handed to it as an asynchronous stream instead."""
    response, caught = fetch(static("css/app.css"))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/css")
    assert response.content == (settings.BASE_DIR / "static" / "css" / "app.css").read_bytes()
    assert not [w for w in caught if "synchronous iterators" in str(w.message)]


def test_a_conditional_request_for_an_unchanged_static_file_gets_304():
    first, _ = fetch(static("css/app.css"))
    again, caught = fetch(static("css/app.css"), **{"If-None-Match": first.headers["etag"]})

    assert again.status_code == 304
    assert again.content == b""
    assert not [w for w in caught if "synchronous iterators" in str(w.message)]


def test_a_static_file_is_served_through_a_synchronous_handler_too(client):
    response = client.get(static("js/app.js"), secure=True)

    assert response.status_code == 200
    assert (
        b"".join(response.streaming_content)
        == (settings.BASE_DIR / "static" / "js" / "app.js").read_bytes()
    )
