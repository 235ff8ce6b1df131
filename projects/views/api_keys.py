"""A project's ReqRun API keys: list, create (the full key shown once), revoke."""

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import add_never_cache_headers

from accounts.access import Need, client_ip
from projects import services
from projects.forms import ApiKeyForm
from projects.limits import limits_for
from projects.selectors import api_keys_of, api_keys_visible_to
from projects.views.access import project_view


@project_view()
def api_key_list(request, membership, project):
    form = ApiKeyForm(request.POST or None)
    if form.is_valid():
        created = form.submit(
            services.create_api_key,
            field="name",
            project=project,
            name=form.cleaned_data["name"],
            actor=request.user,
            ip_address=client_ip(request),
        )
        if created:
            api_key, raw_key = created
            messages.success(
                request, f"API key “{api_key.name}” created. Copy it now: it is not shown again."
            )
            # Rendered, not redirected: the full key never goes into the session or a URL.
            response = render(
                request,
                "projects/api_key_created.html",
                {"project": project, "api_key": api_key, "raw_key": raw_key},
            )
            add_never_cache_headers(response)
            return response
    context = {
        "project": project,
        "api_keys": api_keys_of(project),
        "form": form,
        "limits": limits_for(project.account),
    }
    return render(request, "projects/api_keys.html", context)


@project_view(read=Need.MANAGE)
def api_key_revoke(request, membership, project, key_id):
    api_key = get_object_or_404(
        api_keys_visible_to(request.user), project=project, public_id=key_id
    )
    if request.method == "POST":
        services.revoke_api_key(api_key=api_key, actor=request.user, ip_address=client_ip(request))
        messages.success(
            request,
            f"API key “{api_key.name}” revoked: requests using it are now refused with 401.",
        )
        return redirect("api-key-list", project_id=project.public_id)
    return render(request, "projects/api_key_revoke.html", {"project": project, "api_key": api_key})
