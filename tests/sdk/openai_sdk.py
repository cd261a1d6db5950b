"""The official `openai` Python SDK against a running infergate front door.

Run by tests/api/openai_sdk.rs, which starts the gateways and passes them in:
  INFERGATE_BASE, INFERGATE_KEY            a gateway with image and speech instances
  INFERGATE_FULL_BASE, INFERGATE_FULL_KEY  a gateway whose task queue is full
Prints one line per check; exits non-zero at the first that fails.
"""

import base64
import io
import os
import struct
import sys
import urllib.request
import wave

import openai
from openai import OpenAI

TEXT = "simulated segment 1 simulated segment 2"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def client(base, key):
    # No retries: every refusal must surface as the SDK's own exception at once.
    return OpenAI(api_key=key, base_url=f"{base}/v1", max_retries=0, timeout=60)


def png_size(data):
    """Width and height of a PNG, read from its IHDR chunk."""
    assert data[:8] == PNG_SIGNATURE, f"not a PNG: {data[:16]!r}"
    assert data[12:16] == b"IHDR", "no IHDR chunk"
    return struct.unpack(">II", data[16:24])


def wav(seconds):
    """`seconds` of 16 kHz 16-bit mono silence as a WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\0\0" * int(16000 * seconds))
    return out.getvalue()


def check(name, fn):
    fn()
    print(f"ok: {name}")


def main():
    base, key = os.environ["INFERGATE_BASE"], os.environ["INFERGATE_KEY"]
    full_base, full_key = os.environ["INFERGATE_FULL_BASE"], os.environ["INFERGATE_FULL_KEY"]
    api = client(base, key)
    print(f"openai {openai.__version__}")

    def models():
        ids = [m.id for m in api.models.list()]
        assert "infergate-image" in ids and "infergate-speech" in ids, ids

    def image_b64():
        result = api.images.generate(
            prompt="a red fox", size="256x256", response_format="b64_json", n=2
        )
        assert len(result.data) == 2, result
        for image in result.data:
            # The simulator draws a quarter of the size asked for.
            assert png_size(base64.b64decode(image.b64_json)) == (64, 64)

    def image_url():
        result = api.images.generate(prompt="a lighthouse", model="dall-e-2", response_format="url")
        url = result.data[0].url
        assert url.startswith(f"{base}/api/images/"), url
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request) as response:
            assert png_size(response.read()) == (128, 128)

    def transcriptions():
        audio = ("hello.wav", wav(3.0), "audio/wav")
        plain = api.audio.transcriptions.create(model="whisper-1", file=audio)
        assert plain.text == TEXT, plain
        as_json = api.audio.transcriptions.create(model="whisper-1", file=audio, response_format="json")
        assert as_json.text == TEXT, as_json
        text = api.audio.transcriptions.create(model="whisper-1", file=audio, response_format="text")
        assert text.strip() == TEXT, repr(text)
        verbose = api.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="verbose_json", language="en"
        )
        assert verbose.text == TEXT and verbose.duration == 3.0, verbose
        assert [s.text for s in verbose.segments] == ["simulated segment 1", "simulated segment 2"]
        srt = api.audio.transcriptions.create(model="whisper-1", file=audio, response_format="srt")
        assert srt.startswith("1\n00:00:00,000 --> 00:00:02,500\nsimulated segment 1\n"), repr(srt)
        vtt = api.audio.transcriptions.create(model="whisper-1", file=audio, response_format="vtt")
        assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:02.500\n"), repr(vtt)

    def bad_key():
        try:
            client(base, "igk_not-a-key-of-anyone").models.list()
        except openai.AuthenticationError as e:
            assert e.status_code == 401 and e.code == "unauthorized", (e.status_code, e.body)
        else:
            raise AssertionError("a bad key was accepted")

    def full_queue():
        try:
            client(full_base, full_key).images.generate(prompt="one too many")
        except (openai.RateLimitError, openai.APIStatusError) as e:
            assert e.status_code == 503 and e.code == "queue_full", (e.status_code, e.body)
            assert e.response.headers["retry-after"] == "5"
        else:
            raise AssertionError("a full queue took the task")

    check("models.list names the pool's kinds", models)
    check("images.generate answers decodable PNGs in b64_json", image_b64)
    check("images.generate answers a url the same key fetches", image_url)
    check("audio.transcriptions.create in json, text, verbose_json, srt, vtt", transcriptions)
    check("a bad key raises AuthenticationError", bad_key)
    check("a full queue raises APIStatusError 503", full_queue)


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # the traceback says which check
        print(f"FAILED: {error!r}", file=sys.stderr)
        raise
