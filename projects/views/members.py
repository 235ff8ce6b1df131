"""Team members of the current account, invitations, and accepting an invitation."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from accounts.access import Need, client_ip, member_view
from accounts.selectors import SESSION_ACCOUNT_KEY
from projects import members as services
from projects.forms import InviteForm, MemberForm, RoleForm
from projects.limits import limits_for
from projects.selectors import members_of, open_invitations_of


def _members_page(request, membership, invite_form=None):
    account = membership.account
    context = {
        "members": members_of(account),
        "invitations": open_invitations_of(account),
        "invite_form": invite_form or InviteForm(),
        "roles": RoleForm.base_fields["role"].choices,
        "limit": limits_for(account).members,
    }
    return render(request, "projects/members.html", context)


def _member(membership, form: MemberForm):
    return get_object_or_404(
        members_of(membership.account), user__email__iexact=form.cleaned_data["email"]
    )


@member_view()
def member_list(request, membership):
    return _members_page(request, membership)


@member_view(write=Need.OWN)
@require_POST
def member_invite(request, membership):
    form = InviteForm(request.POST)
    if form.is_valid() and form.submit(
        services.invite_member,
        field="email",
        account=membership.account,
        email=form.cleaned_data["email"],
        role=form.cleaned_data["role"],
        actor=request.user,
        link_for=lambda token: request.build_absolute_uri(
            reverse("invitation-accept", args=[token])
        ),
        ip_address=client_ip(request),
    ):
        messages.success(
            request,
            f"Invitation sent to {form.cleaned_data['email']}; the link works for seven days.",
        )
        return redirect("member-list")
    return _members_page(request, membership, invite_form=form)


@member_view(write=Need.OWN)
@require_POST
def member_role(request, membership):
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose owner, admin or member.")
    elif form.submit(
        services.change_role,
        membership=_member(membership, form),
        role=form.cleaned_data["role"],
        actor=request.user,
        ip_address=client_ip(request),
    ):
        messages.success(
            request, f"{form.cleaned_data['email']} is now {form.cleaned_data['role']}."
        )
    else:
        messages.error(request, " ".join(form.non_field_errors()))
    return redirect("member-list")


@member_view(read=Need.OWN, write=Need.OWN)
def member_remove(request, membership):
    form = MemberForm(request.POST if request.method == "POST" else request.GET)
    if not form.is_valid():
        raise Http404("No such member.")
    member = _member(membership, form)
    if request.method == "POST":
        if form.submit(
            services.remove_member,
            membership=member,
            actor=request.user,
            ip_address=client_ip(request),
        ):
            messages.success(
                request, f"{member.user.email} was removed from {membership.account.name}."
            )
            return redirect("dashboard" if member.user == request.user else "member-list")
        messages.error(request, " ".join(form.non_field_errors()))
        return redirect("member-list")
    return render(request, "projects/member_remove.html", {"member": member, "form": form})


@member_view(write=Need.READ)
def member_leave(request, membership):
    """Any member may leave the current account; the last owner is told why not."""
    if request.method == "POST":
        try:
            services.leave_account(membership=membership, ip_address=client_ip(request))
        except services.MembershipError as error:
            messages.error(request, str(error))
            return redirect("member-list")
        messages.success(request, f"You left {membership.account.name}.")
        return redirect("dashboard")
    return render(request, "projects/member_leave.html", {"account": membership.account})


@member_view(write=Need.OWN)
@require_POST
def invitation_revoke(request, membership, invitation_id):
    invitation = get_object_or_404(open_invitations_of(membership.account), public_id=invitation_id)
    try:
        services.revoke_invitation(
            invitation=invitation, actor=request.user, ip_address=client_ip(request)
        )
    except services.MembershipError as error:  # accepted while this waited for its lock
        messages.error(request, str(error))
    else:
        messages.success(request, f"Invitation to {invitation.email} withdrawn.")
    return redirect("member-list")


@login_required
def invitation_accept(request, token):
    problem = None
    try:
        invitation = services.invitation_from_token(token)
        services.ensure_invitation_for(invitation, request.user)
    except services.MembershipError as error:
        invitation, problem = None, str(error)
    if request.method == "POST" and problem is None:
        try:
            joined = services.accept_invitation(
                token=token, user=request.user, ip_address=client_ip(request)
            )
        except services.MembershipError as error:
            problem = str(error)
        else:
            request.session[SESSION_ACCOUNT_KEY] = joined.account.public_id
            messages.success(request, f"You joined {joined.account.name} as {joined.role}.")
            return redirect("dashboard")
    return render(
        request, "projects/invitation.html", {"invitation": invitation, "problem": problem}
    )
