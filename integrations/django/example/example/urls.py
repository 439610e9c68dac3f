from django.urls import path

from notes import views

urlpatterns = [
    path("login/", views.login_view),
    path("notes/", views.create_note),
    path("notes/import/", views.import_notes),
    path("notes/<int:note_id>/", views.note),
]
