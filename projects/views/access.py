"""Loading a project for a dashboard page: through the user's scoped selector, with the
membership of the project's account deciding what they may do there."""

from collections.abc import Callable
from functools import wraps

from django.http import Http404, HttpRequest
from django.shortcuts import get_object_or_404

from accounts.access import Need, member_view
from accounts.models import Membership
from accounts.selectors import membership_in
from projects.errors import Gone
from projects.selectors import projects_visible_to


def load_project(request: HttpRequest, kwargs: dict) -> tuple[Membership, dict]:
    project = get_object_or_404(
        projects_visible_to(request.user), public_id=kwargs.pop("project_id")
    )
    membership = membership_in(user=request.user, account=project.account)
    return membership, {"project": project, **kwargs}


def project_view(*, read: Need = Need.READ, write: Need = Need.MANAGE) -> Callable:
    """`member_view` for a page about one project. A change that finds the project (or the
    upstream it names) deleted while it waited for the project's lock is a 404, the answer
    the page gets a moment later."""

    def decorator(view: Callable) -> Callable:
        @member_view(read=read, write=write, load=load_project)
        @wraps(view)
        def wrapper(request: HttpRequest, membership: Membership, **objects):
            try:
                return view(request, membership, **objects)
            except Gone as gone:
                raise Http404(str(gone)) from gone

        return wrapper

    return decorator
