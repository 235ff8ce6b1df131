from django.urls import path

from accounts import views

urlpatterns = [
    path("switch-account", views.switch_account, name="switch-account"),
    path("no-account/", views.no_account, name="no-account"),
    path("account/", views.account_page, name="account"),
    path("security/", views.security_log, name="security-log"),
]
