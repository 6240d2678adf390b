"""Fake LLM providers on loopback speaking the real wire formats; see common.py for the behaviours and usage rules.

    with FakeServer(openai_app("/v1")) as srv:      # or anthropic_app(), gemini_app(); also `async with`
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="k")
        ...
        srv.app.state.recorder.last.key == "k"
"""

from harness.fakes.anthropic import anthropic_app, anthropic_error, anthropic_usage
from harness.fakes.common import (
    Behaviour,
    FakeApp,
    Recorded,
    Recorder,
    Usage,
    count_words,
    expected_reply,
    expected_usage,
    reply_text,
    texts,
)
from harness.fakes.gemini import gemini_app, gemini_error, gemini_usage
from harness.fakes.openai import chat_usage, openai_app, openai_error, responses_usage
from harness.fakes.server import FakeServer

__all__ = [
    "Behaviour",
    "FakeApp",
    "FakeServer",
    "Recorded",
    "Recorder",
    "Usage",
    "anthropic_app",
    "anthropic_error",
    "anthropic_usage",
    "chat_usage",
    "count_words",
    "expected_reply",
    "expected_usage",
    "gemini_app",
    "gemini_error",
    "gemini_usage",
    "openai_app",
    "openai_error",
    "reply_text",
    "responses_usage",
    "texts",
]
