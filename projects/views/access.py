"""Loading a project for a dashboard page: through the user's scoped selector, with the
membership of the project's account deciding what they may do there."""

from functools import partial

from django.http import HttpRequest
from django.shortcuts import get_object_or_404

from accounts.access import member_view
from accounts.models import Membership
from accounts.selectors import membership_in
from projects.selectors import projects_visible_to


def load_project(request: HttpRequest, kwargs: dict) -> tuple[Membership, dict]:
    project = get_object_or_404(
        projects_visible_to(request.user), public_id=kwargs.pop("project_id")
    )
    membership = membership_in(user=request.user, account=project.account)
    return membership, {"project": project, **kwargs}


project_view = partial(member_view, load=load_project)
