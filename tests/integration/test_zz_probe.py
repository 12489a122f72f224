from tests.integration.test_embeddings import gateway, gemini_client, TEXTS  # noqa

def test_probe(gateway, sim, gemini_client):
    try:
        gemini_client.models.embed_content(model="e-openai", contents=TEXTS)
    except Exception as e:
        print("ERR", e)
    print((gateway.workdir / "extproc.log").read_text()[-3000:])
