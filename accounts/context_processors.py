from accounts.selectors import current_membership, memberships_of


def current_account(request):
    membership = current_membership(request)
    if membership is None:
        return {}
    return {
        "current_membership": membership,
        "current_account": membership.account,
        "all_memberships": memberships_of(request.user),
    }
