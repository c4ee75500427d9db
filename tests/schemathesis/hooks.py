"""Schemathesis hooks for Rose (loaded by scripts/schemathesis).

Valid voice jobs need what a schema cannot generate: a session that exists,
audio Rose recognises and a callback URL that resolves. For the cases
schemathesis means to be valid, these hooks put in a real session (started
here, again if the run erased it), the shipped recording in place of random
bytes, and a local callback receiver, so those cases reach the job pipeline.
Cases meant to be invalid are left as generated.
"""

import json
import os
import urllib.request
from pathlib import Path

import schemathesis

BASE = os.environ["ROSE_SCHEMATHESIS_BASE"]
CALLBACK = os.environ["ROSE_SCHEMATHESIS_CALLBACK"]
RECORDING = (Path(__file__).resolve().parents[1] / "fixtures" / "spoken.wav").read_bytes()
VOICE = ("POST", "/api/voice/process")

_session = None


def _session_id():
    global _session
    if _session is None:
        request = urllib.request.Request(f"{BASE}/api/session/start", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            _session = json.load(response)["session_id"]
    return _session


def _is_voice(operation):
    return operation is not None and (operation.method.upper(), operation.path) == VOICE


@schemathesis.hook
def before_load_schema(context, raw_schema):
    # Schemathesis 4.32.5 cannot check a generated multipart value holding a
    # binary part against a `oneOf` (jsonschema_rs: "Unsupported type:
    # 'Binary'"), and the voice form is `oneOf` its spoken and typed shapes.
    # It is shown `audio` as a plain string; valid cases get the recording
    # from `map_case` anyway, invalid ones are refused the same either way.
    for schema in raw_schema.get("components", {}).get("schemas", {}).values():
        for field in schema.get("properties", {}).values():
            if isinstance(field, dict) and field.get("format") == "binary":
                del field["format"]


@schemathesis.hook
def map_case(context, case):
    if not _is_voice(context.operation) or not isinstance(case.body, dict):
        return case
    meta = case.meta
    if meta is not None and not meta.generation.mode.is_positive:
        return case
    body = dict(case.body)
    if isinstance(body.get("session_id"), str):
        body["session_id"] = _session_id()
    if "audio" in body:
        body["audio"] = RECORDING
    if isinstance(body.get("callback_url"), str):
        body["callback_url"] = CALLBACK
    case.body = body
    return case


@schemathesis.hook
def after_call(context, case, response):
    # A run that erased the session (DELETE /api/session/{id}) gets a new one.
    global _session
    if _is_voice(context.operation) and response.status_code == 404:
        _session = None
