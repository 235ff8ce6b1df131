"""The private-address guard sees through IPv6 forms that reach an IPv4 address: NAT64,
6to4, IPv4-compatible and -mapped addresses, and site-local IPv6, both when the URL is saved
and at connect time."""

import pytest
from django.urls import reverse

from projects.models import Project
from projects.upstream_guard import UpstreamNotAllowed, check_address, validate_upstream_url

pytestmark = pytest.mark.django_db

REFUSED = [
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (cloud metadata)
    "64:ff9b:1::808:808",  # local-use NAT64 (RFC 8215): the operator's own network
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:c0a8:101::",  # 6to4 of 192.168.1.1
    "::10.0.0.1",  # IPv4-compatible
    "::127.0.0.1",
    "::ffff:10.0.0.1",  # IPv4-mapped
    "::ffff:169.254.169.254",
    "fec0::1",  # site-local
    "fed0:1::5",
]
PUBLIC = ["2606:4700:4700::1111", "2001:4860:4860::8888", "64:ff9b::808:808"]


@pytest.fixture(autouse=True)
def guard_on(settings):
    settings.REQRUN_ALLOW_PRIVATE_UPSTREAMS = False


@pytest.mark.parametrize("address", REFUSED)
def test_ipv6_forms_of_private_addresses_are_refused(address):
    with pytest.raises(UpstreamNotAllowed, match="private, loopback or link-local"):
        check_address(address)  # what the executor checks on the peer it connected to
    with pytest.raises(UpstreamNotAllowed, match="private, loopback or link-local"):
        validate_upstream_url(f"https://[{address}]/v1")


@pytest.mark.parametrize("address", PUBLIC)
def test_public_ipv6_passes(address):
    check_address(address)
    assert validate_upstream_url(f"https://[{address}]/v1") == f"https://[{address}]/v1"


def test_the_settings_page_refuses_a_nat64_upstream(alice_client, alice_project):
    response = alice_client.post(
        reverse("upstream-edit", args=[alice_project.public_id, "primary"]),
        {"base_url": "https://[64:ff9b::a9fe:a9fe]/v1"},
    )
    assert response.status_code == 200
    assert "private, loopback or link-local" in response.content.decode()
    assert Project.objects.get(pk=alice_project.pk).upstreams.get().base_url == (
        "https://api.openai.com/v1"
    )


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9001/v1?", "http://127.0.0.1:9001/v1#", "http://127.0.0.1:9001/v1?#"]
)
def test_an_empty_query_or_fragment_mark_is_refused_like_a_query(url, settings):
    """urlsplit reads `…/v1?` as no query at all, but the mark stayed in the stored URL, and
    every call went to `…/v1?/chat/completions`."""
    settings.REQRUN_ALLOW_PRIVATE_UPSTREAMS = True  # the check comes before any address check
    with pytest.raises(UpstreamNotAllowed, match="must not contain credentials, a query"):
        validate_upstream_url(url)
