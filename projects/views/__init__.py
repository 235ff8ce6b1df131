"""Dashboard pages for projects, API keys and members; every object comes from a selector
scoped to the signed-in user's memberships."""
