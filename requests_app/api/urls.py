from django.urls import path, re_path

from core.endpoints import ENDPOINTS, PROXIED_ENDPOINTS
from requests_app.api import views as api


def route(endpoint_path: str) -> str:
    """`/v1/models/{model_id}` → `v1/models/<path:model_id>` (a model id may hold slashes)."""
    return endpoint_path.removeprefix("/").replace("{model_id}", "<path:model_id>")


def view_for(endpoint_path: str):
    if endpoint_path in PROXIED_ENDPOINTS:
        return api.proxy_view(endpoint_path)
    return api.ModelsView.as_view()


urlpatterns = [
    *(path(route(entry.path), view_for(entry.path)) for entry in ENDPOINTS),
    path("v1/requests", api.RequestListView.as_view()),
    path("v1/requests/<pid:request_id>", api.RequestDetailView.as_view()),
    path("v1/requests/<pid:request_id>/cancel", api.RequestCancelView.as_view()),
    path("v1/usage", api.UsageView.as_view()),
]

# Included last of all (reqrun/urls.py): any other /v1 path is a 404 in OpenAI's envelope,
# never the browser's page.
unknown_paths = [re_path(r"^v1(?:/[\s\S]*)?\Z", api.UnknownPathView.as_view())]
