"""One pure codec per wire format; every codec translates to and from `extproc.ir`.

`base` holds the interface (ClientCodec, ProviderCodec, their stream objects and
the optional embeddings capability) and `registry` the one table of codecs the
phases look up. Each format package (openai_chat, anthropic_messages,
gemini_generate, ollama_chat) offers both sides, split into `client`, `provider`
and the `wire` shapes both share, and exports its codec objects; every API is
both a client dialect and a provider. smart_api (/api/smart) and
openai_responses (/v1/responses) are client-side only; azure_openai is a
provider adapter over the OpenAI codec's bodies.

Codecs never import grpc, redis, opentelemetry, config, nor each other (only
`framing`, `base` and `ir`); the import-linter contracts in pyproject.toml hold
them to it.
"""
