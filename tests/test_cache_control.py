"""Signed-in pages show prompts, answers, keys and billing: neither the browser nor a proxy
may keep a copy. Public pages and static files stay cacheable."""

import pytest
from django.templatetags.static import static
from django.urls import reverse

from core import encryption
from privacy import services as privacy_services
from tests.conftest import PUBLIC_PAGES
from tests.factories import ApiKeyFactory, AttemptFactory, ProjectFactory, RequestFactory

pytestmark = pytest.mark.django_db


def signed_in_pages(alice, alice_account) -> list[str]:
    project = ProjectFactory(account=alice_account, name="Chatbot")
    ApiKeyFactory(project=project, actor=alice)
    record = RequestFactory(
        project=project,
        status="succeeded",
        attempt_count=1,
        request_body=encryption.encrypt(b'{"messages": "a prompt"}'),
        response_body=encryption.encrypt(b'{"choices": "an answer"}'),
        response_status_code=200,
    )
    AttemptFactory(request=record, number=1)
    export, _ = privacy_services.request_export(
        account=alice_account, actor=alice, site_url="http://testserver/"
    )
    privacy_services.build_export(export_pk=export.pk)
    return [
        reverse("dashboard"),
        reverse("project-list"),
        reverse("project-detail", args=[project.public_id]),
        reverse("api-key-list", args=[project.public_id]),
        reverse("member-list"),
        reverse("account"),
        reverse("security-log"),
        reverse("request-list", args=[project.public_id]),
        reverse("request-detail", args=[record.public_id]),
        reverse("usage"),
        reverse("billing"),
        reverse("privacy-export"),
        reverse("privacy-export-download", args=[export.public_id]),
        reverse("privacy-delete-account"),
        reverse("account_email"),
        reverse("account_change_password"),
        reverse("mfa_index"),
        reverse("usersessions_list"),
    ]


def test_every_signed_in_page_says_no_store(client, alice, alice_account):
    pages = signed_in_pages(alice, alice_account)
    client.force_login(alice)

    responses = {url: client.get(url) for url in pages}

    assert {url: response.status_code for url, response in responses.items()} == dict.fromkeys(
        pages, 200
    )
    cacheable = [
        url
        for url, response in responses.items()
        if "no-store" not in response.get("Cache-Control", "")
    ]
    assert cacheable == []


def test_a_signed_in_404_says_no_store_too(client, alice_account, charlie):
    record = RequestFactory(project=ProjectFactory(account=alice_account))
    client.force_login(charlie)

    response = client.get(reverse("request-detail", args=[record.public_id]))

    assert response.status_code == 404
    assert "no-store" in response["Cache-Control"]


@pytest.mark.parametrize("url", PUBLIC_PAGES)
def test_public_pages_stay_cacheable(client, url):
    response = client.get(url)

    assert response.status_code == 200
    assert "no-store" not in response.get("Cache-Control", "")


def test_static_files_stay_cacheable_for_a_signed_in_user(client, alice):
    client.force_login(alice)

    response = client.get(static("css/app.css"))

    assert response.status_code == 200
    assert "no-store" not in response.get("Cache-Control", "")
