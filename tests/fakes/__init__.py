"""Fake provider servers on loopback, speaking the real wire formats. See providers.py for the behaviours."""

from tests.fakes.providers import Recorder, anthropic_app, count_words, gemini_app, openai_app, reply_text
from tests.fakes.server import FakeServer

__all__ = ["FakeServer", "Recorder", "anthropic_app", "count_words", "gemini_app", "openai_app", "reply_text"]
