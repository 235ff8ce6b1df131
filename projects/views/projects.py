"""The dashboard home, the project list and one project's settings."""

from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from accounts.access import Need, client_ip, member_view
from projects import services
from projects.errors import ProjectBusy
from projects.forms import (
    FailoverPolicyForm,
    ProjectForm,
    ProjectRenameForm,
    RetryPolicyForm,
    UpstreamAddForm,
)
from projects.limits import limits_for
from projects.models import FailoverOn
from projects.selectors import projects_of, upstreams_of
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
                f"Project “{project.name}” created. Set its upstream and provider key "
                "next, then create an API key.",
            )
            return redirect("project-detail", project_id=project.public_id)
    context = {"form": form, "projects": projects_of(account), "limits": limits_for(account)}
    return render(request, "projects/project_list.html", context)


def failover_start(project, upstreams) -> str:
    """The upstream requests now start on when it is not the primary (the project does not
    return to the primary, and the last request succeeded on a usable fallback), else ""."""
    usable = [
        upstream.name for upstream in upstreams if upstream.enabled and upstream.has_provider_key
    ]
    current = project.failover_current
    if project.failover_return_to_primary or current not in usable[1:]:
        return ""
    return current


def settings_page(request, project, **forms):
    """The settings page with fresh forms, or the bound one that failed validation."""
    limits = limits_for(project.account)
    upstreams = list(upstreams_of(project))
    context = {
        "project": project,
        "upstreams": upstreams,
        "primary": next((upstream for upstream in upstreams if upstream.enabled), None),
        "upstreams_cap": limits.upstreams_per_project,
        "limits": limits,
        "rename_form": forms.get("rename_form")
        or ProjectRenameForm(initial={"name": project.name}),
        "policy_form": forms.get("policy_form")
        or RetryPolicyForm(project=project, max_attempts_cap=limits.max_attempts),
        "upstream_add_form": forms.get("upstream_add_form") or UpstreamAddForm(),
        "failover_form": forms.get("failover_form") or FailoverPolicyForm(project=project),
        "failover_labels": [
            label for value, label in FailoverOn.choices if value in project.failover_on
        ],
        "enabled_upstreams": sum(1 for upstream in upstreams if upstream.enabled),
        "failover_start": failover_start(project, upstreams),
        "max_attempts_cap": limits.max_attempts,
    }
    return render(request, "projects/project_detail.html", context)


@project_view()
def project_detail(request, membership, project):
    return settings_page(request, project)


@project_view()
@require_POST
def project_rename(request, membership, project):
    form = ProjectRenameForm(request.POST)
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
    return settings_page(request, project, rename_form=form)


@project_view()
@require_POST
def project_policy(request, membership, project):
    cap = limits_for(project.account).max_attempts
    form = RetryPolicyForm(request.POST, project=project, max_attempts_cap=cap)
    if form.is_valid() and form.submit(
        services.update_retry_policy,
        project=project,
        max_attempts=form.cleaned_data["max_attempts"],
        attempt_timeout_seconds=form.cleaned_data["attempt_timeout_seconds"],
        deadline_seconds=form.cleaned_data["deadline_seconds"],
        zero_retention=form.cleaned_data["zero_retention"],
    ):
        messages.success(request, "Retry policy saved.")
        return redirect("project-detail", project_id=project.public_id)
    return settings_page(request, project, policy_form=form)


@project_view()
@require_POST
def project_failover(request, membership, project):
    form = FailoverPolicyForm(request.POST, project=project)
    if form.is_valid() and form.submit(
        services.update_failover_policy,
        field="failover_on",
        project=project,
        failover_on=form.cleaned_data["failover_on"],
        tries_per_upstream=form.cleaned_data["tries_per_upstream"],
        return_to_primary=form.cleaned_data["return_to_primary"],
        actor=request.user,
        ip_address=client_ip(request),
    ):
        messages.success(request, "Failover policy saved.")
        return redirect("project-detail", project_id=project.public_id)
    return settings_page(request, project, failover_form=form)


@project_view(read=Need.MANAGE)
def project_delete(request, membership, project):
    if request.method == "POST":
        try:
            services.delete_project(
                project=project, actor=request.user, ip_address=client_ip(request)
            )
        except ProjectBusy as refusal:
            messages.error(request, f"Project “{project.name}” was not deleted: {refusal}")
            return redirect("project-delete", project_id=project.public_id)
        messages.success(
            request,
            f"Project “{project.name}” was deleted. Its API keys no longer work; its request "
            "history is being deleted in the background.",
        )
        return redirect("project-list")
    return render(request, "projects/project_delete.html", {"project": project})
