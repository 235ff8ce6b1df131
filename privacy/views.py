"""Dashboard pages for an account's data rights, owners only: export it, delete it."""

from collections.abc import AsyncIterator, Iterator

from allauth.core import ratelimit
from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth import logout
from django.core.handlers.asgi import ASGIRequest
from django.db import close_old_connections
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from accounts.access import Need, client_ip, member_view
from accounts.models import Account, Membership
from accounts.selectors import membership_in
from privacy import deletion, services
from privacy.forms import DeleteAccountForm
from privacy.models import AccountExport
from privacy.selectors import deletion_summary, exports_visible_to, recent_exports_of


def _export_page(
    request: HttpRequest, account: Account, *, unavailable: str = "", status: int = 200
) -> HttpResponse:
    exports = list(recent_exports_of(account))
    context = {
        "account": account,
        "exports": exports,
        "in_progress": next((export for export in exports if export.in_progress), None),
        "unavailable": unavailable,
    }
    return render(request, "privacy/export.html", context, status=status)


@member_view(read=Need.OWN, write=Need.OWN)
def export_page(request: HttpRequest, membership: Membership) -> HttpResponse:
    if request.method != "POST":
        return _export_page(request, membership.account)
    try:
        export, created = services.request_export(
            account=membership.account,
            actor=request.user,
            site_url=request.build_absolute_uri("/"),
            ip_address=client_ip(request),
        )
    except services.ExportUnavailable as error:  # deleted meanwhile: gone, as for anyone
        raise Http404(str(error)) from error
    if created:
        messages.success(request, "Export requested. We will email you when it is ready.")
    else:
        messages.info(
            request, "An export is already being prepared; we will email you when it is ready."
        )
    return redirect("privacy-export")


async def _read_in_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Each piece read (from the database, decrypted, decompressed) in the request's thread,
    off the event loop. Under ASGI, Django reads a synchronous body whole before sending
    it: an export's would be held in memory in full.

    A failure midway (services.ExportCut) goes on to the server, which aborts the transfer.
    Django's handler then neither closes the response nor sends `request_finished`, so the
    request's database connection is handed back to the pool here, or it would never be."""
    read = sync_to_async(next)
    try:
        while (piece := await read(chunks, None)) is not None:
            yield piece
    except Exception:
        await sync_to_async(close_old_connections)()
        raise


def load_export(request: HttpRequest, kwargs: dict) -> tuple[Membership, dict]:
    export = get_object_or_404(exports_visible_to(request.user), public_id=kwargs["export_id"])
    return membership_in(user=request.user, account=export.account), {"export": export}


@member_view(read=Need.OWN, write=Need.OWN, load=load_export)
def export_download(
    request: HttpRequest, membership: Membership, export: AccountExport
) -> HttpResponse:
    try:
        chunks = services.open_export(
            export=export, actor=request.user, ip_address=client_ip(request)
        )
    except services.ExportUnavailable as error:
        status = 409 if export.in_progress else 410
        return _export_page(request, export.account, unavailable=str(error), status=status)
    if isinstance(request, ASGIRequest):  # the handler that will send the body
        chunks = _read_in_thread(chunks)
    response = StreamingHttpResponse(chunks, content_type="application/json")
    # What the build wrote, uncompressed: exactly the bytes sent. A download cut short (see
    # services.ExportCut) is then plainly short to any client, not only to one that notices
    # the connection was aborted.
    if export.size_bytes is not None:  # set with the status ready
        response["Content-Length"] = export.size_bytes
    filename = f"reqrun-export-{export.account.public_id}-{export.created_at:%Y%m%d}.json"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _close(request: HttpRequest, membership: Membership, form: DeleteAccountForm) -> bool:
    """Try to delete the account from a valid form; on refusal the form says why."""
    if not ratelimit.consume(request, action="reauthenticate", user=request.user):
        form.add_error("password", "Too many attempts. Wait a minute, then try again.")
        return False
    try:
        closed = deletion.close_account(
            membership=membership,
            password=form.cleaned_data["password"],
            ip_address=client_ip(request),
        )
    except deletion.WrongPassword as error:
        form.add_error("password", str(error))
        return False
    except deletion.DeletionRefused as error:
        form.add_error(None, str(error))
        return False
    logout(request)
    messages.success(
        request,
        f"The account {membership.account.name} was deleted and you are signed out. "
        + (
            "Your login was deleted too."
            if closed.login_deleted
            else "Your login is kept for your other accounts."
        ),
    )
    return True


@member_view(read=Need.OWN, write=Need.OWN)
def delete_account(request: HttpRequest, membership: Membership) -> HttpResponse:
    form = DeleteAccountForm(request.POST or None)
    if request.method == "POST" and form.is_valid() and _close(request, membership, form):
        return redirect("home")
    context = {
        "account": membership.account,
        "form": form,
        "blocker": deletion.deletion_blocker(membership),
        "summary": deletion_summary(membership),
    }
    return render(
        request, "privacy/delete_account.html", context, status=400 if form.errors else 200
    )
