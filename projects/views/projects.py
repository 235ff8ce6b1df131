"""The dashboard home, the project list and one project's settings."""

from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.access import Need, client_ip, member_view
from projects import services
from projects.forms import ProjectForm, ProviderKeyForm, UpstreamForm
from projects.limits import limits_for
from projects.selectors import projects_of
from projects.views.access import project_view


@member_view()
def dashboard(request, membership):
    account = membership.account
    context = {"limits": limits_for(account), "projects": projects_of(account)}
    return render(request, "accounts/dashboard.html", context)


@member_view()
def project_list(request, membership):
    account = membership.account
    form = ProjectForm(request.POST or None)
    if form.is_valid():
        project = form.submit(
            services.create_project,
            field="name",
            account=account,
            name=form.cleaned_data["name"],
            actor=request.user,
            ip_address=client_ip(request),
        )
        if project:
            messages.success(
                request,
                f"Project “{project.name}” created. Add its provider key "
                "next, then create an API key.",
            )
            return redirect("project-detail", project_id=project.public_id)
    context = {"form": form, "projects": projects_of(account), "limits": limits_for(account)}
    return render(request, "projects/project_list.html", context)


def _settings_page(request, project, **forms):
    """The settings page with fresh forms, or the bound one that failed validation."""
    cap = limits_for(project.account).max_attempts
    context = {
        "project": project,
        "rename_form": forms.get("rename_form") or ProjectForm(initial={"name": project.name}),
        "upstream_form": forms.get("upstream_form")
        or UpstreamForm(project=project, max_attempts_cap=cap),
        "provider_key_form": forms.get("provider_key_form") or ProviderKeyForm(),
        "max_attempts_cap": cap,
    }
    return render(request, "projects/project_detail.html", context)


@project_view()
def project_detail(request, membership, project):
    return _settings_page(request, project)


@project_view()
@require_POST
def project_rename(request, membership, project):
    form = ProjectForm(request.POST)
    if form.is_valid() and form.submit(
        services.rename_project,
        field="name",
        project=project,
        name=form.cleaned_data["name"],
        actor=request.user,
        ip_address=client_ip(request),
    ):
        messages.success(request, f"Project renamed to “{project.name}”.")
        return redirect("project-detail", project_id=project.public_id)
    return _settings_page(request, project, rename_form=form)


@project_view()
@require_POST
def project_upstream(request, membership, project):
    had_key = project.has_provider_key
    cap = limits_for(project.account).max_attempts
    form = UpstreamForm(request.POST, project=project, max_attempts_cap=cap)
    if form.is_valid() and form.submit(
        services.update_upstream,
        field="upstream_base_url",
        project=project,
        base_url=form.cleaned_data["upstream_base_url"],
        max_attempts=form.cleaned_data["max_attempts"],
        attempt_timeout_seconds=form.cleaned_data["attempt_timeout_seconds"],
        deadline_seconds=form.cleaned_data["deadline_seconds"],
        zero_retention=form.cleaned_data["zero_retention"],
        provider_key=form.cleaned_data["provider_key"],
        actor=request.user,
        ip_address=client_ip(request),
    ):
        messages.success(request, "Upstream and retry policy saved.")
        if had_key and not project.has_provider_key:
            messages.warning(
                request,
                "The upstream's host changed, so the stored provider key was removed. "
                "Enter the key for the new host to send requests again.",
            )
        return redirect("project-detail", project_id=project.public_id)
    return _settings_page(request, project, upstream_form=form)


@project_view()
@require_POST
def provider_key_set(request, membership, project):
    replacing = project.has_provider_key
    form = ProviderKeyForm(request.POST)
    if form.is_valid() and form.submit(
        services.set_provider_key,
        field="provider_key",
        project=project,
        provider_key=form.cleaned_data["provider_key"],
        actor=request.user,
        ip_address=client_ip(request),
    ):
        verb = "replaced" if replacing else "saved"
        messages.success(
            request, f"Provider key {verb}, encrypted; it ends in …{project.provider_key_last4}."
        )
        return redirect("project-detail", project_id=project.public_id)
    return _settings_page(request, project, provider_key_form=form)


@project_view()
@require_POST
def provider_key_remove(request, membership, project):
    services.remove_provider_key(project=project, actor=request.user, ip_address=client_ip(request))
    messages.success(
        request, "Provider key removed. Requests to this project fail until you add one again."
    )
    return redirect("project-detail", project_id=project.public_id)


@project_view(read=Need.MANAGE)
def project_delete(request, membership, project):
    if request.method == "POST":
        services.delete_project(project=project, actor=request.user, ip_address=client_ip(request))
        messages.success(request, f"Project “{project.name}” and its API keys were deleted.")
        return redirect("project-list")
    return render(request, "projects/project_delete.html", {"project": project})
