"""The REST API: the FastAPI app (`app`), the OpenAI-compatible routes, shared plumbing and admission control."""
