"""A small JSON API over notes. Each request runs in the transaction that pubsubpull's middleware
opens, so every write below carries who made it and through which request."""
import json

from django.contrib.auth import authenticate, login
from django.contrib.auth.decorators import login_required
from django.core.exceptions import BadRequest
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_http_methods

from .models import Note


def read_json(request):
    try:
        return json.loads(request.body)
    except ValueError as err:
        raise BadRequest(f"the body is not JSON: {err}") from err


def as_json(note, status=200):
    return JsonResponse({"id": note.id, "title": note.title, "body": note.body}, status=status)


@ensure_csrf_cookie
@require_http_methods(["GET", "POST"])
def login_view(request):
    """GET sets the CSRF cookie; POST {"username", "password"} logs in."""
    if request.method == "GET":
        return HttpResponse(status=204)
    data = read_json(request)
    user = authenticate(request, username=data.get("username"), password=data.get("password"))
    if user is None:
        return JsonResponse({"error": "wrong username or password"}, status=401)
    login(request, user)
    return HttpResponse(status=204)


@login_required
@require_http_methods(["POST"])
def create_note(request):
    """POST {"title", "body"}: 201 with the new note."""
    data = read_json(request)
    note = Note.objects.create(title=data.get("title", ""), body=data.get("body", ""))
    return as_json(note, status=201)


@login_required
@require_http_methods(["POST"])
def import_notes(request):
    """POST [{"title", "body"}, ...]: creates the notes one by one.

    An invalid entry raises after the entries before it were saved; the request fails (500) and
    the middleware rolls all of them back: a request is one transaction.
    """
    notes = []
    for entry in read_json(request):
        note = Note(title=entry.get("title", ""), body=entry.get("body", ""))
        note.full_clean()
        note.save()
        notes.append(note.id)
    return JsonResponse({"ids": notes}, status=201)


@login_required
@require_http_methods(["PUT", "DELETE"])
def note(request, note_id):
    """PUT {"title"?, "body"?} updates the note; DELETE removes it."""
    note = get_object_or_404(Note, id=note_id)
    if request.method == "DELETE":
        note.delete()
        return HttpResponse(status=204)
    data = read_json(request)
    note.title = data.get("title", note.title)
    note.body = data.get("body", note.body)
    note.save()
    return as_json(note)
