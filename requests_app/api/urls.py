from django.urls import path

from requests_app.api import views as api

urlpatterns = [
    path("v1/chat/completions", api.proxy_view("/v1/chat/completions")),
    path("v1/completions", api.proxy_view("/v1/completions")),
    path("v1/responses", api.proxy_view("/v1/responses")),
    path("v1/embeddings", api.proxy_view("/v1/embeddings")),
    path("v1/images/generations", api.proxy_view("/v1/images/generations")),
    path("v1/moderations", api.proxy_view("/v1/moderations")),
    path("v1/models", api.ModelsView.as_view()),
    path("v1/models/<path:model_id>", api.ModelsView.as_view()),
    path("v1/requests", api.RequestListView.as_view()),
    path("v1/requests/<str:request_id>", api.RequestDetailView.as_view()),
    path("v1/requests/<str:request_id>/cancel", api.RequestCancelView.as_view()),
    path("v1/usage", api.UsageView.as_view()),
]
