"""Dashboard pages for requests and usage, and the public docs (quickstart, API, errors).

Every request is fetched through a selector scoped to the user's memberships, so another
tenant's id is a 404. Bad filters or page links show the page with a message, never a 500.
"""

from django.conf import settings
from django.contrib import messages
from django.http import Http404, HttpRequest
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.access import member_view
from accounts.models import Membership
from accounts.selectors import current_membership, membership_in
from projects.limits import limits_for
from projects.selectors import has_provider_key, projects_of
from projects.views.access import project_view
from requests_app.api.responses import answer_has_body
from requests_app.api.schema import SCHEMA_URL, reference
from requests_app.dashboard import selectors
from requests_app.dashboard.forms import PROXIED_ENDPOINTS, RequestFilterForm
from requests_app.engine import cancel, retention
from requests_app.error_catalog import ERROR_CODES


def load_request(request: HttpRequest, kwargs: dict) -> tuple[Membership, dict]:
    record = selectors.request_for_user(request.user, kwargs.pop("request_id")).first()
    if record is None:
        raise Http404("No such request.")
    membership = membership_in(user=request.user, account=record.project.account)
    return membership, {"record": record, **kwargs}


request_view = member_view(load=load_request)


@member_view()
def requests_home(request, membership):
    """The sidebar's “Requests”: the first project's list, or where to make one."""
    project = projects_of(membership.account).first()
    if project is None:
        messages.info(request, "Requests belong to a project: create one first.")
        return redirect("project-list")
    return redirect("request-list", project_id=project.public_id)


@project_view()
def request_list(request, membership, project):
    form = RequestFilterForm(request.GET)
    form.is_valid()
    for problem in form.problems():
        messages.error(request, f"{problem} It was ignored.")
    filters = form.filters()
    page = selectors.request_page(selectors.filtered_requests(project, **filters), **form.cursor())
    context = {
        "project": project,
        "projects": projects_of(project.account),
        "form": form,
        "page": page,
        "filtered": any(filters.values()),
        "newer_link": form.page_link(before=page.newer) if page.newer else None,
        "older_link": form.page_link(after=page.older) if page.older else None,
        "any_requests": bool(page.requests) or selectors.has_requests(project),
        "has_provider_key": has_provider_key(project),
    }
    return render(request, "requests_app/request_list.html", context)


@request_view
def request_detail(request, membership, record):
    response_kept = retention.response_is_retained(record)
    context = {
        "project": record.project,
        "record": record,
        "timeline": selectors.attempt_timeline(record),
        "request_body": selectors.readable_body(
            record.request_body, request_id=record.public_id, stored="request_body"
        ),
        "response_body": selectors.readable_body(
            record.response_body, request_id=record.public_id, stored="response_body"
        )
        if response_kept
        else None,
        "response_kept": response_kept,
    }
    page = render(request, "requests_app/request_detail.html", context)
    if answer_has_body(request):
        retention.forget_shown_responses([record])  # zero retention: shown once, then gone
    return page


@request_view
@require_POST
def request_cancel(request, membership, record):
    if record.is_terminal:
        messages.info(request, f"This request already finished ({record.status}).")
    elif cancel.cancel_request(request=record):
        messages.success(
            request,
            "Cancel requested: a queued or retrying request stops now; a running attempt "
            "finishes, and no further attempt starts.",
        )
    return redirect("request-detail", request_id=record.public_id)


@member_view()
def usage(request, membership):
    account = membership.account
    context = {"report": selectors.usage_report(account), "limits": limits_for(account)}
    return render(request, "requests_app/usage.html", context)


# ----- docs (public) -----------------------------------------------------------------


def _docs_context(request) -> dict:
    membership = current_membership(request)
    return {
        "base_url": request.build_absolute_uri("/v1"),
        "schema_url": request.build_absolute_uri(SCHEMA_URL),
        "projects": list(projects_of(membership.account)) if membership else [],
    }


def docs_quickstart(request):
    return render(request, "pages/docs.html", _docs_context(request))


def docs_api(request):
    groups, components = reference()
    context = {**_docs_context(request), "groups": groups, "components": components}
    return render(request, "pages/docs/api.html", context)


def docs_errors(request):
    context = {**_docs_context(request), "error_codes": ERROR_CODES, "endpoints": PROXIED_ENDPOINTS}
    return render(request, "pages/docs/errors.html", context)


def docs_failover(request):
    breaker = {
        "failures": settings.REQRUN_BREAKER_FAILURES,
        "window": settings.REQRUN_BREAKER_WINDOW_SECONDS,
        "cooldown": settings.REQRUN_BREAKER_COOLDOWN_SECONDS,
        "cooldown_max": settings.REQRUN_BREAKER_COOLDOWN_MAX_SECONDS,
    }
    context = {**_docs_context(request), "breaker": breaker}
    return render(request, "pages/docs/failover.html", context)
