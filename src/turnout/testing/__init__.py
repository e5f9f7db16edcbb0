"""Test helpers that ship with turnout: a fake OpenAI-compatible upstream that really speaks HTTP and SSE."""
