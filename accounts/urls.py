from django.urls import path

from accounts import views

urlpatterns = [
    path("switch-account", views.switch_account, name="switch-account"),
    path("account/", views.account_page, name="account"),
    path("security/", views.security_log, name="security-log"),
]
