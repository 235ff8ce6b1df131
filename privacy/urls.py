"""Dashboard URLs under /app/ for exporting and deleting the current account."""

from django.urls import path

from privacy import views

urlpatterns = [
    path("account/export/", views.export_page, name="privacy-export"),
    path(
        "account/export/<pid:export_id>/download",
        views.export_download,
        name="privacy-export-download",
    ),
    path("account/delete/", views.delete_account, name="privacy-delete-account"),
]
