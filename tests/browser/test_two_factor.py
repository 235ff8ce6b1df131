"""Two-factor sign-in in a real browser: turned on from the dashboard on a phone with
JavaScript off, then used to sign in again."""

import base64
import hashlib
import hmac
import re
import struct
import time

import pytest

from accounts.models import Membership
from tests.factories import PASSWORD, AccountFactory, MembershipFactory, UserFactory

# The first browser test may include installing Chromium through apt-get.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

PHONE = 375
PERIOD = 30


def totp(secret: str, counter: int) -> str:
    """RFC 6238 as an authenticator app computes it: HMAC-SHA1, six digits, 30 s steps."""
    key = base64.b32decode(secret.replace(" ", "").upper())
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF
    return f"{value % 10**6:06d}"


def fresh_counter() -> int:
    """A time step with a few seconds left in it: a code typed at the very end of its step
    could expire in flight."""
    while True:
        now = time.time()
        counter = int(now // PERIOD)
        if PERIOD - now % PERIOD > 3:
            return counter
        time.sleep(0.5)


@pytest.fixture
def member(transactional_db):
    user = UserFactory(email="fay@example.com")
    account = AccountFactory(name="Fay's workspace")
    MembershipFactory(user=user, account=account, role=Membership.Role.OWNER)
    return user


def sign_in_with_password(visitor, email: str) -> None:
    visitor.open("/accounts/login/")
    visitor.page.get_by_label(re.compile(r"^Email:?$")).fill(email)
    visitor.page.get_by_label(re.compile(r"^Password:?$")).fill(PASSWORD)
    visitor.page.get_by_role("button", name="Sign In").click()


def test_turn_on_two_factor_then_sign_in_with_it(browser, app_server, artifacts, member):
    from tests.browser.conftest import Visitor

    context = browser.new_context(
        java_script_enabled=False, viewport={"width": PHONE, "height": 800}
    )
    try:
        visitor = Visitor(context.new_page(), app_server.url, artifacts)
        page = visitor.page
        sign_in_with_password(visitor, "fay@example.com")
        page.wait_for_url("**/app/")

        # The account page offers it; allauth's pages take it from there.
        visitor.open("/app/account/")
        assert page.get_by_text("Off", exact=True).is_visible()
        page.get_by_role("link", name="Set up two-factor sign-in").click()
        page.wait_for_url("**/accounts/2fa/")
        visitor.shot("two-factor-index")
        visitor.assert_fits(PHONE)
        page.get_by_role("link", name="Activate").click()

        # Adding an authenticator asks for the password again.
        page.wait_for_url(re.compile(r".*/accounts/reauthenticate/.*"))
        visitor.shot("confirm-password")
        visitor.assert_fits(PHONE)
        page.get_by_label(re.compile(r"^Password:?$")).fill(PASSWORD)
        page.get_by_role("button", name="Confirm").click()

        # Nothing is scanned: the secret is on the page, as an app would read it from the QR.
        page.wait_for_url("**/accounts/2fa/totp/activate/")
        visitor.shot("activate")
        visitor.assert_fits(PHONE)
        secret = page.locator("#authenticator_secret").inner_text().strip()
        assert re.fullmatch(r"[A-Z2-7]{32}", secret)
        counter = fresh_counter()
        page.get_by_label("Authenticator code").fill(totp(secret, counter))
        page.get_by_role("button", name="Activate").click()

        # Recovery codes come with it.
        page.wait_for_url("**/accounts/2fa/recovery-codes/")
        visitor.shot("recovery-codes")
        visitor.assert_fits(PHONE)
        codes = page.get_by_label("Unused codes").input_value().split()
        assert len(codes) == 10
        visitor.open("/app/account/")
        assert page.get_by_text("On", exact=True).is_visible()
        visitor.shot("account-two-factor-on")

        # Signing out and in again: the password alone is not enough.
        page.get_by_role("button", name="Sign out").click()
        sign_in_with_password(visitor, "fay@example.com")
        page.wait_for_url("**/accounts/2fa/authenticate/")
        visitor.shot("enter-code")
        visitor.assert_fits(PHONE)
        visitor.open("/app/")
        assert page.url.endswith("/accounts/2fa/authenticate/")

        # One of the recovery codes shown above opens it (a TOTP code at this step is
        # covered in tests/accounts; the activation's own code is spent, and waiting for the
        # next step cost up to 30 s here).
        page.get_by_label("Code").fill(codes[0])
        page.get_by_role("button", name="Sign In").click()
        page.wait_for_url("**/app/")
        visitor.shot("signed-in-with-code")
        assert visitor.errors == []
    finally:
        context.close()
