"""A project's upstreams: add, edit (base URL, provider key, model map), reorder, disable
and remove. Owners and admins change them; members read them on the project page."""

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from accounts.access import Need, client_ip
from projects import errors, upstreams
from projects.forms import UpstreamAddForm, UpstreamEditForm
from projects.selectors import upstreams_of
from projects.views.access import project_view
from projects.views.projects import settings_page


def _upstream(project, name):
    return get_object_or_404(upstreams_of(project), name=name)


def _back(project):
    return redirect("project-detail", project_id=project.public_id)


@project_view()
@require_POST
def upstream_add(request, membership, project):
    form = UpstreamAddForm(request.POST)
    if form.is_valid():
        upstream = form.submit(
            upstreams.add_upstream,
            field="base_url",
            project=project,
            name=form.cleaned_data["name"],
            base_url=form.cleaned_data["base_url"],
            provider_key=form.cleaned_data["provider_key"],
            model_map=form.cleaned_data["model_map"],
            actor=request.user,
            ip_address=client_ip(request),
        )
        if upstream:
            messages.success(request, f"Upstream “{upstream.name}” added.")
            if not upstream.has_provider_key:
                messages.warning(
                    request, f"“{upstream.name}” has no provider key yet: edit it to add one."
                )
            return _back(project)
    return settings_page(request, project, upstream_add_form=form)


@project_view(read=Need.MANAGE)
def upstream_edit(request, membership, project, upstream_name):
    upstream = _upstream(project, upstream_name)
    had_key = upstream.has_provider_key
    form = UpstreamEditForm(request.POST or None, upstream=upstream)
    if request.method == "POST" and form.is_valid():
        saved = form.submit(
            upstreams.update_upstream,
            field="base_url",
            upstream=upstream,
            base_url=form.cleaned_data["base_url"],
            model_map=form.cleaned_data["model_map"],
            provider_key=form.cleaned_data["provider_key"],
            actor=request.user,
            ip_address=client_ip(request),
        )
        if saved:
            key = (
                f"; its provider key ends in …{saved.provider_key_last4}"
                if saved.has_provider_key
                else ""
            )
            messages.success(request, f"Upstream “{saved.name}” saved{key}.")
            if had_key and not saved.has_provider_key:
                messages.warning(
                    request,
                    f"“{saved.name}” moved to another host, so its stored provider key was "
                    "removed. Enter the key for the new host to send requests there again.",
                )
            return _back(project)
        upstream.refresh_from_db()  # nothing was saved; show what is stored
    context = {"project": project, "upstream": upstream, "form": form}
    return render(request, "projects/upstream_edit.html", context)


@project_view()
@require_POST
def provider_key_remove(request, membership, project, upstream_name):
    upstream = _upstream(project, upstream_name)
    upstreams.remove_upstream_key(
        upstream=upstream, actor=request.user, ip_address=client_ip(request)
    )
    messages.success(
        request,
        f"Provider key of “{upstream.name}” removed. Requests cannot use this upstream until "
        "you add one again.",
    )
    return _back(project)


@project_view()
@require_POST
def upstream_move(request, membership, project, upstream_name):
    upstream = _upstream(project, upstream_name)
    offset = {"up": -1, "down": 1}.get(request.POST.get("direction", ""))
    if offset is None:
        messages.error(request, "Choose up or down.")
        return _back(project)
    upstreams.move_upstream(
        upstream=upstream, offset=offset, actor=request.user, ip_address=client_ip(request)
    )
    messages.success(request, f"Upstream “{upstream.name}” moved {request.POST['direction']}.")
    return _back(project)


def _refused(request, project, service, **kwargs) -> bool:
    try:
        service(**kwargs, actor=request.user, ip_address=client_ip(request))
    except errors.UpstreamRefused as error:
        messages.error(request, str(error))
        return True
    return False


@project_view()
@require_POST
def upstream_enabled(request, membership, project, upstream_name):
    upstream = _upstream(project, upstream_name)
    enabled = request.POST.get("enabled") == "on"
    if not _refused(
        request, project, upstreams.set_upstream_enabled, upstream=upstream, enabled=enabled
    ):
        state = "enabled" if enabled else "disabled: requests skip it"
        messages.success(request, f"Upstream “{upstream.name}” {state}.")
    return _back(project)


@project_view()
@require_POST
def upstream_remove(request, membership, project, upstream_name):
    upstream = _upstream(project, upstream_name)
    if not _refused(request, project, upstreams.remove_upstream, upstream=upstream):
        messages.success(request, f"Upstream “{upstream.name}” and its provider key removed.")
    return _back(project)
